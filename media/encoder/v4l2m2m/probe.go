//go:build linux && (amd64 || arm64)

package v4l2m2m

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"
)

// Device is a V4L2 memory-to-memory encoder found on this machine.
type Device struct {
	Path   string
	Driver string // e.g. "bcm2835-codec", "vicodec"
	Card   string
	MPlane bool     // multi-planar API (bcm2835-codec) or single-planar (vicodec's default)
	Coded  []uint32 // what its CAPTURE queue produces
	Raw    []uint32 // what its OUTPUT queue takes
}

func (d Device) String() string {
	var c, r []string
	for _, f := range d.Coded {
		c = append(c, FourccString(f))
	}
	for _, f := range d.Raw {
		r = append(r, FourccString(f))
	}
	return fmt.Sprintf("%s (%s: %s -> %s)", d.Path, d.Driver, strings.Join(r, ","), strings.Join(c, ","))
}

// ErrNotFound means no device on this machine encodes the wanted format.
var ErrNotFound = errors.New("no V4L2 memory-to-memory encoder")

// opener opens a device node and nodes are where Find looks; tests put the
// contract fake here.
var (
	opener = openKernel
	nodes  = "/dev/video*"
)

// Find looks through /dev/video* for a stateful encoder that produces coded
// (e.g. FourccH264) from YU12 or NV12. The error says what each node is, so
// doctor can tell an installer why the hardware encoder is not used.
func Find(coded uint32) (Device, error) { return FindIn(nodes, coded) }

// FindIn is Find over the nodes matching glob.
func FindIn(glob string, coded uint32) (Device, error) {
	paths := sortedNodes(glob)
	if len(paths) == 0 {
		return Device{}, fmt.Errorf("%w: no %s nodes (on a Pi 4 the H.264 block is /dev/video11: enable it with dtoverlay / a kernel that has bcm2835-codec)", ErrNotFound, glob)
	}
	var why []string
	for _, p := range paths {
		d, err := Inspect(p)
		if err != nil {
			why = append(why, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		if contains(d.Coded, FourccYU12) || contains(d.Coded, FourccNV12) {
			why = append(why, fmt.Sprintf("%s (%s) is a decoder or converter (it gives raw %s)", p, d.Driver, FourccString(d.Coded[0])))
			continue
		}
		if !contains(d.Coded, coded) {
			why = append(why, fmt.Sprintf("%s (%s) encodes %s, not %s", p, d.Driver, fourccs(d.Coded), FourccString(coded)))
			continue
		}
		if !contains(d.Raw, FourccYU12) && !contains(d.Raw, FourccNV12) {
			why = append(why, fmt.Sprintf("%s (%s) takes %s, not YU12 or NV12", p, d.Driver, fourccs(d.Raw)))
			continue
		}
		return d, nil
	}
	return Device{}, fmt.Errorf("%w for %s: %s", ErrNotFound, FourccString(coded), strings.Join(why, "; "))
}

// sortedNodes are the nodes matching glob, /dev/video2 before /dev/video11.
func sortedNodes(glob string) []string {
	paths, _ := filepath.Glob(glob)
	sort.Slice(paths, func(i, j int) bool { return nodeLess(paths[i], paths[j]) })
	return paths
}

// /dev/video2 before /dev/video11.
func nodeLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// Inspect reads what a node is (QUERYCAP, ENUM_FMT on both queues). A node
// that is not a streaming memory-to-memory device is an error.
func Inspect(path string) (Device, error) {
	dev, c, caps, err := openQuery(path)
	if err != nil {
		return Device{}, err
	}
	defer dev.close()
	d := Device{Path: path, Driver: cstr(c.Driver[:]), Card: cstr(c.Card[:])}
	switch {
	case caps&capVideoM2MMPlane != 0, caps&(capVideoCaptureMPlane|capVideoOutputMPlane) == capVideoCaptureMPlane|capVideoOutputMPlane:
		d.MPlane = true
	case caps&capVideoM2M != 0, caps&(capVideoCapture|capVideoOutput) == capVideoCapture|capVideoOutput:
	default:
		return d, fmt.Errorf("%s is not a memory-to-memory device (a camera or output)", d.Driver)
	}
	if caps&capStreaming == 0 {
		return d, fmt.Errorf("%s cannot stream buffers", d.Driver)
	}
	capType, outType := uint32(typeVideoCapture), uint32(typeVideoOutput)
	if d.MPlane {
		capType, outType = typeVideoCaptureMPlane, typeVideoOutputMPlane
	}
	d.Coded = enumFormats(dev, capType)
	d.Raw = enumFormats(dev, outType)
	return d, nil
}

// openQuery opens a node and asks what it is (QUERYCAP): caps are the
// node's own capabilities. On success the caller closes dev.
func openQuery(path string) (dev device, c capability, caps uint32, err error) {
	dev, err = opener(path)
	if err != nil {
		return nil, c, 0, fmt.Errorf("open: %w", err)
	}
	if err := dev.ioctl(vidiocQuerycap, unsafe.Pointer(&c)); err != nil {
		_ = dev.close()
		return nil, c, 0, fmt.Errorf("not a V4L2 device (QUERYCAP: %w)", err)
	}
	caps = c.Capabilities
	if caps&capDeviceCaps != 0 {
		caps = c.DeviceCaps
	}
	return dev, c, caps, nil
}

func enumFormats(dev device, typ uint32) []uint32 {
	var out []uint32
	for i := uint32(0); i < 64; i++ {
		fd := fmtdesc{Index: i, Type: typ}
		if dev.ioctl(vidiocEnumFmt, unsafe.Pointer(&fd)) != nil {
			break
		}
		out = append(out, fd.PixelFormat)
	}
	return out
}

func contains(l []uint32, f uint32) bool {
	for _, x := range l {
		if x == f {
			return true
		}
	}
	return false
}

func fourccs(l []uint32) string {
	if len(l) == 0 {
		return "nothing"
	}
	var s []string
	for _, f := range l {
		s = append(s, FourccString(f))
	}
	return strings.Join(s, ",")
}
