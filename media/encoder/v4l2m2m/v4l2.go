//go:build linux && (amd64 || arm64)

package v4l2m2m

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The slice of the V4L2 UAPI (linux/videodev2.h) that a stateful encoder
// needs. Layouts are those of 64-bit kernels (the Pi 4 runs 64-bit Raspberry
// Pi OS; x86-64 for the lab): the build tag keeps 32-bit ARM, whose
// v4l2_buffer differs, from compiling a wrong layout. Sizes are checked in
// v4l2_test.go against the C header's.

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 'V'<<8 | nr }

const (
	iocW  = 1
	iocR  = 2
	iocRW = iocR | iocW
)

var (
	vidiocQuerycap   = ioc(iocR, 0, unsafe.Sizeof(capability{}))
	vidiocEnumFmt    = ioc(iocRW, 2, unsafe.Sizeof(fmtdesc{}))
	vidiocGFmt       = ioc(iocRW, 4, unsafe.Sizeof(format{}))
	vidiocSFmt       = ioc(iocRW, 5, unsafe.Sizeof(format{}))
	vidiocReqbufs    = ioc(iocRW, 8, unsafe.Sizeof(requestBuffers{}))
	vidiocQuerybuf   = ioc(iocRW, 9, unsafe.Sizeof(buffer{}))
	vidiocQbuf       = ioc(iocRW, 15, unsafe.Sizeof(buffer{}))
	vidiocDqbuf      = ioc(iocRW, 17, unsafe.Sizeof(buffer{}))
	vidiocStreamon   = ioc(iocW, 18, 4)
	vidiocStreamoff  = ioc(iocW, 19, 4)
	vidiocSParm      = ioc(iocRW, 22, unsafe.Sizeof(streamParm{}))
	vidiocSCtrl      = ioc(iocRW, 28, unsafe.Sizeof(control{}))
	vidiocEncoderCmd = ioc(iocRW, 77, unsafe.Sizeof(encoderCmd{}))
)

// Buffer types, memory, capabilities, flags.
const (
	typeVideoCapture       = 1
	typeVideoOutput        = 2
	typeVideoCaptureMPlane = 9
	typeVideoOutputMPlane  = 10

	memoryMMAP = 1

	capVideoCaptureMPlane = 0x00001000
	capVideoOutputMPlane  = 0x00002000
	capVideoM2MMPlane     = 0x00004000
	capVideoM2M           = 0x00008000
	capVideoCapture       = 0x00000001
	capVideoOutput        = 0x00000002
	capStreaming          = 0x04000000
	capDeviceCaps         = 0x80000000

	flagKeyFrame = 0x00000008
	flagError    = 0x00000040
	flagLast     = 0x00100000

	fieldNone = 1

	encCmdStop = 1
)

// Pixel formats (fourcc).
const (
	FourccH264 = 'H' | '2'<<8 | '6'<<16 | '4'<<24
	FourccFWHT = 'F' | 'W'<<8 | 'H'<<16 | 'T'<<24
	FourccYU12 = 'Y' | 'U'<<8 | '1'<<16 | '2'<<24
	FourccNV12 = 'N' | 'V'<<8 | '1'<<16 | '2'<<24
)

// FourccString writes a fourcc the way v4l2-ctl does.
func FourccString(f uint32) string {
	return string([]byte{byte(f), byte(f >> 8), byte(f >> 16), byte(f >> 24)})
}

// Codec controls (V4L2_CID_MPEG_VIDEO_*, class CODEC).
const (
	cidGOPSize         = 0x9909cb
	cidBitrateMode     = 0x9909ce
	cidBitrate         = 0x9909cf
	cidRepeatSeqHeader = 0x9909e2
	cidForceKeyFrame   = 0x9909e5
	cidH264IPeriod     = 0x990a66
	cidH264Level       = 0x990a67
	cidH264Profile     = 0x990a6b

	bitrateModeCBR            = 1
	h264ProfileBaseline       = 0
	h264ProfileConstrainedBP  = 1
	h264Level31               = 9
	defaultCaptureBufferCount = 4
	defaultOutputBufferCount  = 4
)

type capability struct {
	Driver       [16]byte
	Card         [32]byte
	BusInfo      [32]byte
	Version      uint32
	Capabilities uint32
	DeviceCaps   uint32
	Reserved     [3]uint32
}

type fmtdesc struct {
	Index       uint32
	Type        uint32
	Flags       uint32
	Description [32]byte
	PixelFormat uint32
	MbusCode    uint32
	Reserved    [3]uint32
}

type format struct {
	Type uint32
	_    uint32 // the union holds pointers: 8-byte aligned
	Fmt  [200]byte
}

type pixFormat struct {
	Width, Height, PixelFormat, Field, BytesPerLine, SizeImage, Colorspace, Priv, Flags, YcbcrEnc, Quantization, XferFunc uint32
}

type planePixFormat struct {
	SizeImage    uint32
	BytesPerLine uint32
	Reserved     [6]uint16
}

