//go:build linux && (amd64 || arm64)

package v4l2m2m

import (
	"encoding/binary"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fakeStatefulEncoderContract is a fake of the kernel's documented
// memory-to-memory stateful encoder interface
// (Documentation/userspace-api/media/v4l/dev-encoder.rst, vb2 rules), at the
// ioctl level: it sees the same structs the kernel sees and refuses what the
// kernel refuses (formats changed under allocated buffers, REQBUFS(0) with
// buffers still mapped, QBUF of a queued buffer, DQBUF after the LAST
// buffer). Its "codec" writes a small header per frame so tests can read
// what came out: magic, sequence, keyframe byte, bitrate in force.
type fakeStatefulEncoderContract struct {
	mu sync.Mutex

	driver  string
	mplane  bool
	coded   []uint32
	raw     []uint32
	ctrls   map[uint32]bool // supported controls
	roundH  uint32          // height alignment (vicodec: 8 → 360 becomes 368)
	closed  bool
	opened  int
	notM2M  bool
	failReq map[uintptr]error // next ioctl of that kind fails once
	// errorFrame marks the coded frame of this sequence number as corrupt.
	errorFrame uint32
	stall      bool // never produce coded frames (a hung block)
	pollErr    bool

	capFmt, outFmt uint32
	w, h, bpl      uint32
	q              [2]*fakeQueue // 0 OUTPUT, 1 CAPTURE
	gop, bitrate   int32
	forceKey       bool
	sinceKey       int32
	frames         uint32
	draining       bool
	lastDone       bool // LAST buffer dequeued: DQBUF on CAPTURE says EPIPE
	needLast       bool // drain finished with no CAPTURE buffer queued: flag the next
	fresh          bool // a new stream starts with a keyframe

	// what tests assert
	log       []string
	bitrates  []int32
	keyForced int
	mapped    int
}

type fakeQueue struct {
	bufs      [][]byte
	queued    []int
	done      []buffer
	used      map[int]uint32
	ts        map[int]unix.Timeval
	streaming bool
}

const fakeMagic = 0xF4CE

func newFakeContract(driver string, mplane bool, coded ...uint32) *fakeStatefulEncoderContract {
	return &fakeStatefulEncoderContract{
		driver: driver, mplane: mplane, coded: coded, raw: []uint32{FourccYU12, FourccNV12},
		ctrls:  map[uint32]bool{cidGOPSize: true, cidBitrate: true, cidBitrateMode: true, cidForceKeyFrame: true, cidH264Profile: true, cidH264Level: true, cidH264IPeriod: true, cidRepeatSeqHeader: true},
		roundH: 1, failReq: map[uintptr]error{},
		q: [2]*fakeQueue{{used: map[int]uint32{}, ts: map[int]unix.Timeval{}}, {used: map[int]uint32{}, ts: map[int]unix.Timeval{}}},
	}
}

// install makes opener return this fake for every path.
func (f *fakeStatefulEncoderContract) install() func() {
	old, oldNodes := opener, nodes
	nodes = "/dev/null"
	opener = func(string) (device, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.opened++
		f.closed = false
		return f, nil
	}
	return func() { opener, nodes = old, oldNodes }
}

func (f *fakeStatefulEncoderContract) qIndex(typ uint32) (int, error) {
	switch {
	case !f.mplane && typ == typeVideoOutput, f.mplane && typ == typeVideoOutputMPlane:
		return 0, nil
	case !f.mplane && typ == typeVideoCapture, f.mplane && typ == typeVideoCaptureMPlane:
		return 1, nil
	}
	return 0, unix.EINVAL
}

func (f *fakeStatefulEncoderContract) ioctl(req uintptr, arg unsafe.Pointer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return unix.EBADF
	}
	if err, ok := f.failReq[req]; ok {
		delete(f.failReq, req)
		return err
	}
	f.log = append(f.log, ioctlName(req))
	switch req {
	case vidiocQuerycap:
		c := (*capability)(arg)
		copy(c.Driver[:], f.driver)
		copy(c.Card[:], f.driver)
		c.DeviceCaps = capStreaming | capVideoM2M
		if f.mplane {
			c.DeviceCaps = capStreaming | capVideoM2MMPlane
		}
		if f.notM2M {
			c.DeviceCaps = capStreaming | capVideoCapture
		}
		c.Capabilities = c.DeviceCaps | capDeviceCaps
	case vidiocEnumFmt:
		d := (*fmtdesc)(arg)
		qi, err := f.qIndex(d.Type)
		if err != nil {
			return err
		}
		l := f.raw
		if qi == 1 {
			l = f.coded
		}
		if int(d.Index) >= len(l) {
			return unix.EINVAL
		}
		d.PixelFormat = l[d.Index]
	case vidiocSFmt:
		fm := (*format)(arg)
		qi, err := f.qIndex(fm.Type)
		if err != nil {
			return err
		}
		if len(f.q[qi].bufs) > 0 {
			return unix.EBUSY // vb2: no format change with buffers allocated
		}
		var w, h, pf uint32
		if f.mplane {
			pm := fm.pixMP()
			w, h, pf = pm.Width, pm.Height, pm.PixelFormat
		} else {
			px := fm.pix()
			w, h, pf = px.Width, px.Height, px.PixelFormat
		}
		if qi == 1 {
			if !contains(f.coded, pf) {
				pf = f.coded[0]
			}
			f.capFmt = pf
			size := uint32(1 << 20)
			if f.mplane {
				fm.pixMP().PixelFormat, fm.pixMP().PlaneFmt[0].SizeImage = pf, size
			} else {
				fm.pix().PixelFormat, fm.pix().SizeImage = pf, size
			}
			return nil
		}
		if f.capFmt == 0 {
			// The encoder documentation: the coded format is set first.
			return unix.EINVAL
		}
		if !contains(f.raw, pf) {
			pf = f.raw[0]
		}
		h = (h + f.roundH - 1) / f.roundH * f.roundH
		f.outFmt, f.w, f.h, f.bpl = pf, w, h, w
		size := w * h * 3 / 2
		if f.mplane {
			pm := fm.pixMP()
			pm.Width, pm.Height, pm.PixelFormat, pm.NumPlanes = w, h, pf, 1
			pm.PlaneFmt[0].BytesPerLine, pm.PlaneFmt[0].SizeImage = w, size
		} else {
			px := fm.pix()
			px.Width, px.Height, px.PixelFormat, px.BytesPerLine, px.SizeImage = w, h, pf, w, size
		}
	case vidiocSParm:
	case vidiocSCtrl:
		c := (*control)(arg)
		if !f.ctrls[c.ID] {
			return unix.EINVAL
		}
		switch c.ID {
		case cidGOPSize:
			f.gop = c.Value
		case cidBitrate:
			f.bitrate = c.Value
			f.bitrates = append(f.bitrates, c.Value)
		case cidForceKeyFrame:
			f.forceKey = true
			f.keyForced++
		}
	case vidiocReqbufs:
		rb := (*requestBuffers)(arg)
		qi, err := f.qIndex(rb.Type)
		if err != nil {
			return err
		}
		q := f.q[qi]
		if q.streaming {
			return unix.EBUSY
		}
		if rb.Count == 0 {
			if f.mapped > 0 && len(q.bufs) > 0 {
				return unix.EBUSY // vb2: MMAP buffers still in use
			}
			q.bufs, q.queued, q.done = nil, nil, nil
			return nil
		}
		if len(q.bufs) > 0 {
			return unix.EBUSY
		}
		if (qi == 0 && f.outFmt == 0) || (qi == 1 && f.capFmt == 0) {
			return unix.EINVAL
		}
		size := 1 << 20
		if qi == 0 {
			size = int(f.bpl * f.h * 3 / 2)
		}
		q.bufs = make([][]byte, rb.Count)
		for i := range q.bufs {
			q.bufs[i] = make([]byte, size)
		}
	case vidiocQuerybuf:
		b := (*buffer)(arg)
		qi, err := f.qIndex(b.Type)
		if err != nil {
			return err
		}
		if int(b.Index) >= len(f.q[qi].bufs) {
			return unix.EINVAL
		}
		off := uint64(qi<<24 | int(b.Index)<<12)
		n := uint32(len(f.q[qi].bufs[b.Index]))
		if f.mplane {
			p := b.planes()
			p[0].M, p[0].Length = off, n
		} else {
			b.M, b.Length = off, n
		}
	case vidiocQbuf:
		b := (*buffer)(arg)
		qi, err := f.qIndex(b.Type)
		if err != nil {
			return err
		}
		q := f.q[qi]
		if int(b.Index) >= len(q.bufs) {
			return unix.EINVAL
		}
		for _, i := range q.queued {
			if i == int(b.Index) {
				return unix.EINVAL
			}
		}
		used := b.BytesUsed
		if f.mplane {
			used = b.planes()[0].BytesUsed
		}
		if qi == 0 && used == 0 {
			return unix.EINVAL // an empty raw frame is how old drivers were told to stop: refused
		}
		q.used[int(b.Index)] = used
		q.ts[int(b.Index)] = b.Timestamp
		q.queued = append(q.queued, int(b.Index))
		f.run()
	case vidiocDqbuf:
		b := (*buffer)(arg)
		qi, err := f.qIndex(b.Type)
		if err != nil {
			return err
		}
		q := f.q[qi]
		if qi == 1 && f.lastDone {
			return unix.EPIPE
		}
		if len(q.done) == 0 {
			return unix.EAGAIN
		}
		d := q.done[0]
		q.done = q.done[1:]
		var pl []plane
		if f.mplane {
			pl = b.planes()
		}
		*b = d
		if f.mplane {
			pl[0].BytesUsed = d.BytesUsed
			b.setPlanes(pl)
		}
		if qi == 1 && d.Flags&flagLast != 0 {
			f.lastDone = true
		}
	case vidiocStreamon:
		qi, err := f.qIndex(*(*uint32)(arg))
		if err != nil {
			return err
		}
		if len(f.q[qi].bufs) == 0 {
			return unix.EINVAL
		}
		if qi == 1 && !f.q[1].streaming {
			f.fresh = true
		}
		f.q[qi].streaming = true
		f.run()
	case vidiocStreamoff:
		qi, err := f.qIndex(*(*uint32)(arg))
		if err != nil {
			return err
		}
		q := f.q[qi]
		q.streaming, q.queued, q.done = false, nil, nil
		if qi == 1 {
			f.lastDone, f.needLast = false, false
		}
		f.draining = false
	case vidiocEncoderCmd:
		c := (*encoderCmd)(arg)
		if c.Cmd != encCmdStop {
			return unix.EINVAL
		}
		if !f.q[0].streaming || !f.q[1].streaming {
			return nil // the documentation: a no-op unless both queues stream
		}
		f.draining = true
		f.run()
	default:
		return unix.ENOTTY
	}
	return nil
}

