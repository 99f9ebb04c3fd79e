//go:build linux && (amd64 || arm64)

package v4l2m2m

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A camera that encodes H.264 itself: a UVC camera (uvcvideo) whose
// capture node offers V4L2_PIX_FMT_H264, such as a Logitech C920 (older
// firmware) or C930e. Its coded frames are read with the ordinary V4L2
// capture-streaming contract (Documentation/userspace-api/media/v4l/
// capture.rst, mmap streaming): set the format and frame interval, request
// and map buffers, queue them all, stream on, then dequeue one Annex-B
// access unit per buffer and queue the buffer again. The same ioctl layer
// as the memory-to-memory encoder serves both.
//
// What can be controlled depends on the driver: uvcvideo maps no codec
// controls for UVC 1.1 H.264 cameras, so forcing a keyframe and changing
// the bitrate are used only where the driver exposes
// V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME and V4L2_CID_MPEG_VIDEO_BITRATE
// (CameraInfo says which); docs/HARDWARE.md lists the consequences.

var (
	vidiocQueryctrl      = ioc(iocRW, 36, unsafe.Sizeof(queryCtrl{}))
	vidiocEnumFramesizes = ioc(iocRW, 74, unsafe.Sizeof(frmSizeEnum{}))
)

const (
	capMetaCapture = 0x00800000

	frmSizeDiscrete = 1

	ctrlFlagDisabled = 0x0001

	defaultCameraBufferCount = 4
)

type queryCtrl struct {
	ID, Type                        uint32
	Name                            [32]byte
	Minimum, Maximum, Step, Default int32
	Flags                           uint32
	Reserved                        [2]uint32
}

// frmSizeEnum is v4l2_frmsizeenum; the union is the discrete size or the
// stepwise range (min_w, max_w, step_w, min_h, max_h, step_h).
type frmSizeEnum struct {
	Index, PixelFormat, Type uint32
	Size                     [6]uint32
	Reserved                 [2]uint32
}

// Size is a frame size a camera offers.
type Size struct{ Width, Height int }

func (s Size) String() string { return fmt.Sprintf("%dx%d", s.Width, s.Height) }

// CameraInfo is a capture node as Inspect saw it.
type CameraInfo struct {
	Path, Driver, Card string
	Formats            []uint32 // what the capture queue offers
	// H264Sizes are the sizes offered as H.264 (discrete sizes; a stepwise
	// range is given by its smallest and largest).
	H264Sizes []Size
	// ForceKeyFrame and BitRate say whether the driver exposes those codec
	// controls.
	ForceKeyFrame, BitRate bool
}

// Label is how the unit names the camera: "<card>;<path>".
func (c CameraInfo) Label() string { return c.Card + ";" + c.Path }

// OffersH264 reports whether the camera encodes H.264 itself.
func (c CameraInfo) OffersH264() bool { return contains(c.Formats, FourccH264) }

// Offers reports whether the camera gives H.264 at w×h.
func (c CameraInfo) Offers(w, h int) bool {
	for _, s := range c.H264Sizes {
		if s.Width == w && s.Height == h {
			return true
		}
	}
	return false
}

// Controls says in words what the unit can steer on this camera.
func (c CameraInfo) Controls() string {
	key := "keyframe on request: no (the far end waits for the camera's own next IDR)"
	if c.ForceKeyFrame {
		key = "keyframe on request: yes"
	}
	br := "bitrate: fixed by the camera (congestion control cannot lower it)"
	if c.BitRate {
		br = "bitrate: set by the unit"
	}
	return key + "; " + br
}

// ErrNoH264Camera means no capture node on this machine gives H.264.
var ErrNoH264Camera = errors.New("no camera that encodes H.264 itself")

// FindCamera looks through /dev/video* for a capture node that offers
// H.264 and whose label contains want ("" for the first). The error says
// what each node is, so doctor can tell why pass-through is not used.
func FindCamera(want string) (CameraInfo, error) { return FindCameraIn(nodes, want) }

