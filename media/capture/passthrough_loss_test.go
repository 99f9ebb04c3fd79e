//go:build cgo && linux && (amd64 || arm64)

package capture_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/lossynet"
	"github.com/konsult/konsult/internal/slatesoak"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/encoder/v4l2m2m"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// Issue 15 for the camera's own H.264 (pass-through, pre-coded slate): at
// 5 % random UDP loss, and with all UDP cut for 300 ms at the press, every
// PRIVACY press puts the far end (real LiveKit, headless Chromium) on the
// slate within 1 s and keeps it there; a far end joining while private sees
// only the slate. The slate's IDR repeats while shut, so neither needs a
// camera frame. Over the WHIP connector; TestPassThroughSlateUnderLossRTC
// over LiveKit's own signalling.
func TestPassThroughSlateUnderLoss(t *testing.T) { passThroughSlateUnderLoss(t, "whip") }

// TestPassThroughSlateUnderLossRTC is TestPassThroughSlateUnderLoss over
// the /rtc/v1 connector.
func TestPassThroughSlateUnderLossRTC(t *testing.T) { passThroughSlateUnderLoss(t, "rtc") }

func passThroughSlateUnderLoss(t *testing.T, connector string) {
	lossynet.Run(t, 5, func(t *testing.T, net *lossynet.Net) {
		lk := farend.StartLiveKit(t)
		const w, h = 640, 360
		fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: w, Height: h}}, Interval: time.Second / ptFPS, ForceKeyFrame: true, GOP: 300}
		fake.Source = newCameraCoder(t, w, h).code
		t.Cleanup(fake.Install())

		g := gate.New()
		room := "pt-loss-" + connector
		cfg := livekit.Config{URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret, DisconnectGrace: 15 * time.Second}
		sent := &slatesoak.Sent{}
		m := livekit.Media{Width: w, Height: h, FPS: ptFPS, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000, Microphone: capture.TestDevice, SendTransform: sent.Transform,
			PassThrough: encoder.PassThroughConfig{Mode: "auto", Width: w, Height: h, FPS: ptFPS}}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		var conn interface {
			Encoders() []encoder.Choice
		}
		var join func(context.Context) (func(context.Context) error, error)
		switch connector {
		case "whip":
			c, err := livekit.NewWHIP(cfg, m, g, log)
			if err != nil {
				t.Fatal(err)
			}
			conn = c
			join = func(ctx context.Context) (func(context.Context) error, error) {
				call, err := c.Join(ctx)
				if err != nil {
					return nil, err
				}
				return call.Leave, nil
			}
		default:
			c, err := livekit.NewRTC(cfg, m, livekit.RTCOptions{Speaker: playout.DeviceNull}, g, log)
			if err != nil {
				t.Fatal(err)
			}
			conn = c
			join = func(ctx context.Context) (func(context.Context) error, error) {
				call, err := c.Join(ctx)
				if err != nil {
					return nil, err
				}
				return call.Leave, nil
			}
		}
		if ch := conn.Encoders()[0]; ch.Chosen == nil || ch.Chosen.Name != "uvc-h264" {
			t.Fatalf("not pass-through: %s", ch.Explain())
		}
		fe := farend.StartFarEnd(t, lk, room, "patient", farend.Watch("unit-1"), farend.LogFrames(), farend.ReportInterval(100*time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		leave, err := join(ctx)
		if err != nil {
			t.Fatalf("join over %s: %v", connector, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = leave(ctx)
		})
		for _, ph := range []slatesoak.Phase{{Loss: 5, N: 6}, {Loss: 5, N: 6, Cut: true}} {
			slatesoak.Check(t, "pass-through "+connector+": "+ph.String(), slatesoak.Run(t, fe, g, net, ph, sent))
		}

		g.Set(gate.State{})
		time.Sleep(300 * time.Millisecond)
		late := farend.StartFarEnd(t, lk, room, "late", farend.Watch("unit-1"), farend.LogFrames(), farend.ReportInterval(100*time.Millisecond))
		ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel2()
		if _, err := late.WaitFor(ctx2, func(s farend.FarEndStats) bool { return s.FramesPresented > 0 }); err != nil {
			t.Fatalf("a far end joining while private got no picture, not even the slate: %v; %s", err, late.Stats())
		}
		time.Sleep(2 * time.Second)
		for _, f := range late.Frames() {
			if !f.Uniform {
				t.Fatalf("a far end that joined while the unit was private was shown the camera's picture (std-dev %.1f)", f.StdDev)
			}
		}
		t.Logf("pass-through %s: far end joining while private: %d frames, all the slate", connector, len(late.Frames()))
	})
}
