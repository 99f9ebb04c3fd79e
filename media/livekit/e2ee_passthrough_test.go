//go:build cgo && linux && (amd64 || arm64)

package livekit_test

import (
	"context"
	"image"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/codec/openh264"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/encoder/v4l2m2m"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// The camera's own H.264 (the contract fake camera, coding real H.264 with
// openh264) sent without re-encoding, end-to-end encrypted: the patient with
// the key decodes the camera's bright picture at 20 fps; PRIVACY puts the
// pre-coded slate, encrypted too, on their screen.
func TestE2EEPassThrough(t *testing.T) {
	const w, h, fps = 640, 360, 30
	lk := farend.StartLiveKit(t)
	fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: w, Height: h}}, Interval: time.Second / fps, ForceKeyFrame: true, GOP: 300}
	p, err := openh264.NewParams()
	if err != nil {
		t.Fatal(err)
	}
	p.BitRate, p.EnableFrameSkip, p.IntraPeriod = 600_000, false, 100000
	var mu sync.Mutex
	n := 0
	src := video.ReaderFunc(func() (image.Image, func(), error) {
		img := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio420)
		for i := range img.Y {
			img.Y[i] = byte(180 + (i/w+n)%60)
		}
		for i := range img.Cb {
			img.Cb[i], img.Cr[i] = 90, 170
		}
		n++
		return img, func() {}, nil
	})
	enc, err := p.BuildVideoEncoder(src, prop.Media{Video: prop.Video{Width: w, Height: h, FrameRate: fps}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enc.Close() })
	fake.Source = func(key bool) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if key {
			_ = enc.Controller().(codec.KeyFrameController).ForceKeyFrame()
		}
		au, release, err := enc.Read()
		if err != nil {
			return nil, err
		}
		defer release()
		return append([]byte(nil), au...), nil
	}
	t.Cleanup(fake.Install())

	material := e2eeMaterial(7)
	key, _ := e2ee.NewKey(material)
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{URL: lk.URL, Room: "e2ee-pt", Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret},
		livekit.Media{Width: w, Height: h, FPS: fps, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000, Microphone: capture.TestDevice,
			PassThrough: encoder.PassThroughConfig{Mode: "auto", Width: w, Height: h, FPS: fps}, E2EE: key},
		livekit.RTCOptions{Speaker: playout.DeviceNull}, g, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	if ch := conn.Encoders()[0]; ch.Chosen == nil || ch.Chosen.Name != "uvc-h264" {
		t.Fatalf("not pass-through: %s", ch.Explain())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() { _ = call.Leave(context.Background()) })
	g.Set(gate.State{Video: true, Audio: true})
	fe := farend.StartFarEnd(t, lk, "e2ee-pt", "patient", farend.Watch("unit-1"), farend.E2EE(material))
	s := farWaitT(t, fe, "the patient with the key decodes the camera's own H.264 at 20 fps", 30*time.Second, func(s farend.FarEndStats) bool {
		return s.E2EE && s.FPS >= 20 && !s.LastFrameIsUniform && s.LastFrameMeanRGB[0] > 150 && s.FrameWidth == w
	})
	t.Logf("pass-through, encrypted: %s", s)
	if s.E2EEErrors != 0 {
		t.Errorf("worker errors with the right key: %d", s.E2EEErrors)
	}
	g.Set(gate.State{})
	farWaitT(t, fe, "the slate (encrypted) is the last picture", 10*time.Second, func(s farend.FarEndStats) bool {
		return s.LastFrameIsUniform && s.LastFrameMeanRGB[0] < 90
	})
	g.Set(gate.State{Video: true, Audio: true})
	farWaitT(t, fe, "the camera again", 15*time.Second, func(s farend.FarEndStats) bool {
		return !s.LastFrameIsUniform && s.LastFrameMeanRGB[0] > 150
	})
}