// FindCameraIn is FindCamera over the nodes matching glob.
func FindCameraIn(glob, want string) (CameraInfo, error) {
	paths := sortedNodes(glob)
	if len(paths) == 0 {
		return CameraInfo{}, fmt.Errorf("%w: no %s nodes", ErrNoH264Camera, glob)
	}
	var why []string
	for _, p := range paths {
		c, err := InspectCamera(p)
		if err != nil {
			why = append(why, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		if want != "" && !strings.Contains(c.Label(), want) {
			continue // another camera: not worth naming
		}
		if !c.OffersH264() {
			why = append(why, fmt.Sprintf("%s (%s, %s) gives %s, not H264", p, c.Driver, c.Card, fourccs(c.Formats)))
			continue
		}
		return c, nil
	}
	if want != "" && len(why) == 0 {
		return CameraInfo{}, fmt.Errorf("%w: no camera matches %q", ErrNoH264Camera, want)
	}
	return CameraInfo{}, fmt.Errorf("%w: %s", ErrNoH264Camera, strings.Join(why, "; "))
}

// InspectCamera reads what a capture node is: QUERYCAP, ENUM_FMT, the
// H.264 frame sizes (ENUM_FRAMESIZES) and which codec controls exist
// (QUERYCTRL). A node that is not a streaming single-planar capture device
// is an error.
func InspectCamera(path string) (CameraInfo, error) {
	dev, c, caps, err := openQuery(path)
	if err != nil {
		return CameraInfo{}, err
	}
	defer dev.close()
	info := CameraInfo{Path: path, Driver: cstr(c.Driver[:]), Card: cstr(c.Card[:])}
	switch {
	case caps&(capVideoM2M|capVideoM2MMPlane) != 0:
		return info, fmt.Errorf("%s is a memory-to-memory codec, not a camera", info.Driver)
	case caps&capMetaCapture != 0 && caps&capVideoCapture == 0:
		return info, fmt.Errorf("%s metadata node, not the picture", info.Driver)
	case caps&capVideoCapture == 0:
		return info, fmt.Errorf("%s is not a single-planar capture device", info.Driver)
	case caps&capStreaming == 0:
		return info, fmt.Errorf("%s cannot stream buffers", info.Driver)
	}
	info.Formats = enumFormats(dev, typeVideoCapture)
	if info.OffersH264() {
		info.H264Sizes = enumSizes(dev, FourccH264)
	}
	info.ForceKeyFrame = hasCtrl(dev, cidForceKeyFrame)
	info.BitRate = hasCtrl(dev, cidBitrate)
	return info, nil
}

func enumSizes(dev device, pf uint32) []Size {
	var out []Size
	for i := uint32(0); i < 64; i++ {
		fs := frmSizeEnum{Index: i, PixelFormat: pf}
		if dev.ioctl(vidiocEnumFramesizes, unsafe.Pointer(&fs)) != nil {
			break
		}
		if fs.Type != frmSizeDiscrete {
			// Continuous or stepwise: its ends.
			return append(out, Size{int(fs.Size[0]), int(fs.Size[3])}, Size{int(fs.Size[1]), int(fs.Size[4])})
		}
		out = append(out, Size{int(fs.Size[0]), int(fs.Size[1])})
	}
	return out
}

func hasCtrl(dev device, id uint32) bool {
	q := queryCtrl{ID: id}
	return dev.ioctl(vidiocQueryctrl, unsafe.Pointer(&q)) == nil && q.Flags&ctrlFlagDisabled == 0
}

// CameraParams configure a pass-through capture session.
type CameraParams struct {
	Info          CameraInfo
	Width, Height int
	FPS           int
	BitRate       int // bits/s; used only if the driver has the control
	Log           *slog.Logger
	// StallTimeout is how long a streaming camera may deliver nothing before
	// it counts as lost (default 3 s).
	StallTimeout time.Duration
}

// Unit is one coded access unit off the camera.
type Unit struct {
	Data     []byte // Annex-B
	KeyFrame bool   // holds an IDR slice
	Sequence uint32
}

// ErrCameraLost: the camera went away (unplugged, reset) or stopped
// delivering frames mid-call.
var ErrCameraLost = errors.New("camera lost")

// ErrNoControl: the driver does not expose that control.
var ErrNoControl = errors.New("the camera's driver has no such control")

// Camera is one open pass-through capture session. ReadUnit, Flush and
// Close may be called from different goroutines; ForceKeyFrame and
// SetBitRate are safe at any time.
type Camera struct {
	p    CameraParams
	log  *slog.Logger
	dev  device
	mu   sync.Mutex
	bufs []mapped
	last time.Time // when a unit was last delivered (stall detection)
	done bool
	// The last parameter sets seen (ParameterSets).
	sps, pps []byte

	// Stats for doctor and tests.
	Units, KeyFrames, Corrupt, Flushed int64
}

// OpenCamera sets the camera up for H.264 at w×h and starts streaming. On
// any error everything done so far is undone.
func OpenCamera(p CameraParams) (*Camera, error) {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.StallTimeout == 0 {
		p.StallTimeout = 3 * time.Second
	}
	dev, err := opener(p.Info.Path)
	if err != nil {
		return nil, fmt.Errorf("open camera %s: %w (may roomd open it? add the user to the video group)", p.Info.Path, err)
	}
	c := &Camera{p: p, log: p.Log.With("camera", p.Info.Path, "driver", p.Info.Driver), dev: dev}
	if err := c.setup(); err != nil {
		c.teardown()
		_ = dev.close()
		return nil, err
	}
	return c, nil
}

func (c *Camera) fail(op string, req uintptr, err error) error {
	if errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("camera %s (%s): %s: %s: %w: %w", c.p.Info.Path, c.p.Info.Driver, op, ioctlName(req), ErrCameraLost, err)
	}
	return fmt.Errorf("camera %s (%s): %s: %s: %w", c.p.Info.Path, c.p.Info.Driver, op, ioctlName(req), err)
}

func (c *Camera) setup() error {
	w, h := c.p.Width, c.p.Height
	var f format
	f.Type = typeVideoCapture
	px := f.pix()
	px.Width, px.Height, px.PixelFormat, px.Field = uint32(w), uint32(h), FourccH264, fieldNone
	if err := c.dev.ioctl(vidiocSFmt, unsafe.Pointer(&f)); err != nil {
		return c.fail("set format H264 "+Size{w, h}.String(), vidiocSFmt, err)
	}
	if px.PixelFormat != FourccH264 || px.Width != uint32(w) || px.Height != uint32(h) {
		return fmt.Errorf("camera %s (%s): asked for H264 %dx%d, the driver set %s %dx%d: pick a size from %v", c.p.Info.Path, c.p.Info.Driver, w, h, FourccString(px.PixelFormat), px.Width, px.Height, c.p.Info.H264Sizes)
	}
	if c.p.FPS > 0 {
		var sp streamParm
		sp.Type = typeVideoCapture
		// v4l2_captureparm has v4l2_outputparm's layout (capturemode and
		// readbuffers where outputmode and writebuffers are).
		cp := (*outputParm)(unsafe.Pointer(&sp.Parm[0]))
		cp.TimePerFrame = fract{1, uint32(c.p.FPS)}
		if err := c.dev.ioctl(vidiocSParm, unsafe.Pointer(&sp)); err != nil {
			c.log.Info("camera takes no frame interval", "fps", c.p.FPS, "err", err)
		} else if got := cp.TimePerFrame; got.Numerator != 0 && got.Denominator/got.Numerator != uint32(c.p.FPS) {
			c.log.Info("camera chose another frame rate", "asked", c.p.FPS, "interval", fmt.Sprintf("%d/%d", got.Numerator, got.Denominator))
		}
	}
	if c.p.BitRate > 0 && c.p.Info.BitRate {
		if err := c.setCtrl(cidBitrate, int32(c.p.BitRate)); err != nil {
			c.log.Info("camera refused the bitrate", "bps", c.p.BitRate, "err", err)
		}
	}
	rb := requestBuffers{Count: defaultCameraBufferCount, Type: typeVideoCapture, Memory: memoryMMAP}
	if err := c.dev.ioctl(vidiocReqbufs, unsafe.Pointer(&rb)); err != nil {
		return c.fail("allocate buffers", vidiocReqbufs, err)
	}
	if rb.Count == 0 {
		return fmt.Errorf("camera %s: driver gave no buffers", c.p.Info.Path)
	}
	for i := uint32(0); i < rb.Count; i++ {
		b := buffer{Index: i, Type: typeVideoCapture, Memory: memoryMMAP}
		if err := c.dev.ioctl(vidiocQuerybuf, unsafe.Pointer(&b)); err != nil {
			return c.fail("query buffer", vidiocQuerybuf, err)
		}
		mem, err := c.dev.mmap(int64(uint32(b.M)), int(b.Length))
		if err != nil {
			return fmt.Errorf("camera %s: mmap buffer %d: %w", c.p.Info.Path, i, err)
		}
		c.bufs = append(c.bufs, mapped{mem: mem, length: b.Length})
	}
	for i := range c.bufs {
		if err := c.queue(i); err != nil {
			return err
		}
	}
	t := uint32(typeVideoCapture)
	if err := c.dev.ioctl(vidiocStreamon, unsafe.Pointer(&t)); err != nil {
		return c.fail("stream on", vidiocStreamon, err)
	}
	c.last = time.Now()
	c.log.Info("camera streams H.264 (pass-through, no re-encode)", "card", c.p.Info.Card, "size", Size{w, h}.String(), "fps", c.p.FPS, "controls", c.p.Info.Controls())
	return nil
}

func (c *Camera) setCtrl(id uint32, v int32) error {
	ct := control{ID: id, Value: v}
	return c.dev.ioctl(vidiocSCtrl, unsafe.Pointer(&ct))
}

func (c *Camera) queue(i int) error {
	b := buffer{Index: uint32(i), Type: typeVideoCapture, Memory: memoryMMAP}
	if err := c.dev.ioctl(vidiocQbuf, unsafe.Pointer(&b)); err != nil {
		return c.fail("queue buffer", vidiocQbuf, err)
	}
	return nil
}

// dequeue takes one filled buffer; ok is false if none is ready.
func (c *Camera) dequeue() (b buffer, ok bool, err error) {
	b = buffer{Type: typeVideoCapture, Memory: memoryMMAP}
	if err := c.dev.ioctl(vidiocDqbuf, unsafe.Pointer(&b)); err != nil {
		if errors.Is(err, unix.EAGAIN) {
			return b, false, nil
		}
		return b, false, c.fail("take a frame", vidiocDqbuf, err)
	}
	return b, true, nil
}

// ReadUnit waits up to wait for the next access unit; ok is false if none
// came. A camera that is unplugged (ENODEV, POLLERR) or delivers nothing
// for StallTimeout is ErrCameraLost.
func (c *Camera) ReadUnit(wait time.Duration) (u Unit, ok bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return Unit{}, false, ErrClosed
	}
	deadline := time.Now().Add(wait)
	for {
		b, got, err := c.dequeue()
		if err != nil {
			return Unit{}, false, err
		}
		if got {
			used := b.BytesUsed
			if int(b.Index) >= len(c.bufs) || used > c.bufs[b.Index].length {
				return Unit{}, false, fmt.Errorf("camera %s: driver returned buffer %d with %d bytes: driver bug", c.p.Info.Path, b.Index, used)
			}
			var data []byte
			if b.Flags&flagError == 0 && used > 0 {
				data = append([]byte(nil), c.bufs[b.Index].mem[:used]...)
			}
			if err := c.queue(int(b.Index)); err != nil {
				return Unit{}, false, err
			}
			c.last = time.Now()
			if data == nil {
				// uvcvideo flags a frame whose USB transfer broke: drop it.
				c.Corrupt++
				continue
			}
			c.remember(data)
			u := Unit{Data: data, KeyFrame: b.Flags&flagKeyFrame != 0 || HasIDR(data), Sequence: b.Sequence}
			c.Units++
			if u.KeyFrame {
				c.KeyFrames++
			}
			return u, true, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			if time.Since(c.last) > c.p.StallTimeout {
				return Unit{}, false, fmt.Errorf("camera %s (%s): no frame for %s: %w", c.p.Info.Path, c.p.Info.Driver, c.p.StallTimeout, ErrCameraLost)
			}
			return Unit{}, false, nil
		}
		rev, err := c.dev.poll(unix.POLLIN, int(left.Milliseconds())+1)
		if err != nil {
			return Unit{}, false, fmt.Errorf("camera %s: poll: %w", c.p.Info.Path, err)
		}
		if rev&(unix.POLLERR|unix.POLLHUP) != 0 {
			// DQBUF says what happened (ENODEV: unplugged).
			if _, _, err := c.dequeue(); err != nil {
				return Unit{}, false, err
			}
			return Unit{}, false, fmt.Errorf("camera %s (%s): the driver reports an error on the device: %w", c.p.Info.Path, c.p.Info.Driver, ErrCameraLost)
		}
	}
}

