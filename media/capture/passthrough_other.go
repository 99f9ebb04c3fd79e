//go:build !(linux && (amd64 || arm64))

package capture

import (
	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec"
)

// Camera pass-through reads V4L2 with 64-bit layouts: Linux on amd64 and
// arm64 only. Elsewhere there is none.

type PassThrough struct{ codec.VideoEncoderBuilder }

func passThroughOf(codec.VideoEncoderBuilder) *PassThrough { return nil }

func openPassThrough(*Capture, *PassThrough, Config) mediadevices.Track { return nil }

func passThroughsOpen() []string { return nil }
