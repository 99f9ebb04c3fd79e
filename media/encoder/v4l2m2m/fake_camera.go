//go:build linux && (amd64 || arm64)

package v4l2m2m

import (
	"fmt"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FakeCamera is test support: a fake of the kernel's V4L2 capture-streaming
// contract for a compressed format (Documentation/userspace-api/media/v4l/
// capture.rst, mmap streaming, vb2 rules), shaped like uvcvideo with a UVC
// camera that offers YUYV, MJPG and H264. No real H.264 camera exists on
// the machines tests run on, and vivid outputs no H.264, so this stands in
// at the ioctl level: it sees the same structs the kernel sees and refuses
// what vb2 refuses (a format change with buffers allocated, REQBUFS while
// streaming or with buffers mapped, QBUF of a queued buffer, DQBUF while not
// streaming, STREAMON without buffers).
//
// Like a camera, it captures in real time: every frame interval while
// streaming it takes the next access unit from Source and puts it in the
// oldest queued buffer; with no buffer queued the frame is lost, as
// uvcvideo loses it. The first frame after STREAMON, every GOP-th frame
// and the frame after a FORCE_KEY_FRAME (when the control exists) are
// keyframes: Source is told so, and must then return an IDR.
//
// It is exported (and so compiled into this package) because the capture
// and daemon tests drive the pass-through path through it; nothing in the
// unit uses it.
type FakeCamera struct {
	Card     string
	Sizes    []Size
	Interval time.Duration // one frame every Interval
	GOP      int           // the camera's own keyframe period in frames (0: only the first)
	// ForceKeyFrame and BitRate expose those codec controls.
	ForceKeyFrame, BitRate bool
	// Source codes the next frame; key asks for an IDR.
	Source func(key bool) ([]byte, error)

	mu        sync.Mutex
	cond      *sync.Cond
	open      int
	unplugged bool
	w, h, pf  uint32
	bufs      [][]byte
	queued    []int
	done      []buffer
	streaming bool
	stop      chan struct{}
	wg        sync.WaitGroup
	forceKey  bool
	sinceKey  int
	seq       uint32
	mapped    int
	fps       uint32

	// What tests assert.
	Made, KeyFrames, Lost, Forced int
	Bitrates                      []int32
	SourceErr                     error
}

const (
	fakeYUYV = 'Y' | 'U'<<8 | 'Y'<<16 | 'V'<<24
	fakeMJPG = 'M' | 'J'<<8 | 'P'<<16 | 'G'<<24
)

func (f *FakeCamera) formats() []uint32 { return []uint32{fakeYUYV, fakeMJPG, FourccH264} }

// Install makes every /dev/video* look like this one camera at
// /dev/video0 until the returned function is called.
func (f *FakeCamera) Install() (restore func()) {
	f.mu.Lock()
	if f.cond == nil {
		f.cond = sync.NewCond(&f.mu)
	}
	if f.Interval == 0 {
		f.Interval = time.Second / 30
	}
	f.mu.Unlock()
	old, oldNodes := opener, nodes
	nodes = "/dev/null"
	opener = func(path string) (device, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.unplugged {
			return nil, unix.ENOENT
		}
		f.open++
		return &fakeCameraFD{f: f}, nil
	}
	return func() { opener, nodes = old, oldNodes }
}

// Unplug is the camera's USB cable pulled: every ioctl on an open node
// says ENODEV from now on, poll says POLLERR|POLLHUP, and the node is gone.
func (f *FakeCamera) Unplug() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unplugged = true
	f.stopSensor()
	f.cond.Broadcast()
}

// Released says what a clean close left behind, "" if nothing.
func (f *FakeCamera) Released() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.mapped != 0:
		return fmt.Sprintf("%d buffers still mapped", f.mapped)
	case f.streaming:
		return "still streaming"
	case len(f.bufs) > 0 && !f.unplugged:
		return "buffers not freed (REQBUFS 0)"
	case f.open != 0:
		return fmt.Sprintf("%d file descriptors open", f.open)
	}
	return ""
}

// Stats returns Made, KeyFrames, Lost and Forced under the lock.
func (f *FakeCamera) Stats() (made, keys, lost, forced int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Made, f.KeyFrames, f.Lost, f.Forced
}

// fakeCameraFD is one open file description of the fake.
type fakeCameraFD struct {
	f      *FakeCamera
	closed bool
}

