//go:build linux && (amd64 || arm64)

package encoder

import (
	"github.com/pion/mediadevices/pkg/codec"

	"github.com/konsult/konsult/media/encoder/v4l2m2m"
)

// The V4L2 memory-to-memory H.264 block (Raspberry Pi 4's bcm2835-codec at
// /dev/video11, or any SoC with the same stateful encoder API). Pure Go, so
// it is there in cgo-less builds too. Its Probe names every /dev/video*
// node it looked at, so doctor says why the hardware was not used.
func init() {
	Register(Backend{
		Name: "v4l2m2m", Codec: "H264", Kind: Video, Quality: 100, License: "kernel driver (no codec library linked)",
		Probe: func(Settings) error {
			_, err := v4l2m2m.Find(v4l2m2m.FourccH264)
			return err
		},
		Video: func(s Settings) (codec.VideoEncoderBuilder, error) {
			d, err := v4l2m2m.Find(v4l2m2m.FourccH264)
			if err != nil {
				return nil, err
			}
			return &v4l2m2m.Params{Device: d, Coded: v4l2m2m.FourccH264, BitRate: s.BitRate, KeyFrameInterval: s.KeyFrameInterval}, nil
		},
	})
}
