//go:build linux && (amd64 || arm64)

// Package v4l2m2m drives a V4L2 memory-to-memory stateful video encoder
// (Documentation/userspace-api/media/v4l/dev-encoder.rst) in pure Go: the
// Raspberry Pi 4's bcm2835-codec H.264 block at /dev/video11, any SoC with
// the same kernel API, and vicodec (FWHT) in the QEMU lab.
//
// Raw frames go to the OUTPUT queue, coded frames come back on the CAPTURE
// queue; both use MMAP buffers. The encoder is a mediadevices
// codec.VideoEncoderBuilder, so it sits behind the privacy gate exactly like
// the software encoders.
package v4l2m2m

import (
	"errors"
	"fmt"
	"image"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
	"golang.org/x/sys/unix"
)

// Params configure the encoder. Zero values take defaults.
type Params struct {
	Device           Device // from Find; Device.Path "" means Find(Coded) when built
	Coded            uint32 // FourccH264 (default) or FourccFWHT (lab)
	BitRate          int    // bits/s
	KeyFrameInterval int    // frames; also the H.264 I-frame period
	FPS              int    // frame rate told to the driver (rate control)
	Log              *slog.Logger
	// StallTimeout is how long a queued frame may take to come back before
	// the encoder counts as hung (default 2 s).
	StallTimeout time.Duration
}

// RTPCodec implements codec.VideoEncoderBuilder. Only H.264 has an RTP
// payload format; FWHT (lab only) is never sent.
func (p *Params) RTPCodec() *codec.RTPCodec {
	if p.coded() == FourccH264 {
		return codec.NewRTPH264Codec(90000)
	}
	return nil
}

func (p *Params) coded() uint32 {
	if p.Coded == 0 {
		return FourccH264
	}
	return p.Coded
}

// BuildVideoEncoder implements codec.VideoEncoderBuilder.
func (p *Params) BuildVideoEncoder(r video.Reader, m prop.Media) (codec.ReadCloser, error) {
	q := *p
	q.Coded = p.coded()
	if q.Device.Path == "" {
		d, err := Find(q.Coded)
		if err != nil {
			return nil, err
		}
		q.Device = d
	}
	if q.FPS == 0 && m.FrameRate > 0 {
		q.FPS = int(m.FrameRate)
	}
	e, err := Open(q, m.Width, m.Height)
	if err != nil {
		return nil, err
	}
	e.src = video.ToI420(r)
	return e, nil
}

// Frame is one coded frame off the CAPTURE queue.
type Frame struct {
	Data     []byte
	KeyFrame bool
	Sequence uint32
}

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("v4l2m2m: encoder closed")

// Encoder is one open stateful encoder session.
type Encoder struct {
	p   Params
	log *slog.Logger
	dev device
	src video.Reader // raw frames, I420

	mu       sync.Mutex // serialises Read, Close and the queues
	w, h     int        // the raw size the queues are set up for
	raw      uint32     // YU12 or NV12
	outType  uint32
	capType  uint32
	out, cap []mapped
	outFree  []int // OUTPUT buffers we may fill
	inFlight int   // frames queued whose coded frame has not come back
	pending  []Frame
	seq      uint32
	err      error // sticky: the first fatal error
	closed   bool

	bitrate  atomic.Int64 // a change asked for, applied before the next frame
	forceKey atomic.Bool
	// Stats for doctor and the lab.
	Frames, KeyFrames, Errors atomic.Int64
}

type mapped struct {
	mem    []byte
	length uint32
	// single-planar layout the driver chose
	bytesPerLine, sizeImage, height uint32
}