// ioctl reads better whole: one case per request code, like a driver's table, to hold against the V4L2 spec.
func (d *fakeCameraFD) ioctl(req uintptr, arg unsafe.Pointer) error {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.closed {
		return unix.EBADF
	}
	if f.unplugged {
		return unix.ENODEV // v4l2-dev: the video device is no longer registered
	}
	switch req {
	case vidiocQuerycap:
		c := (*capability)(arg)
		copy(c.Driver[:], "uvcvideo")
		copy(c.Card[:], f.Card)
		copy(c.BusInfo[:], "usb-0000:00:14.0-1")
		c.DeviceCaps = capStreaming | capVideoCapture
		c.Capabilities = c.DeviceCaps | capMetaCapture | capDeviceCaps
	case vidiocEnumFmt:
		fd := (*fmtdesc)(arg)
		if fd.Type != typeVideoCapture || int(fd.Index) >= len(f.formats()) {
			return unix.EINVAL
		}
		fd.PixelFormat = f.formats()[fd.Index]
	case vidiocEnumFramesizes:
		fs := (*frmSizeEnum)(arg)
		if !contains(f.formats(), fs.PixelFormat) || int(fs.Index) >= len(f.Sizes) {
			return unix.EINVAL
		}
		s := f.Sizes[fs.Index]
		fs.Type, fs.Size[0], fs.Size[1] = frmSizeDiscrete, uint32(s.Width), uint32(s.Height)
	case vidiocQueryctrl:
		q := (*queryCtrl)(arg)
		switch {
		case q.ID == cidForceKeyFrame && f.ForceKeyFrame:
			copy(q.Name[:], "Force Key Frame")
		case q.ID == cidBitrate && f.BitRate:
			copy(q.Name[:], "Video Bitrate")
			q.Minimum, q.Maximum, q.Step, q.Default = 64000, 20000000, 1, 3000000
		default:
			return unix.EINVAL
		}
	case vidiocSCtrl:
		c := (*control)(arg)
		switch {
		case c.ID == cidForceKeyFrame && f.ForceKeyFrame:
			f.forceKey = true
			f.Forced++
		case c.ID == cidBitrate && f.BitRate:
			f.Bitrates = append(f.Bitrates, c.Value)
		default:
			return unix.EINVAL
		}
	case vidiocSFmt:
		fm := (*format)(arg)
		if fm.Type != typeVideoCapture {
			return unix.EINVAL
		}
		if len(f.bufs) > 0 {
			return unix.EBUSY
		}
		px := fm.pix()
		if !contains(f.formats(), px.PixelFormat) {
			px.PixelFormat = f.formats()[0]
		}
		// uvcvideo takes the offered size nearest the one asked for.
		best, bestD := f.Sizes[0], -1
		for _, s := range f.Sizes {
			d := abs(s.Width-int(px.Width)) + abs(s.Height-int(px.Height))
			if bestD < 0 || d < bestD {
				best, bestD = s, d
			}
		}
		px.Width, px.Height, px.Field = uint32(best.Width), uint32(best.Height), fieldNone
		px.BytesPerLine, px.SizeImage = 0, uint32(best.Width*best.Height) // a bound for one coded frame
		f.w, f.h, f.pf = px.Width, px.Height, px.PixelFormat
	case vidiocSParm:
		sp := (*streamParm)(arg)
		if sp.Type != typeVideoCapture {
			return unix.EINVAL
		}
		cp := (*outputParm)(unsafe.Pointer(&sp.Parm[0]))
		if cp.TimePerFrame.Numerator > 0 {
			f.fps = cp.TimePerFrame.Denominator / cp.TimePerFrame.Numerator
		}
	case vidiocReqbufs:
		rb := (*requestBuffers)(arg)
		if rb.Type != typeVideoCapture || rb.Memory != memoryMMAP {
			return unix.EINVAL
		}
		if f.streaming {
			return unix.EBUSY
		}
		if rb.Count == 0 {
			if f.mapped > 0 {
				return unix.EBUSY // vb2: MMAP buffers still in use
			}
			f.bufs, f.queued, f.done = nil, nil, nil
			return nil
		}
		if len(f.bufs) > 0 || f.pf == 0 {
			return unix.EBUSY
		}
		f.bufs = make([][]byte, rb.Count)
		for i := range f.bufs {
			f.bufs[i] = make([]byte, f.w*f.h)
		}
	case vidiocQuerybuf:
		b := (*buffer)(arg)
		if int(b.Index) >= len(f.bufs) {
			return unix.EINVAL
		}
		b.M, b.Length = uint64(b.Index)<<12, uint32(len(f.bufs[b.Index]))
	case vidiocQbuf:
		b := (*buffer)(arg)
		if b.Type != typeVideoCapture || int(b.Index) >= len(f.bufs) {
			return unix.EINVAL
		}
		for _, i := range f.queued {
			if i == int(b.Index) {
				return unix.EINVAL
			}
		}
		for _, x := range f.done {
			if x.Index == b.Index {
				return unix.EINVAL
			}
		}
		f.queued = append(f.queued, int(b.Index))
	case vidiocDqbuf:
		b := (*buffer)(arg)
		if !f.streaming {
			return unix.EINVAL
		}
		if len(f.done) == 0 {
			return unix.EAGAIN
		}
		*b = f.done[0]
		f.done = f.done[1:]
	case vidiocStreamon:
		if *(*uint32)(arg) != typeVideoCapture || len(f.bufs) == 0 {
			return unix.EINVAL
		}
		if !f.streaming {
			f.streaming, f.sinceKey = true, -1
			f.stop = make(chan struct{})
			f.wg.Add(1)
			go f.sensor(f.stop)
		}
	case vidiocStreamoff:
		if *(*uint32)(arg) != typeVideoCapture {
			return unix.EINVAL
		}
		f.stopSensor()
		f.queued, f.done = nil, nil
	default:
		return unix.ENOTTY
	}
	return nil
}

