package playout

// libopus is the reference decoder; mediadevices already links it for the
// encoder, so decoding costs no new library on the unit.

// #cgo pkg-config: opus
// #include <opus.h>
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// opusDecoder decodes one remote participant's Opus stream to 48 kHz mono.
type opusDecoder struct{ d *C.OpusDecoder }

func newOpusDecoder() (*opusDecoder, error) {
	var e C.int
	d := C.opus_decoder_create(C.opus_int32(SampleRate), 1, &e)
	if e != C.OPUS_OK || d == nil {
		return nil, fmt.Errorf("opus decoder: error %d", int(e))
	}
	return &opusDecoder{d}, nil
}

// decode writes up to len(pcm) samples; a nil packet conceals a lost one.
func (o *opusDecoder) decode(pkt []byte, pcm []float32) (int, error) {
	if len(pcm) == 0 {
		return 0, errors.New("opus decode: no room for samples")
	}
	var data *C.uchar
	if len(pkt) > 0 {
		data = (*C.uchar)(unsafe.Pointer(&pkt[0]))
	}
	n := C.opus_decode_float(o.d, data, C.opus_int32(len(pkt)), (*C.float)(unsafe.Pointer(&pcm[0])), C.int(len(pcm)), 0)
	if n < 0 {
		return 0, fmt.Errorf("opus decode: error %d", int(n))
	}
	return int(n), nil
}

func (o *opusDecoder) close() {
	if o != nil && o.d != nil {
		C.opus_decoder_destroy(o.d)
		o.d = nil
	}
}
