//go:build !race

// Package raceflag says whether the test binary runs under the race
// detector, for the few tests that judge real-time signal processing at
// the far end: under -race the unit's audio runs several times slower than
// on any unit, and the echo canceller's timing with it. Those tests skip
// under -race and `make test` runs them again without it.
package raceflag

// Enabled: this binary was built with the race detector.
const Enabled = false