type pixFormatMPlane struct {
	Width, Height, PixelFormat, Field, Colorspace uint32
	PlaneFmt                                      [8]planePixFormat
	NumPlanes, Flags, YcbcrEnc, Quantization      uint8
	XferFunc                                      uint8
	Reserved                                      [7]uint8
}

func (f *format) pix() *pixFormat         { return (*pixFormat)(unsafe.Pointer(&f.Fmt[0])) }
func (f *format) pixMP() *pixFormatMPlane { return (*pixFormatMPlane)(unsafe.Pointer(&f.Fmt[0])) }

type requestBuffers struct {
	Count, Type, Memory, Capabilities uint32
	Flags                             uint8
	Reserved                          [3]uint8
}

type buffer struct {
	Index, Type, BytesUsed, Flags, Field uint32
	_                                    uint32
	Timestamp                            unix.Timeval
	Timecode                             [16]byte
	Sequence, Memory                     uint32
	// M is the union: the mmap offset for single-planar buffers, a
	// *[n]plane for multi-planar ones (see setPlanes/planes).
	M         uint64
	Length    uint32
	Reserved2 uint32
	RequestFD int32
	_         uint32
}

// setPlanes stores a pointer to p in the union: the kernel reads it as
// struct v4l2_plane *. The caller keeps p alive across the ioctl.
func (b *buffer) setPlanes(p []plane) {
	*(*unsafe.Pointer)(unsafe.Pointer(&b.M)) = unsafe.Pointer(&p[0])
	b.Length = uint32(len(p))
}

// planes reads back what setPlanes stored (used by the contract fake).
func (b *buffer) planes() []plane {
	p := *(*unsafe.Pointer)(unsafe.Pointer(&b.M))
	return unsafe.Slice((*plane)(p), b.Length)
}

type plane struct {
	BytesUsed  uint32
	Length     uint32
	M          uint64 // mem_offset for MMAP
	DataOffset uint32
	Reserved   [11]uint32
}

type control struct {
	ID    uint32
	Value int32
}

type encoderCmd struct {
	Cmd   uint32
	Flags uint32
	Data  [8]uint32
}

type fract struct{ Numerator, Denominator uint32 }

type outputParm struct {
	Capability, OutputMode uint32
	TimePerFrame           fract
	ExtendedMode           uint32
	WriteBuffers           uint32
	Reserved               [4]uint32
}

type streamParm struct {
	Type uint32
	Parm [200]byte
}

// device is an open V4L2 node: the kernel, or the contract fake in tests.
type device interface {
	ioctl(req uintptr, arg unsafe.Pointer) error
	mmap(offset int64, length int) ([]byte, error)
	munmap(b []byte) error
	// poll waits for events (unix.POLLIN: a CAPTURE buffer is done;
	// unix.POLLOUT: an OUTPUT buffer is free again) and returns revents.
	poll(events int16, timeoutMs int) (int16, error)
	close() error
}

// kernelDevice is a /dev/video* node.
type kernelDevice struct{ fd int }

func openKernel(path string) (device, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &kernelDevice{fd: fd}, nil
}

func (d *kernelDevice) ioctl(req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), req, uintptr(arg))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

func (d *kernelDevice) mmap(offset int64, length int) ([]byte, error) {
	return unix.Mmap(d.fd, offset, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

func (d *kernelDevice) munmap(b []byte) error { return unix.Munmap(b) }

func (d *kernelDevice) poll(events int16, timeoutMs int) (int16, error) {
	fds := []unix.PollFd{{Fd: int32(d.fd), Events: events}}
	for {
		n, err := unix.Poll(fds, timeoutMs)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, nil
		}
		return fds[0].Revents, nil
	}
}

func (d *kernelDevice) close() error { return unix.Close(d.fd) }

func ioctlName(req uintptr) string {
	switch req {
	case vidiocQuerycap:
		return "VIDIOC_QUERYCAP"
	case vidiocEnumFmt:
		return "VIDIOC_ENUM_FMT"
	case vidiocGFmt:
		return "VIDIOC_G_FMT"
	case vidiocSFmt:
		return "VIDIOC_S_FMT"
	case vidiocReqbufs:
		return "VIDIOC_REQBUFS"
	case vidiocQuerybuf:
		return "VIDIOC_QUERYBUF"
	case vidiocQbuf:
		return "VIDIOC_QBUF"
	case vidiocDqbuf:
		return "VIDIOC_DQBUF"
	case vidiocStreamon:
		return "VIDIOC_STREAMON"
	case vidiocStreamoff:
		return "VIDIOC_STREAMOFF"
	case vidiocSParm:
		return "VIDIOC_S_PARM"
	case vidiocSCtrl:
		return "VIDIOC_S_CTRL"
	case vidiocEncoderCmd:
		return "VIDIOC_ENCODER_CMD"
	case vidiocQueryctrl:
		return "VIDIOC_QUERYCTRL"
	case vidiocEnumFramesizes:
		return "VIDIOC_ENUM_FRAMESIZES"
	}
	return fmt.Sprintf("ioctl %#x", req)
}

func cstr(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