// Open sets the device up for w×h raw frames (the kernel's initialization
// sequence: CAPTURE format, OUTPUT format, frame rate, controls, buffers on
// both queues, stream on). On any error everything done so far is undone.
func Open(p Params, w, h int) (*Encoder, error) {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.StallTimeout == 0 {
		p.StallTimeout = 2 * time.Second
	}
	p.Coded = p.coded()
	dev, err := opener(p.Device.Path)
	if err != nil {
		return nil, fmt.Errorf("v4l2m2m: open %s: %w (is the codec driver loaded, and may roomd open it? add the user to the video group)", p.Device.Path, err)
	}
	e := &Encoder{p: p, log: p.Log.With("encoder", "v4l2m2m", "device", p.Device.Path), dev: dev}
	e.capType, e.outType = typeVideoCapture, typeVideoOutput
	if p.Device.MPlane {
		e.capType, e.outType = typeVideoCaptureMPlane, typeVideoOutputMPlane
	}
	e.bitrate.Store(-1)
	if err := e.setup(w, h); err != nil {
		e.teardown()
		_ = dev.close()
		return nil, err
	}
	return e, nil
}

func (e *Encoder) fail(op string, req uintptr, err error) error {
	return fmt.Errorf("v4l2m2m %s (%s): %s: %s: %w", e.p.Device.Path, e.p.Device.Driver, op, ioctlName(req), err)
}

func (e *Encoder) setCtrl(id uint32, v int32) error {
	c := control{ID: id, Value: v}
	return e.dev.ioctl(vidiocSCtrl, unsafe.Pointer(&c))
}

func (e *Encoder) allocate(typ uint32, n int) ([]mapped, error) {
	rb := requestBuffers{Count: uint32(n), Type: typ, Memory: memoryMMAP}
	if err := e.dev.ioctl(vidiocReqbufs, unsafe.Pointer(&rb)); err != nil {
		return nil, e.fail("allocate buffers", vidiocReqbufs, err)
	}
	if rb.Count == 0 {
		return nil, fmt.Errorf("v4l2m2m %s: driver gave no buffers", e.p.Device.Path)
	}
	bufs := make([]mapped, 0, rb.Count)
	for i := uint32(0); i < rb.Count; i++ {
		b := buffer{Index: i, Type: typ, Memory: memoryMMAP}
		var pl [1]plane
		if e.p.Device.MPlane {
			b.setPlanes(pl[:])
		}
		if err := e.dev.ioctl(vidiocQuerybuf, unsafe.Pointer(&b)); err != nil {
			return bufs, e.fail("query buffer", vidiocQuerybuf, err)
		}
		off, length := int64(uint32(b.M)), b.Length
		if e.p.Device.MPlane {
			off, length = int64(uint32(pl[0].M)), pl[0].Length
		}
		mem, err := e.dev.mmap(off, int(length))
		if err != nil {
			// Keep what is mapped so far: teardown unmaps it.
			e.keep(typ, bufs)
			return nil, fmt.Errorf("v4l2m2m %s: mmap buffer %d: %w", e.p.Device.Path, i, err)
		}
		bufs = append(bufs, mapped{mem: mem, length: length})
	}
	return bufs, nil
}

func (e *Encoder) keep(typ uint32, bufs []mapped) {
	if typ == e.outType {
		e.out = bufs
	} else {
		e.cap = bufs
	}
}

// queue hands buffer i of typ to the driver, with used bytes (OUTPUT).
func (e *Encoder) queue(typ uint32, i int, used uint32) error {
	b := buffer{Index: uint32(i), Type: typ, Memory: memoryMMAP, Field: fieldNone, BytesUsed: used}
	var pl [1]plane
	if e.p.Device.MPlane {
		pl[0].BytesUsed = used
		if typ == e.outType {
			pl[0].Length = e.out[i].length
		} else {
			pl[0].Length = e.cap[i].length
		}
		b.setPlanes(pl[:])
	}
	if typ == e.outType {
		// Timestamps are copied to the coded frame: sequence numbers let the
		// lab match frames, nothing reads wall time from them.
		b.Timestamp = unix.Timeval{Sec: int64(e.seq), Usec: 0}
	}
	if err := e.dev.ioctl(vidiocQbuf, unsafe.Pointer(&b)); err != nil {
		return e.fail("queue buffer", vidiocQbuf, err)
	}
	return nil
}

