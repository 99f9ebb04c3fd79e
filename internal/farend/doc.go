// Package farend is test support that plays the far end of a consultation
// with real parts on loopback: a real livekit-server (StartLiveKit) and a
// headless Chromium running livekit-client (StartFarEnd), so a Go test can
// check what the patient in a browser actually sees and hears.
//
// The real parts are installed by .ci/farend-setup.sh: the LiveKit binary in
// .cache/bin/server, Chromium from Debian, livekit-client in .cache/npm.
// When one is missing the test is skipped, unless KONSULT_REQUIRE_REAL_PARTS=1,
// in which case it fails.
//
// Every listener is on 127.0.0.1: LiveKit's HTTP/WebSocket port and its one
// WebRTC UDP port (ICE over TCP and TURN are off), and the page server.
package farend
