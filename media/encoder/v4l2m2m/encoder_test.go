//go:build linux && (amd64 || arm64)

package v4l2m2m

import (
	"encoding/binary"
	"errors"
	"image"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
	"golang.org/x/sys/unix"
)

// The C header's sizes on 64-bit Linux (printed by a C program including
// linux/videodev2.h): a wrong Go layout would corrupt kernel memory reads.
func TestStructLayoutsMatchTheKernelHeader(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"v4l2_capability", unsafe.Sizeof(capability{}), 104},
		{"v4l2_fmtdesc", unsafe.Sizeof(fmtdesc{}), 64},
		{"v4l2_format", unsafe.Sizeof(format{}), 208},
		{"v4l2_pix_format", unsafe.Sizeof(pixFormat{}), 48},
		{"v4l2_pix_format_mplane", unsafe.Sizeof(pixFormatMPlane{}), 192},
		{"v4l2_requestbuffers", unsafe.Sizeof(requestBuffers{}), 20},
		{"v4l2_buffer", unsafe.Sizeof(buffer{}), 88},
		{"v4l2_buffer.m", unsafe.Offsetof(buffer{}.M), 64},
		{"v4l2_plane", unsafe.Sizeof(plane{}), 64},
		{"v4l2_encoder_cmd", unsafe.Sizeof(encoderCmd{}), 40},
		{"v4l2_streamparm", unsafe.Sizeof(streamParm{}), 204},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d bytes, the kernel's is %d", c.name, c.got, c.want)
		}
	}
	if vidiocDqbuf != 0xc0585611 || vidiocSFmt != 0xc0d05605 || vidiocEncoderCmd != 0xc028564d {
		t.Errorf("ioctl numbers differ from linux/videodev2.h")
	}
}

// frames is a raw source: I420 w×h frames whose first luma byte is the
// frame number, and whose size may change after `switchAt` frames.
func frames(w, h int, n *atomic.Int32, switchAt int32, w2, h2 int) video.Reader {
	return video.ReaderFunc(func() (image.Image, func(), error) {
		i := n.Add(1)
		fw, fh := w, h
		if switchAt > 0 && i > switchAt {
			fw, fh = w2, h2
		}
		img := image.NewYCbCr(image.Rect(0, 0, fw, fh), image.YCbCrSubsampleRatio420)
		img.Y[0] = byte(i)
		return img, func() {}, nil
	})
}

type coded struct {
	seq     uint32
	key     bool
	bitrate uint32
	luma    byte
}

func decode(t *testing.T, f Frame) coded {
	t.Helper()
	if len(f.Data) < 12 || binary.LittleEndian.Uint16(f.Data) != fakeMagic {
		t.Fatalf("coded frame is not what the device produced: % x", f.Data)
	}
	c := coded{seq: binary.LittleEndian.Uint32(f.Data[2:]), key: f.Data[6] == 1, bitrate: binary.LittleEndian.Uint32(f.Data[7:]), luma: f.Data[11]}
	if c.key != f.KeyFrame {
		t.Fatalf("frame %d: keyframe flag %v, the device said %v", c.seq, f.KeyFrame, c.key)
	}
	return c
}

func build(t *testing.T, f *fakeStatefulEncoderContract, p Params, w, h int, src video.Reader) *Encoder {
	t.Helper()
	t.Cleanup(f.install())
	d, err := Find(FourccH264)
	if err != nil {
		t.Fatal(err)
	}
	p.Device = d
	rc, err := p.BuildVideoEncoder(src, prop.Media{Video: prop.Video{Width: w, Height: h, FrameRate: 30}})
	if err != nil {
		t.Fatal(err)
	}
	return rc.(*Encoder)
}

func TestFindSaysWhyEachNodeIsNotTheEncoder(t *testing.T) {
	cam := newFakeContract("vivid", false)
	cam.notM2M = true
	defer cam.install()()
	_, err := FindIn("/dev/null*", FourccH264)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "vivid is not a memory-to-memory device") {
		t.Errorf("a camera node: %v", err)
	}
	vic := newFakeContract("vicodec", false, FourccFWHT)
	defer vic.install()()
	_, err = FindIn("/dev/null*", FourccH264)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "(vicodec) encodes FWHT, not H264") {
		t.Errorf("an FWHT-only encoder asked for H.264: %v", err)
	}
	if d, err := FindIn("/dev/null*", FourccFWHT); err != nil || d.Driver != "vicodec" {
		t.Errorf("FWHT from vicodec: %v %v", d, err)
	}
	_, err = FindIn("/nonexistent/video*", FourccH264)
	if !strings.Contains(err.Error(), "/dev/video11") {
		t.Errorf("no nodes at all should point at the Pi's codec node: %v", err)
	}
}