// dequeue takes one done buffer of typ; ok is false if none is done yet.
func (e *Encoder) dequeue(typ uint32) (b buffer, used uint32, ok bool, err error) {
	b = buffer{Type: typ, Memory: memoryMMAP}
	var pl [1]plane
	if e.p.Device.MPlane {
		b.setPlanes(pl[:])
	}
	if err := e.dev.ioctl(vidiocDqbuf, unsafe.Pointer(&b)); err != nil {
		if errors.Is(err, unix.EAGAIN) {
			return b, 0, false, nil
		}
		return b, 0, false, err
	}
	used = b.BytesUsed
	if e.p.Device.MPlane {
		used = pl[0].BytesUsed
	}
	return b, used, true, nil
}

// Read implements codec.ReadCloser: the next coded frame.
func (e *Encoder) Read() ([]byte, func(), error) {
	f, err := e.ReadFrame()
	if err != nil {
		return nil, func() {}, err
	}
	return f.Data, func() {}, nil
}

// ReadFrame returns the next coded frame, feeding raw frames from the
// source as the driver frees OUTPUT buffers.
func (e *Encoder) ReadFrame() (Frame, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return Frame{}, ErrClosed
	}
	if e.err != nil {
		return Frame{}, e.err
	}
	f, err := e.next()
	if err != nil && !errors.Is(err, io.EOF) {
		e.err = err
		e.log.Error("hardware encoder failed", "err", err)
	}
	return f, err
}

func (e *Encoder) next() (Frame, error) {
	waitSince := time.Now()
	for {
		if len(e.pending) > 0 {
			f := e.pending[0]
			e.pending = e.pending[1:]
			return f, nil
		}
		if err := e.collect(); err != nil {
			return Frame{}, err
		}
		if len(e.pending) > 0 {
			continue
		}
		// With a frame in flight, give the driver a moment before feeding
		// another: one frame in, one frame out keeps latency at one frame
		// on the Pi's block; an encoder that wants more input gets it.
		if len(e.outFree) > 0 && (e.inFlight == 0 || time.Since(waitSince) > 200*time.Millisecond) {
			if err := e.feed(); err != nil {
				return Frame{}, err
			}
			waitSince = time.Now()
			continue
		}
		rev, err := e.dev.poll(unix.POLLIN|unix.POLLOUT, 50)
		if err != nil {
			return Frame{}, fmt.Errorf("v4l2m2m %s: poll: %w", e.p.Device.Path, err)
		}
		if rev&unix.POLLERR != 0 {
			return Frame{}, fmt.Errorf("v4l2m2m %s (%s): the driver reports an error on the device (POLLERR): the encoder is lost", e.p.Device.Path, e.p.Device.Driver)
		}
		if rev == 0 && e.inFlight > 0 && time.Since(waitSince) > e.p.StallTimeout {
			return Frame{}, fmt.Errorf("v4l2m2m %s (%s): no coded frame within %s of %d queued: the encoder is hung", e.p.Device.Path, e.p.Device.Driver, e.p.StallTimeout, e.inFlight)
		}
	}
}

// collect takes back done OUTPUT buffers and done CAPTURE buffers.
func (e *Encoder) collect() error {
	for {
		b, _, ok, err := e.dequeue(e.outType)
		if err != nil {
			return e.fail("take back raw buffer", vidiocDqbuf, err)
		}
		if !ok {
			break
		}
		e.outFree = append(e.outFree, int(b.Index))
	}
	for {
		b, used, ok, err := e.dequeue(e.capType)
		if errors.Is(err, unix.EPIPE) {
			// After the LAST buffer: nothing more until restarted.
			return io.EOF
		}
		if err != nil {
			return e.fail("take coded buffer", vidiocDqbuf, err)
		}
		if !ok {
			return nil
		}
		if e.inFlight > 0 {
			e.inFlight--
		}
		last := b.Flags&flagLast != 0
		switch {
		case b.Flags&flagError != 0:
			// A corrupt frame: drop it, and start the next from a keyframe
			// so the far end's decoder is not left with a broken reference.
			e.Errors.Add(1)
			e.forceKey.Store(true)
			e.log.Warn("driver marked a coded frame as corrupt; dropped, keyframe next", "sequence", b.Sequence)
		case used > 0:
			data := make([]byte, used)
			copy(data, e.cap[b.Index].mem[:used])
			key := b.Flags&flagKeyFrame != 0
			e.Frames.Add(1)
			if key {
				e.KeyFrames.Add(1)
			}
			e.pending = append(e.pending, Frame{Data: data, KeyFrame: key, Sequence: uint32(b.Timestamp.Sec)})
		}
		if last {
			return io.EOF
		}
		if err := e.queue(e.capType, int(b.Index), 0); err != nil {
			return err
		}
	}
}