// Flush takes back every frame the camera has finished but nobody read,
// unread, and queues its buffer again: after a gate was shut, what the
// camera captured meanwhile never leaves. Only its parameter sets (SPS,
// PPS: no picture in them) are kept, for ParameterSets. It returns how
// many frames it dropped.
func (c *Camera) Flush() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return 0, ErrClosed
	}
	n := 0
	for {
		b, ok, err := c.dequeue()
		if err != nil || !ok {
			c.Flushed += int64(n)
			c.last = time.Now()
			return n, err
		}
		if b.Flags&flagError == 0 && b.BytesUsed <= c.bufs[b.Index].length {
			c.remember(c.bufs[b.Index].mem[:b.BytesUsed])
		}
		if err := c.queue(int(b.Index)); err != nil {
			return n, err
		}
		n++
	}
}

// remember keeps the camera's last SPS and PPS (c.mu held).
func (c *Camera) remember(au []byte) {
	for _, nal := range NALUnits(au) {
		switch NALType(nal) {
		case NALSPS:
			c.sps = append(c.sps[:0], nal...)
		case NALPPS:
			c.pps = append(c.pps[:0], nal...)
		}
	}
}

// ParameterSets are the last SPS and PPS the camera sent (nil before any):
// some cameras send them only when streaming starts, and an IDR sent after
// the privacy slate needs them in front.
func (c *Camera) ParameterSets() (sps, pps []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.sps...), append([]byte(nil), c.pps...)
}

