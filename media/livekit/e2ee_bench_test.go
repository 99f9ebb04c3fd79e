package livekit_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

func benchJoin(b *testing.B, lk *farend.LiveKit, room string, key *e2ee.Key, stamp bool) (*livekit.RTCCall, *gate.Gate) {
	return benchJoinCodec(b, lk, room, "H264", key, stamp)
}

func benchJoinCodec(b *testing.B, lk *farend.LiveKit, room, codec string, key *e2ee.Key, stamp bool) (*livekit.RTCCall, *gate.Gate) {
	b.Helper()
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret},
		livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: codec, VideoBitRate: 1_000_000, AudioBitRate: 32_000,
			Camera: capture.TestDevice, Microphone: capture.TestDevice, E2EE: key, Stamp: stamp},
		livekit.RTCOptions{Speaker: playout.DeviceNull}, g, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	g.Set(gate.State{Video: true, Audio: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		b.Fatalf("join: %v", err)
	}
	return call, g
}

func sorted(d []time.Duration) []time.Duration { s := slices.Clone(d); slices.Sort(s); return s }

func p(d []time.Duration, q int) float64 {
	s := sorted(d)
	return float64(s[len(s)*q/100]) / float64(time.Millisecond)
}

// BenchmarkE2EEJoin: Join on the /rtc/v1 connector → the first picture of
// the room painted by a patient's page (livekit-client with the key
// already connected), end-to-end encrypted and clear alternately in one
// run; each op is one clear and one encrypted join (H.264, openh264).
func BenchmarkE2EEJoin(b *testing.B) {
	lk := farend.StartLiveKit(b)
	material := e2eeMaterial(5)
	key, _ := e2ee.NewKey(material)
	var clear, enc []time.Duration
	i := 0
	for b.Loop() {
		for _, k := range []*e2ee.Key{nil, key} {
			i++
			b.StopTimer()
			room := "bench-e2ee-join-" + string(rune('a'+i%26)) + time.Now().Format("150405.000")
			fe := farend.StartFarEnd(b, lk, room, "patient", farend.Watch("unit-1"), farend.E2EE(material), farend.ReportInterval(20*time.Millisecond))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected }); err != nil {
				b.Fatalf("far end did not connect: %v", err)
			}
			b.StartTimer()
			t0 := time.Now()
			call, _ := benchJoin(b, lk, room, k, false)
			_, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool {
				return s.FramesPresented > 0 && s.LastFrameMeanRGB != [3]float64{} && !s.LastFrameIsUniform
			})
			d := time.Since(t0)
			cancel()
			if err != nil {
				b.Fatalf("join %d: the room never appeared at the far end: %v", i, err)
			}
			b.StopTimer()
			if k == nil {
				clear = append(clear, d)
			} else {
				enc = append(enc, d)
			}
			_ = call.Leave(context.Background())
			fe.Close()
			b.StartTimer()
		}
	}
	b.ReportMetric(p(clear, 50), "clear-p50-ms")
	b.ReportMetric(p(enc, 50), "e2ee-p50-ms")
	b.ReportMetric(p(enc, 50)/p(clear, 50), "ratio-p50")
	b.ReportMetric(float64(len(enc)), "joins-each")
}

// BenchmarkE2EEGlassToGlass: the capture stamp drawn into the unit's
// picture → the patient's page paints the decoded frame and reads it back,
// clear and end-to-end encrypted in one run (H.264 from openh264 and VP8
// from libvpx, the same page with the key for both). Reports the p50 and p95 of each and the p50
// difference. Each op is one stamped frame; at least 10 s and 200 samples
// per mode.
func BenchmarkE2EEGlassToGlass(b *testing.B) {
	lk := farend.StartLiveKit(b)
	for _, codec := range []string{"H264", "VP8"} {
		b.Run(codec, func(b *testing.B) { e2eeGlassToGlass(b, lk, codec) })
	}
}

func e2eeGlassToGlass(b *testing.B, lk *farend.LiveKit, codec string) {
	material := e2eeMaterial(6)
	key, _ := e2ee.NewKey(material)
	ages := map[bool][]time.Duration{}
	for _, encrypted := range []bool{false, true} {
		k := key
		room := "bench-g2g-e2ee-" + codec
		if !encrypted {
			k, room = nil, "bench-g2g-clear-"+codec
		}
		fe := farend.StartFarEnd(b, lk, room, "patient", farend.Watch("unit-1"), farend.E2EE(material), farend.ReadStamps(), farend.ReportInterval(20*time.Millisecond))
		call, _ := benchJoinCodec(b, lk, room, codec, k, true)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.StampFramesValid > 10 }); err != nil {
			b.Fatalf("no stamped frames: %v", err)
		}
		time.Sleep(time.Second)
		start, n0 := time.Now(), len(fe.StampLatencies())
		next := func() {
			n := fe.Stats().StampFramesValid
			if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.StampFramesValid > n }); err != nil {
				b.Fatalf("no more stamped frames: %v", err)
			}
		}
		for i := 0; i < max(b.N/2, 1); i++ {
			next()
		}
		for len(fe.StampLatencies())-n0 < 200 || time.Since(start) < 10*time.Second {
			next()
		}
		cancel()
		ages[encrypted] = fe.StampLatencies()[n0:]
		_ = call.Leave(context.Background())
		fe.Close()
	}
	b.ReportMetric(p(ages[false], 50), "clear-p50-ms")
	b.ReportMetric(p(ages[false], 95), "clear-p95-ms")
	b.ReportMetric(p(ages[true], 50), "e2ee-p50-ms")
	b.ReportMetric(p(ages[true], 95), "e2ee-p95-ms")
	b.ReportMetric(p(ages[true], 50)-p(ages[false], 50), "diff-p50-ms")
}
