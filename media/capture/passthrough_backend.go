//go:build linux && (amd64 || arm64)

package capture

import (
	"fmt"

	"github.com/pion/mediadevices/pkg/codec"

	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/encoder/v4l2m2m"
)

// A camera that encodes H.264 itself (UVC, e.g. Logitech C920/C930e): its
// access units are sent as they are, so it beats every encoder — no CPU,
// no second generation of coding loss — when the configured camera offers
// H.264 at the configured size and conference.video_passthrough is auto
// (encoder.Settings.PassThrough, from the config).
// Its Probe says why not otherwise (doctor shows it), and the next backend
// is used. It is registered here, not in package encoder: the camera and
// the privacy gate around it are this package's.
func init() {
	encoder.Register(encoder.Backend{
		Name: "uvc-h264", Codec: "H264", Kind: encoder.Video, Quality: 150, License: "the camera's own encoder (no codec library linked)",
		Probe: func(s encoder.Settings) error {
			_, err := passThroughCamera(s.PassThrough)
			return err
		},
		Video: func(s encoder.Settings) (codec.VideoEncoderBuilder, error) {
			c := s.PassThrough
			info, err := passThroughCamera(c)
			if err != nil {
				return nil, err
			}
			return &PassThrough{Camera: info, Width: c.Width, Height: c.Height, FPS: c.FPS, BitRate: s.BitRate}, nil
		},
		Detail: func(s encoder.Settings) string {
			c := s.PassThrough
			info, err := passThroughCamera(c)
			if err != nil {
				return err.Error()
			}
			return fmt.Sprintf("%s (%s) at %dx%d, no re-encode; %s", info.Card, info.Path, c.Width, c.Height, info.Controls())
		},
	})
}

// passThroughCamera finds the configured camera if pass-through can use it.
func passThroughCamera(c encoder.PassThroughConfig) (v4l2m2m.CameraInfo, error) {
	if err := c.Wanted(); err != nil {
		return v4l2m2m.CameraInfo{}, err
	}
	if err := SlateAvailable(); err != nil {
		return v4l2m2m.CameraInfo{}, err
	}
	info, err := v4l2m2m.FindCamera(c.Camera)
	if err != nil {
		return info, err
	}
	if !info.Offers(c.Width, c.Height) {
		return info, fmt.Errorf("%s (%s) gives H264 only at %v, not the configured %dx%d: set conference.width/height to one of those", info.Path, info.Card, info.H264Sizes, c.Width, c.Height)
	}
	return info, nil
}