func TestEncodesEveryFrameWithKeyframesOnTheGOP(t *testing.T) {
	for _, mplane := range []bool{false, true} {
		f := newFakeContract("bcm2835-codec", mplane, FourccH264)
		var n atomic.Int32
		e := build(t, f, Params{BitRate: 800_000, KeyFrameInterval: 5}, 64, 48, frames(64, 48, &n, 0, 0, 0))
		for i := 1; i <= 11; i++ {
			fr, err := e.ReadFrame()
			if err != nil {
				t.Fatalf("mplane=%v frame %d: %v", mplane, i, err)
			}
			c := decode(t, fr)
			if c.seq != uint32(i) || c.luma != byte(i) {
				t.Fatalf("mplane=%v: frame %d came out as device frame %d carrying raw frame %d", mplane, i, c.seq, c.luma)
			}
			if wantKey := i == 1 || i == 6 || i == 11; c.key != wantKey {
				t.Errorf("mplane=%v frame %d: keyframe %v, want %v (GOP 5)", mplane, i, c.key, wantKey)
			}
			if c.bitrate != 800_000 {
				t.Errorf("bitrate in force %d", c.bitrate)
			}
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if r := f.released(); r != "" {
			t.Errorf("mplane=%v: after Close: %s", mplane, r)
		}
	}
}

func TestKeyframeOnRequestAndBitrateAtRunTime(t *testing.T) {
	f := newFakeContract("bcm2835-codec", true, FourccH264)
	var n atomic.Int32
	e := build(t, f, Params{BitRate: 1_000_000, KeyFrameInterval: 100}, 64, 48, frames(64, 48, &n, 0, 0, 0))
	defer e.Close()
	for i := 0; i < 3; i++ {
		if _, err := e.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
	// What the congestion controller and a PLI reach through mediadevices.
	if err := e.Controller().(interface{ SetBitRate(int) error }).SetBitRate(400_000); err != nil {
		t.Fatal(err)
	}
	if err := e.Controller().(interface{ ForceKeyFrame() error }).ForceKeyFrame(); err != nil {
		t.Fatal(err)
	}
	fr, err := e.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	c := decode(t, fr)
	if !c.key || c.bitrate != 400_000 {
		t.Errorf("frame after a PLI and a lower target: key=%v bitrate=%d, want a keyframe at 400000", c.key, c.bitrate)
	}
	fr, _ = e.ReadFrame()
	if decode(t, fr).key {
		t.Error("the keyframe request stuck: the next frame is a keyframe too")
	}
	if e.SetBitRate(0) == nil {
		t.Error("a zero bitrate was accepted")
	}
}

func TestSourceChangeDrainsThenReinitialises(t *testing.T) {
	f := newFakeContract("bcm2835-codec", false, FourccH264)
	var n atomic.Int32
	e := build(t, f, Params{KeyFrameInterval: 100}, 64, 48, frames(64, 48, &n, 3, 32, 24))
	defer e.Close()
	var got []coded
	for i := 0; i < 6; i++ {
		fr, err := e.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i+1, err)
		}
		got = append(got, decode(t, fr))
	}
	for i, c := range got {
		if c.luma != byte(i+1) {
			t.Fatalf("frame %d carried raw frame %d: a frame was lost or reordered across the size change", i+1, c.luma)
		}
	}
	if !got[3].key {
		t.Error("the first frame at the new size is not a keyframe")
	}
	if f.w != 32 || f.h != 24 {
		t.Errorf("device left at %dx%d, want 32x24", f.w, f.h)
	}
	log := strings.Join(f.log, " ")
	i := strings.Index(log, "VIDIOC_ENCODER_CMD")
	if i < 0 || !strings.Contains(log[i:], "VIDIOC_STREAMOFF") || !strings.Contains(log[i:], "VIDIOC_S_FMT") {
		t.Errorf("size change did not drain, stop and set the format again: %s", log)
	}
}

