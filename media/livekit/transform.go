package livekit

import (
	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
)

// FrameTransform changes one whole encoded frame between the encoder and the
// RTP packetiser (sending) or between the depacketiser and the decoder
// (receiving). It exists for end-to-end encryption through the SFU, which
// works on whole frames (AES-GCM with the codec header in the clear); nil
// leaves frames as they are. kind is "video" or "audio". An error drops the
// frame: a frame that cannot be encrypted must not leave in the clear.
type FrameTransform func(kind string, frame []byte) ([]byte, error)

func transformVideo(b codec.VideoEncoderBuilder, t FrameTransform) codec.VideoEncoderBuilder {
	if t == nil {
		return b
	}
	return videoXform{b, t}
}

func transformAudio(b codec.AudioEncoderBuilder, t FrameTransform) codec.AudioEncoderBuilder {
	if t == nil {
		return b
	}
	return audioXform{b, t}
}

type videoXform struct {
	codec.VideoEncoderBuilder
	t FrameTransform
}

func (x videoXform) BuildVideoEncoder(r video.Reader, p prop.Media) (codec.ReadCloser, error) {
	rc, err := x.VideoEncoderBuilder.BuildVideoEncoder(r, p)
	if err != nil {
		return nil, err
	}
	return xformReader{rc, "video", x.t}, nil
}

type audioXform struct {
	codec.AudioEncoderBuilder
	t FrameTransform
}

func (x audioXform) BuildAudioEncoder(r audio.Reader, p prop.Media) (codec.ReadCloser, error) {
	rc, err := x.AudioEncoderBuilder.BuildAudioEncoder(r, p)
	if err != nil {
		return nil, err
	}
	return xformReader{rc, "audio", x.t}, nil
}

// xformReader keeps the encoder's controller (bitrate, keyframes) reachable:
// only the bytes change.
type xformReader struct {
	codec.ReadCloser
	kind string
	t    FrameTransform
}

func (x xformReader) Read() ([]byte, func(), error) {
	for {
		b, release, err := x.ReadCloser.Read()
		if err != nil {
			return nil, nil, err
		}
		out, terr := x.t(x.kind, b)
		release()
		if terr != nil {
			continue // dropped, never sent in the clear
		}
		return out, func() {}, nil
	}
}