// feed reads one raw frame from the source into a free OUTPUT buffer.
func (e *Encoder) feed() error {
	img, release, err := e.src.Read()
	if err != nil {
		return fmt.Errorf("v4l2m2m: raw frame: %w", err)
	}
	defer func() {
		if release != nil {
			release()
		}
	}()
	yuv, ok := img.(*image.YCbCr)
	if !ok || yuv.SubsampleRatio != image.YCbCrSubsampleRatio420 {
		return fmt.Errorf("v4l2m2m: raw frame is %T, not I420: the capture pipeline must convert first", img)
	}
	bw, bh := yuv.Rect.Dx(), yuv.Rect.Dy()
	if bw != e.w || bh != e.h {
		// A source change: the kernel's sequence is drain, stop both
		// queues, set the formats again, new buffers, stream on.
		if err := e.restart(bw, bh); err != nil {
			return err
		}
	}
	return e.Encode(yuv)
}

// Encode queues one I420 frame (the caller holds e.mu, or is a test).
func (e *Encoder) Encode(yuv *image.YCbCr) error {
	if len(e.outFree) == 0 {
		return errors.New("v4l2m2m: no free raw buffer")
	}
	i := e.outFree[0]
	e.outFree = e.outFree[1:]
	if br := e.bitrate.Swap(-1); br > 0 {
		if err := e.setCtrl(cidBitrate, int32(br)); err != nil {
			e.log.Info("driver refused a bitrate change", "bps", br, "err", err)
		}
	}
	if e.forceKey.Swap(false) {
		if err := e.setCtrl(cidForceKeyFrame, 1); err != nil {
			e.log.Info("driver cannot force a keyframe", "err", err)
		}
	}
	m := e.out[i]
	if need := int(m.bytesPerLine) * int(m.height) * 3 / 2; len(m.mem) < need {
		return fmt.Errorf("v4l2m2m %s: raw buffer %d holds %d bytes, the frame needs %d: driver bug or wrong format", e.p.Device.Path, i, len(m.mem), need)
	}
	n := copyI420(m.mem, int(m.bytesPerLine), int(m.height), e.raw, yuv)
	e.seq++
	if err := e.queue(e.outType, i, uint32(n)); err != nil {
		return err
	}
	e.inFlight++
	return nil
}

// copyI420 lays yuv out as the driver's YU12 or NV12 with its stride and
// buffer height, which may be rounded up from the picture's (vicodec: 368
// for 360); the rows below the picture stay as they are.
func copyI420(dst []byte, stride, bufH int, raw uint32, yuv *image.YCbCr) int {
	w, h := yuv.Rect.Dx(), yuv.Rect.Dy()
	for y := 0; y < h; y++ {
		copy(dst[y*stride:y*stride+w], yuv.Y[y*yuv.YStride:y*yuv.YStride+w])
	}
	cw, ch := (w+1)/2, (h+1)/2
	base := stride * bufH
	cs := stride / 2
	if raw == FourccNV12 {
		for y := 0; y < ch; y++ {
			row := dst[base+y*stride:]
			cb, cr := yuv.Cb[y*yuv.CStride:], yuv.Cr[y*yuv.CStride:]
			for x := 0; x < cw; x++ {
				row[2*x], row[2*x+1] = cb[x], cr[x]
			}
		}
		return base + stride*((bufH+1)/2)
	}
	crBase := base + cs*((bufH+1)/2)
	for y := 0; y < ch; y++ {
		copy(dst[base+y*cs:base+y*cs+cw], yuv.Cb[y*yuv.CStride:y*yuv.CStride+cw])
		copy(dst[crBase+y*cs:crBase+y*cs+cw], yuv.Cr[y*yuv.CStride:y*yuv.CStride+cw])
	}
	return crBase + cs*((bufH+1)/2)
}

