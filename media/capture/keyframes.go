package capture

import (
	"sync/atomic"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
)

// KeyFrames makes the video encoder code a frame as a keyframe when the
// gate asked for it (every slate after the first of a close).
//
// The request has to be made outside the encoder's Read: mediadevices'
// encoders hold their lock while they read the next raw frame, which is
// where the gate hands over the slate, and their ForceKeyFrame takes that
// same lock. So the gate only marks the wish, and the wrapped encoder's Read
// forces the keyframe before it reads (and encodes) the next frame.
type KeyFrames struct {
	wanted atomic.Bool
	Forced atomic.Uint64 // keyframes forced so far
}

func (k *KeyFrames) want() {
	if k != nil {
		k.wanted.Store(true)
	}
}

// Wrap returns b with keyframes forced on the gate's request. Unwrap gives b
// back (passThroughOf looks through it).
func (k *KeyFrames) Wrap(b codec.VideoEncoderBuilder) codec.VideoEncoderBuilder {
	return keyedBuilder{VideoEncoderBuilder: b, k: k}
}

type keyedBuilder struct {
	codec.VideoEncoderBuilder
	k *KeyFrames
}

func (b keyedBuilder) Unwrap() codec.VideoEncoderBuilder { return b.VideoEncoderBuilder }

func (b keyedBuilder) BuildVideoEncoder(r video.Reader, p prop.Media) (codec.ReadCloser, error) {
	rc, err := b.VideoEncoderBuilder.BuildVideoEncoder(r, p)
	if err != nil {
		return nil, err
	}
	return keyedReader{ReadCloser: rc, k: b.k}, nil
}

type keyedReader struct {
	codec.ReadCloser
	k *KeyFrames
}

func (r keyedReader) Read() ([]byte, func(), error) {
	if r.k.wanted.Swap(false) {
		if kc, ok := r.ReadCloser.Controller().(codec.KeyFrameController); ok && kc.ForceKeyFrame() == nil {
			r.k.Forced.Add(1)
		}
	}
	return r.ReadCloser.Read()
}
