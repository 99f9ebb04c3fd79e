// Package clustertest holds the tests of the unit against a LiveKit
// cluster (issue 25): two livekit-server nodes sharing one Redis on
// loopback, the unit signalling through one node and the patient (headless
// Chromium) through the other. It has no code of its own; the cluster is
// started by internal/farend (StartLiveKitCluster, StartFailover).
package clustertest