// CanForceKeyFrame reports whether ForceKeyFrame can work.
func (c *Camera) CanForceKeyFrame() bool { return c.p.Info.ForceKeyFrame }

// ForceKeyFrame asks the camera for an IDR next (ErrNoControl if the
// driver has no way to ask).
func (c *Camera) ForceKeyFrame() error {
	if !c.p.Info.ForceKeyFrame {
		return ErrNoControl
	}
	if err := c.setCtrl(cidForceKeyFrame, 1); err != nil {
		return c.fail("force a keyframe", vidiocSCtrl, err)
	}
	return nil
}

// SetBitRate changes the camera's bitrate (ErrNoControl if it has no such
// control: the camera's own rate then stands, whatever the network does).
func (c *Camera) SetBitRate(bps int) error {
	if !c.p.Info.BitRate {
		return ErrNoControl
	}
	if bps <= 0 {
		return fmt.Errorf("camera bitrate %d is not positive", bps)
	}
	if err := c.setCtrl(cidBitrate, int32(bps)); err != nil {
		return c.fail("set the bitrate", vidiocSCtrl, err)
	}
	return nil
}

func (c *Camera) teardown() {
	t := uint32(typeVideoCapture)
	if err := c.dev.ioctl(vidiocStreamoff, unsafe.Pointer(&t)); err != nil && !errors.Is(err, unix.EINVAL) {
		c.log.Debug("stream off", "err", err)
	}
	for _, m := range c.bufs {
		if err := c.dev.munmap(m.mem); err != nil {
			c.log.Warn("munmap", "err", err)
		}
	}
	c.bufs = nil
	rb := requestBuffers{Count: 0, Type: typeVideoCapture, Memory: memoryMMAP}
	if err := c.dev.ioctl(vidiocReqbufs, unsafe.Pointer(&rb)); err != nil {
		c.log.Debug("free buffers", "err", err)
	}
}

