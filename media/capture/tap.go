package capture

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/media/gate"
)

// Tap hands the video encoder's output, as it leaves the encoder for the
// far end, to the unit's own screen (the self-view): what the room sends,
// and only that (invariant 9). It costs no second encoder: the self-view
// is the very frames the far end gets.
//
// A frame leaves the tap only while the gate lets video out, checked as the
// frame comes out of the encoder: the one camera frame in flight at a close
// (invariant 1) and the privacy slates that follow it go to the far end but
// not to the screen, which shows its "camera closed" placeholder from the
// gate's state instead. So the self-view never holds a room frame from
// before a close, and never shows one while private.
//
// A camera that codes H.264 itself (PassThrough) is wrapped the same way:
// its access units reach the self-view as they leave for the far end.
type Tap struct {
	g      *gate.Gate
	sink   atomic.Pointer[func(EncodedFrame)]
	wanted atomic.Bool
}

// EncodedFrame is one frame as the encoder coded it.
type EncodedFrame struct {
	Codec    string // "VP8", "H264"
	Data     []byte // the encoder's buffer: valid only during the sink call
	Keyframe bool
	At       time.Time
}

// NewTap returns a tap behind g with no sink yet.
func NewTap(g *gate.Gate) *Tap { return &Tap{g: g} }

// SetSink sets (nil: removes) what receives the frames. The sink runs on
// the encoder's goroutine: it must copy what it keeps and must not block.
func (t *Tap) SetSink(f func(EncodedFrame)) {
	if f == nil {
		t.sink.Store(nil)
		return
	}
	t.sink.Store(&f)
}

// RequestKeyframe makes the encoder code its next frame as a keyframe (a
// screen that connects mid call has nothing to decode until one comes).
func (t *Tap) RequestKeyframe() { t.wanted.Store(true) }

// Wrap returns b with its output tapped. Wrap it inside any transform of
// the coded frames (end-to-end encryption): the screen shows the picture,
// not ciphertext.
func (t *Tap) Wrap(b codec.VideoEncoderBuilder) codec.VideoEncoderBuilder {
	if t == nil {
		return b
	}
	return tapBuilder{VideoEncoderBuilder: b, t: t}
}

type tapBuilder struct {
	codec.VideoEncoderBuilder
	t *Tap
}

// Unwrap gives the wrapped builder back (passThroughOf looks through it).
func (b tapBuilder) Unwrap() codec.VideoEncoderBuilder { return b.VideoEncoderBuilder }

func (b tapBuilder) BuildVideoEncoder(r video.Reader, p prop.Media) (codec.ReadCloser, error) {
	rc, err := b.VideoEncoderBuilder.BuildVideoEncoder(r, p)
	if err != nil {
		return nil, err
	}
	name := strings.TrimPrefix(strings.ToUpper(b.RTPCodec().MimeType), "VIDEO/")
	return &tapReader{ReadCloser: rc, t: b.t, codec: name}, nil
}

type tapReader struct {
	codec.ReadCloser
	t     *Tap
	codec string
}

func (r *tapReader) Read() ([]byte, func(), error) {
	// Outside the encoder's Read: it holds the lock ForceKeyFrame takes
	// (see KeyFrames).
	if r.t.wanted.Swap(false) {
		if kc, ok := r.ReadCloser.Controller().(codec.KeyFrameController); ok {
			_ = kc.ForceKeyFrame()
		}
	}
	b, release, err := r.ReadCloser.Read()
	if err != nil || len(b) == 0 {
		return b, release, err
	}
	if s := r.t.sink.Load(); s != nil && r.t.g.State().Video {
		(*s)(EncodedFrame{Codec: r.codec, Data: b, Keyframe: IsKeyframe(r.codec, b), At: time.Now()})
	}
	return b, release, err
}

// IsKeyframe tells a keyframe by its header, without decoding: a VP8 key
// frame, or an H.264 access unit (Annex B) with an IDR slice or an SPS.
func IsKeyframe(codecName string, f []byte) bool {
	switch codecName {
	case "VP8":
		return len(f) >= 10 && f[0]&1 == 0 && f[3] == 0x9d && f[4] == 0x01 && f[5] == 0x2a
	case "H264":
		for i := 0; i+3 < len(f); i++ {
			if f[i] == 0 && f[i+1] == 0 && f[i+2] == 1 {
				if t := f[i+3] & 0x1f; t == 5 || t == 7 {
					return true
				}
			}
		}
	}
	return false
}