// run encodes while an OUTPUT and a CAPTURE buffer are both queued and both
// queues stream; then finishes a drain.
func (f *fakeStatefulEncoderContract) run() {
	out, capq := f.q[0], f.q[1]
	if !out.streaming || !capq.streaming || f.stall {
		return
	}
	for len(out.queued) > 0 && len(capq.queued) > 0 {
		oi, ci := out.queued[0], capq.queued[0]
		out.queued, capq.queued = out.queued[1:], capq.queued[1:]
		f.frames++
		key := f.fresh || f.forceKey || (f.gop > 0 && f.sinceKey >= f.gop)
		f.forceKey, f.fresh = false, false
		if key {
			f.sinceKey = 0
		}
		f.sinceKey++
		dst := capq.bufs[ci]
		binary.LittleEndian.PutUint16(dst[0:], fakeMagic)
		binary.LittleEndian.PutUint32(dst[2:], f.frames)
		dst[6] = 0
		if key {
			dst[6] = 1
		}
		binary.LittleEndian.PutUint32(dst[7:], uint32(f.bitrate))
		dst[11] = out.bufs[oi][0] // first luma byte: proves the raw copy
		flags := uint32(0)
		if key {
			flags |= flagKeyFrame
		}
		if f.frames == f.errorFrame {
			flags |= flagError
		}
		ts := out.ts[oi]
		out.done = append(out.done, buffer{Index: uint32(oi), Type: f.typ(0), BytesUsed: out.used[oi], Memory: memoryMMAP})
		capq.done = append(capq.done, buffer{Index: uint32(ci), Type: f.typ(1), BytesUsed: 12, Flags: flags, Memory: memoryMMAP, Timestamp: ts, Sequence: f.frames})
	}
	if f.draining && len(out.queued) == 0 {
		if len(capq.done) > 0 {
			capq.done[len(capq.done)-1].Flags |= flagLast
			f.draining = false
		} else if len(capq.queued) > 0 {
			ci := capq.queued[0]
			capq.queued = capq.queued[1:]
			capq.done = append(capq.done, buffer{Index: uint32(ci), Type: f.typ(1), BytesUsed: 0, Flags: flagLast, Memory: memoryMMAP})
			f.draining = false
		}
	}
}