// Close stops streaming, releases the buffers and closes the node.
func (c *Camera) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	c.done = true
	c.teardown()
	if err := c.dev.close(); err != nil {
		return fmt.Errorf("close camera %s: %w", c.p.Info.Path, err)
	}
	return nil
}

// H.264 NAL unit types (ITU-T H.264 table 7-1).
const (
	NALSlice = 1
	NALIDR   = 5
	NALSEI   = 6
	NALSPS   = 7
	NALPPS   = 8
	NALAUD   = 9
)

// NALUnits splits an Annex-B access unit into its NAL units (without start
// codes).
func NALUnits(au []byte) [][]byte {
	var out [][]byte
	start := -1
	for i := 0; i+2 < len(au); {
		if au[i] == 0 && au[i+1] == 0 && au[i+2] == 1 {
			if start >= 0 {
				end := i
				for end > start && au[end-1] == 0 {
					end-- // the zero of a 4-byte start code, or trailing zeros
				}
				out = append(out, au[start:end])
			}
			i += 3
			start = i
			continue
		}
		i++
	}
	if start >= 0 && start < len(au) {
		out = append(out, au[start:])
	}
	return out
}

// NALType is the type of a NAL unit (without its start code).
func NALType(nal []byte) byte {
	if len(nal) == 0 {
		return 0
	}
	return nal[0] & 0x1f
}

// HasIDR reports whether an access unit holds an IDR slice.
func HasIDR(au []byte) bool {
	for _, n := range NALUnits(au) {
		if NALType(n) == NALIDR {
			return true
		}
	}
	return false
}
