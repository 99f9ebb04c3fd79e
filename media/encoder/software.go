//go:build cgo

package encoder

import (
	"fmt"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/codec/openh264"
	"github.com/pion/mediadevices/pkg/codec/opus"
	"github.com/pion/mediadevices/pkg/codec/vpx"
)

// The software backends. openh264 (BSD) is the default H.264 encoder; x264
// is GPL and stays out of the firmware. Their static libraries are linked
// in, so they can always run: Probe is nil.
func init() {
	Register(Backend{
		Name: "openh264", Codec: "H264", Kind: Video, Quality: 50, License: "BSD-2-Clause",
		Video: func(s Settings) (codec.VideoEncoderBuilder, error) {
			p, err := openh264.NewParams()
			if err != nil {
				return nil, fmt.Errorf("openh264 params: %w", err)
			}
			p.BitRate = s.BitRate
			p.KeyFrameInterval = s.KeyFrameInterval
			// A skipped frame could be the privacy slate.
			p.EnableFrameSkip = false
			return &p, nil
		},
	})
	Register(Backend{
		Name: "libvpx-vp8", Codec: "VP8", Kind: Video, Quality: 40, License: "BSD-3-Clause",
		Video: func(s Settings) (codec.VideoEncoderBuilder, error) {
			p, err := vpx.NewVP8Params()
			if err != nil {
				return nil, fmt.Errorf("vp8 params: %w", err)
			}
			p.BitRate = s.BitRate
			p.KeyFrameInterval = s.KeyFrameInterval
			return &p, nil
		},
	})
	Register(Backend{
		Name: "opus", Codec: "opus", Kind: Audio, Quality: 50, License: "BSD-3-Clause",
		Audio: func(s Settings) (codec.AudioEncoderBuilder, error) {
			p, err := opus.NewParams()
			if err != nil {
				return nil, fmt.Errorf("opus params: %w", err)
			}
			if s.BitRate > 0 {
				p.BitRate = s.BitRate
			}
			return &p, nil
		},
	})
}