// restart re-initialises the session for a new raw size.
func (e *Encoder) restart(w, h int) error {
	e.log.Info("raw frame size changed: draining and re-initialising", "from", fmt.Sprintf("%dx%d", e.w, e.h), "to", fmt.Sprintf("%dx%d", w, h))
	if err := e.drain(); err != nil {
		return err
	}
	e.teardown()
	// The far end's decoder must resynchronise at the new size.
	e.forceKey.Store(true)
	return e.setup(w, h)
}

// drain is the kernel's drain sequence: V4L2_ENC_CMD_STOP, then coded
// frames until the one flagged LAST (or DQBUF says EPIPE). Frames that
// come out are kept for Read.
func (e *Encoder) drain() error {
	cmd := encoderCmd{Cmd: encCmdStop}
	if err := e.dev.ioctl(vidiocEncoderCmd, unsafe.Pointer(&cmd)); err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			return nil // an old driver without the command: nothing to wait for
		}
		return e.fail("drain", vidiocEncoderCmd, err)
	}
	deadline := time.Now().Add(e.p.StallTimeout)
	for time.Now().Before(deadline) {
		err := e.collect()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := e.dev.poll(unix.POLLIN, 50); err != nil {
			return fmt.Errorf("v4l2m2m %s: poll while draining: %w", e.p.Device.Path, err)
		}
	}
	return fmt.Errorf("v4l2m2m %s (%s): no LAST buffer within %s of the drain command: the driver did not finish draining", e.p.Device.Path, e.p.Device.Driver, e.p.StallTimeout)
}

// teardown stops streaming, unmaps and frees buffers on both queues. Safe
// after a partial setup; errors are logged, never stop the release.
func (e *Encoder) teardown() {
	for _, t := range []uint32{e.outType, e.capType} {
		t := t
		if err := e.dev.ioctl(vidiocStreamoff, unsafe.Pointer(&t)); err != nil && !errors.Is(err, unix.EINVAL) {
			e.log.Debug("stream off", "err", err)
		}
	}
	for _, l := range []*[]mapped{&e.out, &e.cap} {
		for _, m := range *l {
			if m.mem != nil {
				if err := e.dev.munmap(m.mem); err != nil {
					e.log.Warn("munmap", "err", err)
				}
			}
		}
		*l = nil
	}
	for _, t := range []uint32{e.outType, e.capType} {
		rb := requestBuffers{Count: 0, Type: t, Memory: memoryMMAP}
		if err := e.dev.ioctl(vidiocReqbufs, unsafe.Pointer(&rb)); err != nil {
			e.log.Debug("free buffers", "err", err)
		}
	}
	e.outFree, e.inFlight = nil, 0
}

// Close drains (briefly), releases every buffer and closes the device.
func (e *Encoder) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	var err error
	if e.err == nil && e.out != nil {
		if derr := e.drain(); derr != nil {
			e.log.Warn("drain on close", "err", derr)
		}
	}
	e.teardown()
	if cerr := e.dev.close(); cerr != nil {
		err = fmt.Errorf("v4l2m2m: close %s: %w", e.p.Device.Path, cerr)
	}
	return err
}

// Controller implements codec.Controllable.
func (e *Encoder) Controller() codec.EncoderController { return e }

// SetBitRate implements codec.BitRateController: applied before the next frame.
func (e *Encoder) SetBitRate(bps int) error {
	if bps <= 0 {
		return fmt.Errorf("v4l2m2m: bitrate %d is not positive", bps)
	}
	e.bitrate.Store(int64(bps))
	return nil
}

// ForceKeyFrame implements codec.KeyFrameController (the far end's PLI/FIR):
// the next frame queued is coded as a keyframe.
func (e *Encoder) ForceKeyFrame() error {
	e.forceKey.Store(true)
	return nil
}

var (
	_ codec.VideoEncoderBuilder = (*Params)(nil)
	_ codec.ReadCloser          = (*Encoder)(nil)
	_ codec.BitRateController   = (*Encoder)(nil)
	_ codec.KeyFrameController  = (*Encoder)(nil)
)
