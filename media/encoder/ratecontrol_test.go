//go:build cgo

package encoder

import (
	"image"
	"math"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/frame"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
)

// movingPicture is a camera-like picture: smooth shading, a slow pan and a
// moving object, without the test driver's noise band that no quantiser
// tames.
func movingPicture(w, h, n int) image.Image {
	img := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio420)
	for y := range h {
		for x := range w {
			v := 128 + 60*math.Sin(float64(x+2*n)/37)*math.Cos(float64(y)/29) + 30*math.Sin(float64(x*y+n*50)/5000)
			if dx, dy := x-(100+4*n)%w, y-240; dx*dx+dy*dy < 60*60 {
				v = 230
			}
			img.Y[y*img.YStride+x] = uint8(v)
		}
	}
	for y := range h / 2 {
		for x := range w / 2 {
			img.Cb[y*img.CStride+x] = uint8(128 + 40*math.Sin(float64(x+n)/50))
			img.Cr[y*img.CStride+x] = uint8(128 + 40*math.Cos(float64(y)/40))
		}
	}
	return img
}

// The congestion controller lowers the bitrate of a running encoder
// (codec.BitRateController): the delta frames that follow must shrink
// to about the new target, for every software video backend.
func TestEncoderFollowsBitRate(t *testing.T) {
	const w, h, fps = 640, 480, 30
	for _, name := range []string{"openh264", "libvpx-vp8"} {
		t.Run(name, func(t *testing.T) {
			mu.Lock()
			var be *Backend
			for _, b := range backends {
				if b.Name == name {
					be = &b
				}
			}
			mu.Unlock()
			if be == nil {
				t.Fatalf("%s not registered", name)
			}
			builder, err := be.Video(Settings{BitRate: 1_500_000, KeyFrameInterval: 10 * fps})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			cam := video.ReaderFunc(func() (image.Image, func(), error) {
				n++
				return movingPicture(w, h, n), func() {}, nil
			})
			enc, err := builder.BuildVideoEncoder(cam, prop.Media{Video: prop.Video{Width: w, Height: h, FrameRate: fps, FrameFormat: frame.FormatI420}})
			if err != nil {
				t.Fatal(err)
			}
			defer enc.Close()
			brc, ok := enc.Controller().(codec.BitRateController)
			if !ok {
				t.Fatalf("%s has no live bitrate control", name)
			}
			// Encode at camera pace: rate control counts time.
			rate := func(frames int) float64 {
				tick := time.NewTicker(time.Second / fps)
				defer tick.Stop()
				var bytes int
				for i := 0; i < frames; i++ {
					<-tick.C
					data, release, err := enc.Read()
					if err != nil {
						t.Fatal(err)
					}
					if i >= frames/3 { // let rate control settle
						bytes += len(data)
					}
					release()
				}
				return float64(bytes*8) / (float64(frames-frames/3) / fps) / 1000
			}
			high := rate(90)
			if err := brc.SetBitRate(200_000); err != nil {
				t.Fatal(err)
			}
			low := rate(90)
			t.Logf("%s: %.0f kbit/s at a 1500 kbit/s target, %.0f kbit/s after SetBitRate(200 kbit/s)", name, high, low)
			if low > 400 || low > high/2 {
				t.Errorf("%s did not follow the lower target: %.0f kbit/s before, %.0f after (target 200)", name, high, low)
			}
		})
	}
}