func TestDrainOnCloseWaitsForTheLastBuffer(t *testing.T) {
	f := newFakeContract("bcm2835-codec", false, FourccH264)
	var n atomic.Int32
	e := build(t, f, Params{}, 64, 48, frames(64, 48, &n, 0, 0, 0))
	if _, err := e.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(f.log, " "), "VIDIOC_ENCODER_CMD") {
		t.Error("Close did not send V4L2_ENC_CMD_STOP")
	}
	if r := f.released(); r != "" {
		t.Error(r)
	}
	if _, err := e.ReadFrame(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
}

func TestCorruptFrameIsDroppedAndTheNextIsAKeyframe(t *testing.T) {
	f := newFakeContract("bcm2835-codec", false, FourccH264)
	f.errorFrame = 3
	var n atomic.Int32
	e := build(t, f, Params{KeyFrameInterval: 100}, 64, 48, frames(64, 48, &n, 0, 0, 0))
	defer e.Close()
	var seqs []uint32
	for i := 0; i < 4; i++ {
		fr, err := e.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		c := decode(t, fr)
		seqs = append(seqs, c.seq)
		if c.seq == 4 && !c.key {
			t.Error("frame after a corrupt one is not a keyframe")
		}
	}
	if seqs[2] != 4 || e.Errors.Load() != 1 {
		t.Errorf("frames %v, errors %d: want the corrupt frame 3 dropped", seqs, e.Errors.Load())
	}
}

func TestUnsupportedControlsAreNotFatal(t *testing.T) {
	f := newFakeContract("vicodec", false, FourccH264)
	f.ctrls = map[uint32]bool{cidGOPSize: true} // what vicodec has
	var n atomic.Int32
	e := build(t, f, Params{BitRate: 500_000, KeyFrameInterval: 10}, 64, 48, frames(64, 48, &n, 0, 0, 0))
	defer e.Close()
	_ = e.ForceKeyFrame()
	_ = e.SetBitRate(300_000)
	if _, err := e.ReadFrame(); err != nil {
		t.Fatalf("an encoder without bitrate or keyframe controls: %v", err)
	}
}

func TestEveryFailureTearsDownCleanly(t *testing.T) {
	cases := []struct {
		name    string
		setup   func(f *fakeStatefulEncoderContract)
		atOpen  bool
		wantErr string
	}{
		{"stream on refused", func(f *fakeStatefulEncoderContract) { f.failReq[vidiocStreamon] = unix.EIO }, true, "VIDIOC_STREAMON"},
		{"no buffers", func(f *fakeStatefulEncoderContract) { f.failReq[vidiocReqbufs] = unix.ENOMEM }, true, "VIDIOC_REQBUFS"},
		{"format refused", func(f *fakeStatefulEncoderContract) { f.failReq[vidiocSFmt] = unix.EINVAL }, true, "set coded format H264"},
		{"device error", func(f *fakeStatefulEncoderContract) { f.pollErr = true; f.stall = true }, false, "encoder is lost"},
		{"hung block", func(f *fakeStatefulEncoderContract) { f.stall = true }, false, "encoder is hung"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeContract("bcm2835-codec", true, FourccH264)
			c.setup(f)
			defer f.install()()
			d, err := Find(FourccH264)
			if err != nil {
				t.Fatal(err)
			}
			var n atomic.Int32
			e, err := Open(Params{Device: d, StallTimeout: 300 * time.Millisecond}, 64, 48)
			if c.atOpen {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Open: %v, want %q", err, c.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				e.src = frames(64, 48, &n, 0, 0, 0)
				_, err = e.ReadFrame()
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Read: %v, want %q", err, c.wantErr)
				}
				if _, err2 := e.ReadFrame(); err2 == nil || err2.Error() != err.Error() {
					t.Errorf("second Read after a fatal error: %v", err2)
				}
				_ = e.Close()
			}
			if r := f.released(); r != "" {
				t.Errorf("after the failure: %s", r)
			}
		})
	}
}

func TestEndOfSourceIsEOF(t *testing.T) {
	f := newFakeContract("bcm2835-codec", false, FourccH264)
	src := video.ReaderFunc(func() (image.Image, func(), error) { return nil, nil, io.EOF })
	e := build(t, f, Params{}, 64, 48, src)
	_, err := e.ReadFrame()
	if !errors.Is(err, io.EOF) {
		t.Errorf("end of the camera: %v", err)
	}
	_ = e.Close()
	if r := f.released(); r != "" {
		t.Error(r)
	}
}