func (f *fakeStatefulEncoderContract) typ(qi int) uint32 {
	t := []uint32{typeVideoOutput, typeVideoCapture}[qi]
	if f.mplane {
		t = []uint32{typeVideoOutputMPlane, typeVideoCaptureMPlane}[qi]
	}
	return t
}

func (f *fakeStatefulEncoderContract) mmap(offset int64, length int) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	qi, i := int(offset>>24), int(offset>>12&0xfff)
	if qi > 1 || i >= len(f.q[qi].bufs) || len(f.q[qi].bufs[i]) != length {
		return nil, unix.EINVAL
	}
	f.mapped++
	return f.q[qi].bufs[i], nil
}

func (f *fakeStatefulEncoderContract) munmap([]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mapped == 0 {
		return unix.EINVAL
	}
	f.mapped--
	return nil
}

func (f *fakeStatefulEncoderContract) poll(events int16, timeoutMs int) (int16, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pollErr {
		return unix.POLLERR, nil
	}
	var rev int16
	if len(f.q[1].done) > 0 || f.lastDone {
		rev |= unix.POLLIN
	}
	if len(f.q[0].done) > 0 {
		rev |= unix.POLLOUT
	}
	return rev & (events | unix.POLLERR), nil
}

func (f *fakeStatefulEncoderContract) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return unix.EBADF
	}
	f.closed = true
	return nil
}

// released says what a clean teardown left behind, "" if nothing.
func (f *fakeStatefulEncoderContract) released() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.mapped != 0:
		return fmt.Sprintf("%d buffers still mapped", f.mapped)
	case f.q[0].streaming || f.q[1].streaming:
		return "a queue still streaming"
	case len(f.q[0].bufs) > 0 || len(f.q[1].bufs) > 0:
		return "buffers not freed (REQBUFS 0)"
	case !f.closed:
		return "device not closed"
	}
	return ""
}
