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
// SpeexDSP gave 30-47 dB and 0.1 dB. Through real LiveKit to a Chromium far
// end (media/livekit's TestFarEnd* tests), 44-46 dB less echo in the decoded
// audio, the room's tone 0.0-0.2 dB quieter in double talk, 0.12-0.21 ms of
// CPU per 10 ms frame. docs/PERFORMANCE.md has the figures and commands.
//
// Licences: SpeexDSP is BSD-3-Clause (Xiph.Org, Jean-Marc Valin and
// others); it is linked dynamically from Debian's libspeexdsp1.
//
// Wiring (cmd/roomd), once per unit:
//
//	proc, err := audioproc.New(audioproc.Config{EchoCancel: c.Audio.AEC,
//		NoiseSuppress: c.Audio.NS, GainControl: c.Audio.AGC, Rate: playout.SampleRate})
//	var room *audioproc.EchoPath // --sim with sim.echo.enabled only
//	room, err = audioproc.NewEchoPath(audioproc.EchoConfig{Delay: ...,
//		AttenuationDB: ..., Reverb: ...}, playout.SampleRate)
//	media.Processor, media.Room = proc, room     // livekit.Media
//	opts.OnMix = audioproc.Tap(proc, room)       // livekit.RTCOptions
//	... proc.Stats() for roomctl status/doctor; proc.Close() at exit.
//
// A nil *Processor or *EchoPath does nothing (audio passes as it is), so
// either can be left out; with every [audio] switch off, Config.Enabled is
// false and no processor is needed.
//
// The reference is the exact mix handed to the speaker (playout's mix tap
// calls Render). Render only copies into a bounded ring (2 s); the
// microphone side takes from it, per 10 ms frame, a reference that starts
// refLead (40 ms) behind the newest sample and then advances frame for
// frame (aligner), so device jitter and a stalled device's catch-up
// neither starve it nor move it. The
// echo's delay beyond that is not assumed: the adaptive filter finds it,
// and its peak is reported (Stats.DelayMs). Frames capture drops as backlog
// advance it too (Skip).
//
// Counting samples holds only while neither device's stream has a gap: a
// speaker underrun (silence the mix never had) makes the echo later, a
// microphone overrun sooner, and SpeexDSP does not find a moved echo again
// (0.4-1.1 dB ERLE after one 30 ms gap, TestEchoFollowsDeviceGaps). So the
// delay is re-estimated while the canceller runs (tracker, track.go):
// every 100 ms, the 1 ms envelopes of the microphone's last 250 ms against
// the reference at lags -30 to 400 ms, and when the lag has moved twice in
// a row, the canceller has lost the echo (under 6 dB) and the old lag no
// longer matches, the reference moves by the new lag found to the sample:
// the filter's room stays valid (Stats.DelayShifts). A first estimate
// beyond the filter's reach (a speaker buffer longer than refLead assumes:
// the lab's 200 ms dmix) moves the reference to put the echo 10 ms into
// it, and the aligner's window with it (TestEchoBeyondTheFilterFound: 47
// dB with a 250 ms echo, 0.4 dB without).
//
// The privacy gate stays before the processor: capture calls Process only
// with chunks the gate admitted, while holding the gate, and Reset on every
// close, which clears the partial frame, the processed samples not yet
// handed back and the canceller's and preprocessor's state. Nothing the
// microphone heard before a mute can come out after it.
package audioproc
