//go:build linux && cgo && vaapi

package encoder

import (
	"fmt"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/codec/vaapi"
)

// VAAPI (Intel/AMD GPUs) through mediadevices' vaapi codec: VP8 only here
// (it also has VP9, which the conference config does not offer; no H.264).
// Built only with -tags vaapi because it links libva (libva-dev at build
// time, libva2 + the GPU's VA driver at run time).
func init() {
	Register(Backend{
		Name: "vaapi-vp8", Codec: "VP8", Kind: Video, Quality: 90, License: "MIT (libva)",
		Probe: func(Settings) error { return probeVAAPI("/dev/dri") },
		Video: func(s Settings) (codec.VideoEncoderBuilder, error) {
			p, err := vaapi.NewVP8Params()
			if err != nil {
				return nil, fmt.Errorf("vaapi vp8 params: %w", err)
			}
			p.BitRate = s.BitRate
			p.KeyFrameInterval = s.KeyFrameInterval
			return &p, nil
		},
	})
}
