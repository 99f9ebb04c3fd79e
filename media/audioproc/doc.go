// Package audioproc is the room's sound: echo cancellation between what the
// unit plays and what it captures, noise suppression and automatic gain
// control, each switchable ([audio] aec, ns, agc), and the simulated room's
// acoustic echo path ([sim.echo]) that proves them.
//
// The implementation is SpeexDSP's (libspeexdsp, BSD-3-Clause, Debian's
// libspeexdsp1): its MDF echo canceller with a 200 ms tail, and its
// preprocessor for noise suppression, residual echo suppression (with NS)
// and AGC, called through cgo (plain C). WebRTC's AudioProcessing 0.3
// (libwebrtc-audio-processing, BSD) was measured too, through a C++ shim,
// on the same simulated room (120 ms delay, 6 dB, 150 ms reverb): 21-28 dB
// ERLE alone, and in double talk it took 6-11 dB off the room's own voice;
// SpeexDSP gave 30 dB and 0.1 dB. docs/PERFORMANCE.md has the figures.
//
// The reference is the exact mix handed to the speaker (playout's mix tap
// calls Render). Render only copies into a bounded ring (1 s); the
// microphone side takes from it, per 10 ms frame, the reference that starts
// refLead behind the newest sample, so the two devices' jitter never makes
// it run out. The echo's delay beyond that is not assumed: the adaptive
// filter finds it, and its peak is reported (Stats.DelayMs).
//
// The privacy gate stays before the processor: capture calls Process only
// with chunks the gate admitted, while holding the gate, and Reset on every
// close, which clears the partial frame, the processed samples not yet
// handed back and the canceller's and preprocessor's state. Nothing the
// microphone heard before a mute can come out after it.
package audioproc
