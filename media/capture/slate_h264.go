//go:build cgo && linux && (amd64 || arm64)

package capture

import (
	"fmt"
	"image"
	"sync"

	"github.com/pion/mediadevices/pkg/codec/openh264"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/media/encoder/v4l2m2m"
)

// SlateAvailable reports whether SlateH264 can code the slate here (it
// needs openh264, linked with cgo).
func SlateAvailable() error { return nil }

var slates sync.Map // "w×h@fps" → [][]byte

// SlateH264 is the privacy slate coded as H.264 by openh264 at w×h: an IDR
// access unit (with SPS and PPS), then SlatesPerClose-1 P frames. Camera
// pass-through sends it while the gate is shut, since there is no encoder
// of its own to feed the slate into. It is coded once per size and kept
// (a uniform frame: a few hundred bytes per unit).
func SlateH264(w, h, fps int) ([][]byte, error) {
	key := fmt.Sprintf("%dx%d@%d", w, h, fps)
	if v, ok := slates.Load(key); ok {
		return v.([][]byte), nil
	}
	p, err := openh264.NewParams()
	if err != nil {
		return nil, fmt.Errorf("openh264 params: %w", err)
	}
	p.BitRate = 500_000
	p.EnableFrameSkip = false
	p.IntraPeriod = 1000
	if fps <= 0 {
		fps = 30
	}
	img := Slate(w, h)
	enc, err := p.BuildVideoEncoder(video.ReaderFunc(func() (image.Image, func(), error) { return img, func() {}, nil }),
		prop.Media{Video: prop.Video{Width: w, Height: h, FrameRate: float32(fps)}})
	if err != nil {
		return nil, fmt.Errorf("openh264 for the %dx%d slate: %w", w, h, err)
	}
	defer enc.Close()
	var units [][]byte
	for tries := 0; len(units) < SlatesPerClose && tries < 3*SlatesPerClose; tries++ {
		au, release, err := enc.Read()
		if err != nil {
			return nil, fmt.Errorf("code the %dx%d slate: %w", w, h, err)
		}
		if len(au) > 0 {
			units = append(units, append([]byte(nil), au...))
		}
		release()
	}
	if len(units) < SlatesPerClose || !v4l2m2m.HasIDR(units[0]) {
		return nil, fmt.Errorf("openh264 gave %d slate units for %dx%d, the first without an IDR", len(units), w, h)
	}
	slates.Store(key, units)
	return units, nil
}
