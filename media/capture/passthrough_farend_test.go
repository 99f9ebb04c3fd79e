//go:build cgo && linux && (amd64 || arm64)

package capture_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/encoder/v4l2m2m"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
)

// End to end: a "UVC camera" (the contract fake, coding real H.264 with
// openh264) chosen by the registry for pass-through, published to a real
// LiveKit through the unit's own WHIP connector, watched by a headless
// Chromium running livekit-client. The browser decodes the camera's own
// units; when the gate shuts, its last picture becomes the pre-coded slate;
// when it opens again the camera's picture comes back (from an IDR: a
// P-frame referring to the slate would show as garbage or a freeze).
func TestPassThroughReachesBrowser(t *testing.T) {
	lk := farend.StartLiveKit(t)
	const w, h = 640, 360
	fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: w, Height: h}}, Interval: time.Second / ptFPS, ForceKeyFrame: true, GOP: 300}
	fake.Source = newCameraCoder(t, w, h).code
	t.Cleanup(fake.Install())

	g := gate.New()
	conn, err := livekit.NewWHIP(livekit.Config{URL: lk.URL, Room: "pt-room", Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret},
		livekit.Media{Width: w, Height: h, FPS: ptFPS, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000, Microphone: capture.TestDevice,
			PassThrough: encoder.PassThroughConfig{Mode: "auto", Width: w, Height: h, FPS: ptFPS}},
		g, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	if ch := conn.Encoders()[0]; ch.Chosen == nil || ch.Chosen.Name != "uvc-h264" {
		t.Fatalf("not pass-through: %s", ch.Explain())
	}
	fe := farend.StartFarEnd(t, lk, "pt-room", "patient", farend.ReportInterval(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = call.Leave(ctx)
		if s := fake.Released(); s != "" {
			t.Errorf("camera after leave: %s", s)
		}
	})
	watch := func(what string, cond func(farend.FarEndStats) bool) farend.FarEndStats {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s, err := fe.WaitFor(ctx, cond)
		if err != nil {
			t.Fatalf("far end: %s: %v; last %s", what, err, fe.Stats())
		}
		return s
	}
	camera := func(s farend.FarEndStats) bool {
		// The camera's picture: bright, reddish, a gradient (not uniform).
		return !s.LastFrameIsUniform && s.LastFrameMeanRGB[0] > 150 && s.FrameWidth == w && s.FrameHeight == h
	}
	slate := func(s farend.FarEndStats) bool {
		return s.LastFrameIsUniform && s.LastFrameMeanRGB[0] < 90 && s.LastFrameMeanRGB[1] < 90 && s.LastFrameMeanRGB[2] < 90
	}

	g.Set(gate.State{Video: true, Audio: true})
	s := watch("the camera's picture", func(s farend.FarEndStats) bool { return s.FramesPresented > 20 && camera(s) })
	t.Logf("camera at the far end: %s", s)

	g.Set(gate.State{})
	s = watch("the slate after the gate shut", slate)
	t.Logf("slate at the far end: %s", s)
	before := s.VideoFramesDecoded

	reopened := time.Now()
	g.Set(gate.State{Video: true, Audio: true})
	s = watch("the camera again", func(s farend.FarEndStats) bool { return camera(s) && s.VideoFramesDecoded > before+20 })
	t.Logf("camera again %s after the gate opened (report interval 100 ms): %s", time.Since(reopened).Round(10*time.Millisecond), s)
	if made, keys, _, forced := fake.Stats(); forced == 0 {
		t.Errorf("no keyframe forced (made %d, keyframes %d)", made, keys)
	}
}
