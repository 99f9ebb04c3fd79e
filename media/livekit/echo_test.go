package livekit_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/raceflag"
	"github.com/konsult/konsult/media/audioproc"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// The simulated room of the echo tests: 80 ms, 10 dB, 150 ms reverb (the
// [sim.echo] defaults).
var testRoom = audioproc.EchoConfig{Delay: 80 * time.Millisecond, AttenuationDB: 10, Reverb: 150 * time.Millisecond}

// joinWithRoom joins room as the unit with the simulated room's echo path
// and, if proc is not nil, the processor, both fed from the speaker tap.
func joinWithRoom(t *testing.T, lk *farend.LiveKit, room string, proc *audioproc.Processor, echo audioproc.EchoConfig) (*livekit.RTCCall, *gate.Gate) {
	t.Helper()
	path, err := audioproc.NewEchoPath(echo, playout.SampleRate)
	if err != nil {
		t.Fatal(err)
	}
	m := livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "VP8", VideoBitRate: 500_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice, Room: path}
	if proc != nil {
		m.Processor = proc
	}
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{
		URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret, DisconnectGrace: 15 * time.Second,
	}, m, livekit.RTCOptions{Speaker: playout.DeviceNull, OnMix: audioproc.Tap(proc, path)}, g,
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() { _ = call.Leave(context.Background()) })
	g.Set(gate.State{Video: true, Audio: true})
	return call, g
}

// startPatient starts a far end that talks (the known signal) and measures
// the bands of what it receives from the unit; it returns once the unit
// plays the patient and the patient hears the unit.
func startPatient(t *testing.T, lk *farend.LiveKit, room string, call *livekit.RTCCall, sig farend.Signal) (*farend.FarEnd, time.Time) {
	t.Helper()
	fe := farend.StartFarEnd(t, lk, room, "patient", farend.PublishSignal(sig), farend.MeasureBands())
	farWaitT(t, fe, "hear the unit", 30*time.Second, func(s farend.FarEndStats) bool { return s.AudioFrom == "unit-1" && s.AudioEnergyPeak > 0 })
	if sig.After == 0 {
		waitPlayout(t, call, "play the patient", 20*time.Second, func(s playout.Stats) bool { return s.EnergyPeak > 0.01 })
	}
	return fe, time.Now()
}

// medianDB is the median of the samples' band (or tone) power between from
// and to.
func medianDB(bs []farend.BandSample, from, to time.Time, tone bool) (float64, int) {
	var v []float64
	for _, b := range bs {
		if b.At.Before(from) || b.At.After(to) {
			continue
		}
		if tone {
			v = append(v, b.ToneDB)
		} else {
			v = append(v, b.BandDB)
		}
	}
	if len(v) == 0 {
		return 0, 0
	}
	sort.Float64s(v)
	return v[len(v)/2], len(v)
}

// Echo, at the far end: the patient talks (speech-like noise, 0.7-4 kHz);
// the unit plays it, the simulated room returns it to the microphone (the
// echo alone, no test tone); what the patient then receives from the unit,
// in the signal's band, is measured from the decoded audio. With the
// canceller it must be at least 25 dB below the same run without.
func TestFarEndEchoCancelled(t *testing.T) {
	if raceflag.Enabled {
		t.Skip("judges the echo canceller in real time: run without -race (make test does, after the race run)")
	}
	if testing.Short() {
		t.Skip("real LiveKit and Chromium")
	}
	lk := farend.StartLiveKit(t)
	echo := testRoom
	echo.Only = true
	measure := func(name string, aec bool, settle, window time.Duration) float64 {
		var proc *audioproc.Processor
		if aec {
			var err error
			if proc, err = audioproc.New(audioproc.Config{EchoCancel: true}); err != nil {
				t.Fatal(err)
			}
			defer proc.Close()
		}
		call, _ := joinWithRoom(t, lk, name, proc, echo)
		fe, t0 := startPatient(t, lk, name, call, farend.Signal{Level: 0.3})
		time.Sleep(settle + window)
		db, n := medianDB(fe.AudioBands(), t0.Add(settle), t0.Add(settle+window), false)
		// The canceller's convergence, 2 s at a time, always: a slow run
		// (CI once: 21 dB at 10-15 s where this machine gives 36-42) is
		// then told apart from one that never converged or lost the echo.
		var curve []string
		for at := time.Duration(0); at < settle+window; at += 2 * time.Second {
			c, _ := medianDB(fe.AudioBands(), t0.Add(at), t0.Add(at+2*time.Second), false)
			curve = append(curve, fmt.Sprintf("%s %.1f", at, c))
		}
		t.Logf("%s: echo band every 2 s from the patient's first sound: %s dB", name, strings.Join(curve, ", "))
		if n < 10 {
			t.Fatalf("%s: %d band measures", name, n)
		}
		if proc != nil {
			t.Logf("%s: unit's processor: %+v", name, proc.Stats())
		}
		t.Logf("%s: echo band at the far end %.1f dB (median of %d reports over %s, %s after the patient was first heard)", name, db, n, window, settle)
		_ = call.Leave(context.Background())
		fe.Close()
		return db
	}
	off := measure("echo-off", false, 2*time.Second, 4*time.Second)
	on := measure("echo-on", true, 10*time.Second, 5*time.Second)
	t.Logf("ERLE at the far end: %.1f dB (off %.1f dB, on %.1f dB)", off-on, off, on)
	if off-on < 25 {
		t.Errorf("echo only %.1f dB below the uncancelled run, want ≥ 25", off-on)
	}
}

