//go:build linux && (amd64 || arm64)

package v4l2m2m

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestCameraStructLayoutsMatchTheKernelHeader(t *testing.T) {
	if s := unsafe.Sizeof(queryCtrl{}); s != 68 {
		t.Errorf("v4l2_queryctrl: %d bytes, the kernel's is 68", s)
	}
	if s := unsafe.Sizeof(frmSizeEnum{}); s != 44 {
		t.Errorf("v4l2_frmsizeenum: %d bytes, the kernel's is 44", s)
	}
	if vidiocQueryctrl != 0xc0445624 || vidiocEnumFramesizes != 0xc02c564a {
		t.Errorf("ioctl numbers differ from linux/videodev2.h: %#x %#x", vidiocQueryctrl, vidiocEnumFramesizes)
	}
}

// syntheticH264 codes nothing: it gives Annex-B units shaped like a
// camera's (SPS, PPS and IDR on a keyframe, a P slice otherwise), which is
// all this package looks at. Real H.264 goes through the capture tests.
func syntheticH264(key bool) ([]byte, error) {
	if key {
		return []byte{0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00}, nil
	}
	return []byte{0, 0, 0, 1, 0x41, 0x9a, 0x02, 0x03}, nil
}

func newFakeCamera(forceKey, bitrate bool) *FakeCamera {
	return &FakeCamera{Card: "HD Pro Webcam C920", Sizes: []Size{{640, 360}, {1280, 720}}, Interval: 5 * time.Millisecond, GOP: 1000,
		ForceKeyFrame: forceKey, BitRate: bitrate, Source: syntheticH264}
}

func TestNALUnits(t *testing.T) {
	k, _ := syntheticH264(true)
	var types []byte
	for _, n := range NALUnits(k) {
		types = append(types, NALType(n))
	}
	if !bytes.Equal(types, []byte{NALSPS, NALPPS, NALIDR}) || !HasIDR(k) {
		t.Errorf("NAL types %v", types)
	}
	p, _ := syntheticH264(false)
	if HasIDR(p) || len(NALUnits([]byte{0, 0, 1, 0x41, 1, 0, 0, 1, 0x41, 2})) != 2 {
		t.Errorf("a P frame read as IDR, or 3-byte start codes not split")
	}
}

func TestFindCameraSaysWhyANodeIsNotUsed(t *testing.T) {
	cam := newFakeCamera(false, false)
	defer cam.Install()()
	c, err := FindCamera("")
	if err != nil || c.Path != "/dev/null" || c.Driver != "uvcvideo" || !c.Offers(1280, 720) || c.Offers(1920, 1080) {
		t.Fatalf("%+v %v", c, err)
	}
	if c.ForceKeyFrame || c.BitRate || !strings.Contains(c.Controls(), "congestion control cannot lower it") {
		t.Errorf("controls the driver does not have: %s", c.Controls())
	}
	if _, err := FindCamera("C920"); err != nil {
		t.Errorf("by card name: %v", err)
	}
	if _, err := FindCamera("Brio"); !errors.Is(err, ErrNoH264Camera) || !strings.Contains(err.Error(), `no camera matches "Brio"`) {
		t.Errorf("another camera: %v", err)
	}
	vivid := newFakeContract("vivid", false)
	vivid.notM2M = true
	defer vivid.install()()
	if _, err := FindCamera(""); !errors.Is(err, ErrNoH264Camera) || !strings.Contains(err.Error(), "(vivid, vivid) gives nothing, not H264") {
		t.Errorf("a raw-only camera: %v", err)
	}
	m2m := newFakeContract("bcm2835-codec", true, FourccH264)
	defer m2m.install()()
	if _, err := FindCamera(""); !strings.Contains(err.Error(), "memory-to-memory codec, not a camera") {
		t.Errorf("the Pi's codec node: %v", err)
	}
}

