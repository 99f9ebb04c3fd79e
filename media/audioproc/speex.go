package audioproc

// SpeexDSP (BSD): the MDF echo canceller and the preprocessor (noise
// suppression, residual echo suppression, AGC). Plain C, no shim needed.

// #cgo pkg-config: speexdsp
// #include <stdlib.h>
// #include <speex/speex_echo.h>
// #include <speex/speex_preprocess.h>
import "C"

import (
	"errors"
	"unsafe"
)

// speex is one microphone's canceller and preprocessor, on int16 frames of
// a fixed size. Not safe for concurrent use: Processor serialises calls.
type speex struct {
	frame, tail, rate int
	ns, agc           bool
	echo              *C.SpeexEchoState // nil: no echo cancellation
	pre               *C.SpeexPreprocessState
	in, ref, out      *C.spx_int16_t // C buffers of frame samples
	ir                *C.spx_int32_t // tail samples: the filter's impulse response
}

func newSpeex(frame, tail, rate int, aec, ns, agc bool) (*speex, error) {
	s := &speex{frame: frame, tail: tail, rate: rate, ns: ns, agc: agc}
	s.in = (*C.spx_int16_t)(C.calloc(C.size_t(frame), 2))
	s.ref = (*C.spx_int16_t)(C.calloc(C.size_t(frame), 2))
	s.out = (*C.spx_int16_t)(C.calloc(C.size_t(frame), 2))
	if aec {
		s.echo = C.speex_echo_state_init(C.int(frame), C.int(tail))
		if s.echo == nil {
			s.free()
			return nil, errors.New("speex echo canceller: cannot be created")
		}
		r := C.int(rate)
		C.speex_echo_ctl(s.echo, C.SPEEX_ECHO_SET_SAMPLING_RATE, unsafe.Pointer(&r))
		var n C.int
		C.speex_echo_ctl(s.echo, C.SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE, unsafe.Pointer(&n))
		s.ir = (*C.spx_int32_t)(C.calloc(C.size_t(n), 4))
		s.tail = int(n)
	}
	if err := s.newPre(); err != nil {
		s.free()
		return nil, err
	}
	return s, nil
}

// newPre makes the preprocessor. Its residual echo suppression is part of
// the noise suppressor's gain, so it runs only with NS on; the linear
// canceller alone leaves the room's own sound untouched.
func (s *speex) newPre() error {
	if s.pre != nil {
		C.speex_preprocess_state_destroy(s.pre)
		s.pre = nil
	}
	if !s.ns && !s.agc {
		return nil
	}
	s.pre = C.speex_preprocess_state_init(C.int(s.frame), C.int(s.rate))
	if s.pre == nil {
		return errors.New("speex preprocessor: cannot be created")
	}
	set := func(req C.int, v C.int) { C.speex_preprocess_ctl(s.pre, req, unsafe.Pointer(&v)) }
	set(C.SPEEX_PREPROCESS_SET_DENOISE, cbool(s.ns))
	set(C.SPEEX_PREPROCESS_SET_AGC, cbool(s.agc))
	if s.agc {
		lvl := C.float(8000) // about -12 dBFS: speech with headroom
		C.speex_preprocess_ctl(s.pre, C.SPEEX_PREPROCESS_SET_AGC_LEVEL, unsafe.Pointer(&lvl))
		set(C.SPEEX_PREPROCESS_SET_AGC_MAX_GAIN, 20)
	}
	if s.ns && s.echo != nil {
		C.speex_preprocess_ctl(s.pre, C.SPEEX_PREPROCESS_SET_ECHO_STATE, unsafe.Pointer(s.echo))
	}
	return nil
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// process cleans one frame of mic in place against ref (the far end that
// frame's echo came from; nil or ignored without a canceller).
func (s *speex) process(mic, ref []float32) {
	in := unsafe.Slice(s.in, s.frame)
	toInt16(in, mic)
	buf := s.in
	if s.echo != nil {
		toInt16(unsafe.Slice(s.ref, s.frame), ref)
		C.speex_echo_cancellation(s.echo, s.in, s.ref, s.out)
		buf = s.out
	}
	if s.pre != nil {
		C.speex_preprocess_run(s.pre, buf)
	}
	for i, v := range unsafe.Slice(buf, s.frame) {
		mic[i] = float32(v) / 32768
	}
}

// peakLag is where the echo filter's impulse response is largest, in
// samples: the echo's delay beyond the reference's own offset.
func (s *speex) peakLag() int {
	if s.echo == nil {
		return -1
	}
	C.speex_echo_ctl(s.echo, C.SPEEX_ECHO_GET_IMPULSE_RESPONSE, unsafe.Pointer(s.ir))
	best, at := int64(0), -1
	for i, v := range unsafe.Slice(s.ir, s.tail) {
		a := int64(v)
		if a < 0 {
			a = -a
		}
		if a > best {
			best, at = a, i
		}
	}
	return at
}

// reset forgets every sample: the echo filter and its buffers, and the
// preprocessor (which has no reset of its own: it is made again).
func (s *speex) reset() error {
	if s.echo != nil {
		C.speex_echo_state_reset(s.echo)
	}
	clear(unsafe.Slice(s.in, s.frame))
	clear(unsafe.Slice(s.out, s.frame))
	return s.newPre()
}

func (s *speex) free() {
	if s.pre != nil {
		C.speex_preprocess_state_destroy(s.pre)
	}
	if s.echo != nil {
		C.speex_echo_state_destroy(s.echo)
	}
	for _, p := range []unsafe.Pointer{unsafe.Pointer(s.in), unsafe.Pointer(s.ref), unsafe.Pointer(s.out), unsafe.Pointer(s.ir)} {
		C.free(p)
	}
	*s = speex{}
}

func toInt16(dst []C.spx_int16_t, src []float32) {
	for i, v := range src {
		x := v * 32768
		switch {
		case x >= 32767:
			dst[i] = 32767
		case x <= -32768:
			dst[i] = -32768
		default:
			dst[i] = C.spx_int16_t(x)
		}
	}
}