// stopSensor ends streaming; called with f.mu held.
func (f *FakeCamera) stopSensor() {
	if !f.streaming {
		return
	}
	f.streaming = false
	close(f.stop)
	f.mu.Unlock()
	f.wg.Wait()
	f.mu.Lock()
}

// sensor captures one frame per interval while streaming.
func (f *FakeCamera) sensor(stop chan struct{}) {
	defer f.wg.Done()
	t := time.NewTicker(f.Interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		f.mu.Lock()
		key := f.sinceKey < 0 || f.forceKey || (f.GOP > 0 && f.sinceKey >= f.GOP-1)
		f.mu.Unlock()
		// Code outside the lock: an encoder can take a while.
		au, err := f.Source(key)
		f.mu.Lock()
		if !f.streaming || f.unplugged {
			f.mu.Unlock()
			return
		}
		if err != nil {
			f.SourceErr = err
			f.mu.Unlock()
			continue
		}
		f.seq++
		f.Made++
		if key {
			f.KeyFrames++
			f.forceKey, f.sinceKey = false, 0
		} else {
			f.sinceKey++
		}
		if len(f.queued) == 0 || len(au) > len(f.bufs[0]) {
			f.Lost++ // no buffer to put it in: gone, as in uvcvideo
			f.mu.Unlock()
			continue
		}
		i := f.queued[0]
		f.queued = f.queued[1:]
		n := copy(f.bufs[i], au)
		flags := uint32(0)
		if key {
			flags = flagKeyFrame
		}
		f.done = append(f.done, buffer{Index: uint32(i), Type: typeVideoCapture, Memory: memoryMMAP, BytesUsed: uint32(n), Flags: flags, Field: fieldNone, Sequence: f.seq})
		f.cond.Broadcast()
		f.mu.Unlock()
	}
}

func (d *fakeCameraFD) mmap(offset int64, length int) ([]byte, error) {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	i := int(offset >> 12)
	if i >= len(f.bufs) || len(f.bufs[i]) != length {
		return nil, unix.EINVAL
	}
	f.mapped++
	return f.bufs[i], nil
}

func (d *fakeCameraFD) munmap([]byte) error {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mapped == 0 {
		return unix.EINVAL
	}
	f.mapped--
	return nil
}

func (d *fakeCameraFD) poll(events int16, timeoutMs int) (int16, error) {
	f := d.f
	deadline := time.Now().Add(time.Duration(timeoutMs) * time.Millisecond)
	// Wake the condition wait at the deadline.
	t := time.AfterFunc(time.Until(deadline), func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer t.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.unplugged {
			return unix.POLLERR | unix.POLLHUP, nil
		}
		if len(f.done) > 0 {
			return unix.POLLIN & events, nil
		}
		if !time.Now().Before(deadline) {
			return 0, nil
		}
		f.cond.Wait()
	}
}

func (d *fakeCameraFD) close() error {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.closed {
		return unix.EBADF
	}
	d.closed = true
	f.open--
	// Closing the last descriptor ends streaming and frees the queue (vb2).
	if f.open == 0 {
		f.stopSensor()
		f.queued, f.done = nil, nil
		if f.mapped == 0 {
			f.bufs = nil
		}
	}
	return nil
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