func openFake(t *testing.T, cam *FakeCamera, w, h int) *Camera {
	t.Helper()
	t.Cleanup(cam.Install())
	info, err := FindCamera("")
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenCamera(CameraParams{Info: info, Width: w, Height: h, FPS: 30, BitRate: 2_000_000})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readUnit(t *testing.T, c *Camera) Unit {
	t.Helper()
	for i := 0; i < 100; i++ {
		u, ok, err := c.ReadUnit(50 * time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return u
		}
	}
	t.Fatal("no unit from the camera in 5 s")
	return Unit{}
}

func TestCameraStreamsUnitsAndForcesKeyframes(t *testing.T) {
	fake := newFakeCamera(true, true)
	c := openFake(t, fake, 1280, 720)
	if u := readUnit(t, c); !u.KeyFrame || !HasIDR(u.Data) {
		t.Fatalf("the first unit after STREAMON is not the IDR: % x", u.Data)
	}
	for i := 0; i < 5; i++ {
		if u := readUnit(t, c); u.KeyFrame {
			t.Fatalf("unit %d is a keyframe with a GOP of 1000", i)
		}
	}
	if err := c.ForceKeyFrame(); err != nil {
		t.Fatal(err)
	}
	key := false
	for i := 0; i < 10 && !key; i++ {
		key = readUnit(t, c).KeyFrame
	}
	if !key {
		t.Error("no keyframe after FORCE_KEY_FRAME")
	}
	if err := c.SetBitRate(800_000); err != nil {
		t.Fatal(err)
	}
	if fake.Bitrates[0] != 2_000_000 || fake.Bitrates[1] != 800_000 {
		t.Errorf("bitrates set: %v", fake.Bitrates)
	}
	time.Sleep(30 * time.Millisecond) // the camera fills every queued buffer
	if n, err := c.Flush(); err != nil || n == 0 {
		t.Errorf("flush: %d dropped, %v", n, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if s := fake.Released(); s != "" {
		t.Errorf("after Close: %s", s)
	}
	if _, _, err := c.ReadUnit(time.Millisecond); !errors.Is(err, ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
}

func TestCameraWithoutCodecControls(t *testing.T) {
	c := openFake(t, newFakeCamera(false, false), 640, 360)
	defer c.Close()
	if err := c.ForceKeyFrame(); !errors.Is(err, ErrNoControl) {
		t.Errorf("force keyframe without the control: %v", err)
	}
	if err := c.SetBitRate(1e6); !errors.Is(err, ErrNoControl) {
		t.Errorf("bitrate without the control: %v", err)
	}
	readUnit(t, c)
}

func TestCameraSizeItDoesNotOffer(t *testing.T) {
	fake := newFakeCamera(false, false)
	t.Cleanup(fake.Install())
	info, _ := FindCamera("")
	_, err := OpenCamera(CameraParams{Info: info, Width: 1920, Height: 1080})
	if err == nil || !strings.Contains(err.Error(), "the driver set H264 1280x720: pick a size from [640x360 1280x720]") {
		t.Fatalf("1080p from a 720p camera: %v", err)
	}
	if s := fake.Released(); s != "" {
		t.Errorf("after a failed open: %s", s)
	}
}

func TestUnpluggedCameraIsLost(t *testing.T) {
	fake := newFakeCamera(false, false)
	c := openFake(t, fake, 640, 360)
	readUnit(t, c)
	fake.Unplug()
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, _, err = c.ReadUnit(20 * time.Millisecond)
	}
	if !errors.Is(err, ErrCameraLost) || !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), "VIDIOC_DQBUF") {
		t.Fatalf("unplugged: %v", err)
	}
	_ = c.Close() // STREAMOFF and REQBUFS fail with ENODEV: still released
	if s := fake.Released(); s != "" {
		t.Errorf("after Close: %s", s)
	}
}

func TestCameraThatStopsDeliveringIsLost(t *testing.T) {
	fake := newFakeCamera(false, false)
	fake.Source = func(bool) ([]byte, error) { return nil, errors.New("sensor stuck") }
	t.Cleanup(fake.Install())
	info, _ := FindCamera("")
	c, err := OpenCamera(CameraParams{Info: info, Width: 640, Height: 360, StallTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 20 && err == nil; i++ {
		_, _, err = c.ReadUnit(20 * time.Millisecond)
	}
	if !errors.Is(err, ErrCameraLost) || !strings.Contains(err.Error(), "no frame for 100ms") {
		t.Fatalf("stalled camera: %v", err)
	}
}