// Double talk: the room's own test tone (480 Hz) keeps reaching the patient
// while the patient talks and the canceller works on their echo: at most 6
// dB quieter than while the patient is silent.
func TestFarEndDoubleTalk(t *testing.T) {
	if raceflag.Enabled {
		t.Skip("judges the echo canceller in real time: run without -race (make test does, after the race run)")
	}
	if testing.Short() {
		t.Skip("real LiveKit and Chromium")
	}
	lk := farend.StartLiveKit(t)
	proc, err := audioproc.New(audioproc.Config{EchoCancel: true})
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	call, _ := joinWithRoom(t, lk, "double-talk", proc, testRoom)
	talkAfter := 6 * time.Second
	fe, t0 := startPatient(t, lk, "double-talk", call, farend.Signal{Level: 0.3, After: talkAfter})
	waitPlayout(t, call, "play the patient", talkAfter+20*time.Second, func(s playout.Stats) bool { return s.EnergyPeak > 0.01 })
	talking := time.Now()
	time.Sleep(10 * time.Second)
	bs := fe.AudioBands()
	var firstTalk time.Time
	for _, b := range bs {
		if b.Talking {
			firstTalk = b.At
			break
		}
	}
	if firstTalk.IsZero() {
		t.Fatal("the patient never talked")
	}
	quiet, nq := medianDB(bs, t0.Add(time.Second), firstTalk.Add(-500*time.Millisecond), true)
	during, nd := medianDB(bs, talking.Add(2*time.Second), talking.Add(10*time.Second), true)
	band, _ := medianDB(bs, talking.Add(2*time.Second), talking.Add(10*time.Second), false)
	t.Logf("test tone at the far end: %.1f dB with the patient silent (%d reports), %.1f dB while they talk (%d); echo band meanwhile %.1f dB; processor %+v", quiet, nq, during, nd, band, proc.Stats())
	if nq < 5 || nd < 10 {
		t.Fatalf("too few measures: %d quiet, %d talking", nq, nd)
	}
	if quiet-during > 6 {
		t.Errorf("the room's tone is %.1f dB quieter while the patient talks, want ≤ 6", quiet-during)
	}
}

// Privacy with the processor holding audio: the mic is muted mid-sentence
// (the patient talking, the room's tone and echo, every stage on). From
// shortly after the press the patient receives silence, whatever the
// processor holds, until the unmute; then the room again.
func TestFarEndPrivacyWithProcessor(t *testing.T) {
	if testing.Short() {
		t.Skip("real LiveKit and Chromium")
	}
	lk := farend.StartLiveKit(t)
	proc, err := audioproc.New(audioproc.Config{EchoCancel: true, NoiseSuppress: true, GainControl: true})
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	call, g := joinWithRoom(t, lk, "privacy-aec", proc, testRoom)
	fe, _ := startPatient(t, lk, "privacy-aec", call, farend.Signal{Level: 0.3})
	time.Sleep(3 * time.Second)
	before := fe.Stats().AudioEnergy
	// The press: mid-sentence (the patient and the room both sound).
	press := time.Now()
	g.Set(gate.State{Video: true})
	// The far end's 170 ms analysis window, the jitter buffer and the
	// network: 600 ms for the last pre-press audio to play out.
	const drain = 600 * time.Millisecond
	var worst float64
	var heard int
	for time.Since(press) < 3*time.Second {
		s := fe.Stats()
		if s.ReceivedAt.After(press.Add(drain)) {
			worst = max(worst, s.AudioEnergy)
			if s.AudioEnergy > 0.002 {
				heard++
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.Set(gate.State{Video: true, Audio: true})
	back := farWaitT(t, fe, "hear the room again after the unmute", 10*time.Second, func(s farend.FarEndStats) bool { return s.AudioEnergy > 0.005 })
	t.Logf("far-end audio RMS %.4f before the press, at most %.5f from %s after it while muted (%d reports above 0.002); %.4f after the unmute; processor %+v",
		before, worst, drain, heard, back.AudioEnergy, proc.Stats())
	if before < 0.005 {
		t.Errorf("before the press the patient heard nothing (%.4f): the test proves nothing", before)
	}
	if heard > 0 {
		t.Errorf("%d reports with sound (up to %.4f RMS) more than %s after the press", heard, worst, drain)
	}
	if s := proc.Stats(); s.Resets == 0 {
		t.Errorf("processor not reset by the mute: %+v", s)
	}
}
