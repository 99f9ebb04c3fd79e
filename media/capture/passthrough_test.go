//go:build cgo && linux && (amd64 || arm64)

package capture_test

import (
	"bytes"
	"errors"
	"image"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/codec/openh264"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/encoder/v4l2m2m"
	"github.com/konsult/konsult/media/gate"
)

const ptW, ptH, ptFPS = 320, 180, 30

// cameraCoder is the fake camera's encoder: real H.264 from openh264 of a
// bright moving picture (never the slate's grey), an IDR exactly when the
// camera wants a keyframe.
type cameraCoder struct {
	mu  sync.Mutex
	enc codec.ReadCloser
	n   int
}

func newCameraCoder(t testing.TB, w, h int) *cameraCoder {
	t.Helper()
	p, err := openh264.NewParams()
	if err != nil {
		t.Fatal(err)
	}
	p.BitRate, p.EnableFrameSkip, p.IntraPeriod = 400_000, false, 100000
	c := &cameraCoder{}
	src := video.ReaderFunc(func() (image.Image, func(), error) {
		img := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio420)
		for i := range img.Y {
			img.Y[i] = byte(180 + (i/w+c.n)%60)
		}
		for i := range img.Cb {
			img.Cb[i], img.Cr[i] = 90, 170
		}
		c.n++
		return img, func() {}, nil
	})
	c.enc, err = p.BuildVideoEncoder(src, prop.Media{Video: prop.Video{Width: w, Height: h, FrameRate: ptFPS}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.enc.Close() })
	return c
}

func (c *cameraCoder) code(key bool) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if key {
		_ = c.enc.Controller().(codec.KeyFrameController).ForceKeyFrame()
	}
	au, release, err := c.enc.Read()
	if err != nil {
		return nil, err
	}
	defer release()
	return append([]byte(nil), au...), nil
}

// ptCall is one call's capture with camera pass-through chosen by the
// registry, and the encoded reader a PeerConnection would read.
type ptCall struct {
	g     *gate.Gate
	fake  *v4l2m2m.FakeCamera
	capt  *capture.Capture
	pt    *capture.PassThrough
	tap   *capture.Tap
	r     mediadevices.EncodedReadCloser
	slate [][]byte
	units chan []byte
	errs  chan error
}

func startPassThrough(t *testing.T, fake *v4l2m2m.FakeCamera) *ptCall {
	t.Helper()
	return startPassThroughTapped(t, fake, false)
}

// startPassThroughTapped is startPassThrough, with the self-view's tap
// (c.tap) around the pass-through if tapped, as media/livekit wraps it.
func startPassThroughTapped(t *testing.T, fake *v4l2m2m.FakeCamera, tapped bool) *ptCall {
	t.Helper()
	t.Cleanup(fake.Install())
	pt := encoder.PassThroughConfig{Mode: "auto", Width: ptW, Height: ptH, FPS: ptFPS}
	ch, err := encoder.Choose(encoder.Video, "auto", encoder.Settings{PassThrough: pt})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Chosen.Name != "uvc-h264" || !strings.Contains(ch.Explain(), "keyframe on request") {
		t.Fatalf("the registry did not choose pass-through: %s", ch.Explain())
	}
	vb, err := ch.Chosen.Video(encoder.Settings{BitRate: 1_000_000, PassThrough: pt})
	if err != nil {
		t.Fatal(err)
	}
	ac, err := encoder.Choose(encoder.Audio, "opus", encoder.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	ab, _ := ac.Chosen.Audio(encoder.Settings{})
	c := &ptCall{g: gate.New(), fake: fake, units: make(chan []byte, 256), errs: make(chan error, 1)}
	c.pt = vb.(*capture.PassThrough)
	if tapped {
		c.tap = capture.NewTap(c.g)
		vb = c.tap.Wrap(vb)
	}
	c.capt, err = capture.Open(capture.Config{Gate: c.g, Width: ptW, Height: ptH, FPS: ptFPS, Microphone: capture.TestDevice, Video: vb, Audio: ab})
	if err != nil {
		t.Fatal(err)
	}
	if c.slate, err = capture.SlateH264(ptW, ptH, ptFPS); err != nil {
		t.Fatal(err)
	}
	for _, tr := range c.capt.Tracks() {
		if tr.Kind() == webrtc.RTPCodecTypeVideo {
			if c.r, err = tr.NewEncodedReader(webrtc.MimeTypeH264); err != nil {
				t.Fatal(err)
			}
		}
	}
	go func() {
		for {
			b, release, err := c.r.Read()
			if err != nil {
				c.errs <- err
				close(c.units)
				return
			}
			c.units <- append([]byte(nil), b.Data...)
			release()
		}
	}()
	t.Cleanup(func() {
		c.capt.Stop(time.Second)
		c.r.Close()
		c.capt.Close()
		if open := capture.DevicesOpen(); len(open) > 0 {
			t.Errorf("devices open after the call: %v", open)
		}
		if s := fake.Released(); s != "" {
			t.Errorf("camera after the call: %s", s)
		}
	})
	return c
}

func (c *ptCall) next(t *testing.T) []byte {
	t.Helper()
	select {
	case u, ok := <-c.units:
		if !ok {
			t.Fatalf("the track ended: %v", <-c.errs)
		}
		return u
	case <-time.After(5 * time.Second):
		t.Fatal("nothing sent in 5 s")
	}
	return nil
}

// quiet checks that for d nothing is sent but the slate's IDR, repeated
// every SlateInterval (a far end that lost the slate gets it again).
func (c *ptCall) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	end := time.After(d)
	n := 0
	for {
		select {
		case u := <-c.units:
			if !bytes.Equal(u, c.slate[0]) {
				t.Fatalf("sent while the gate is shut, not the slate's IDR: NAL types %v", nalTypes(u))
			}
			n++
		case <-end:
			if want := int(d/capture.SlateInterval) - 1; n < want {
				t.Fatalf("the slate's IDR came %d times in %s with the gate shut, want at least %d", n, d, want)
			}
			return
		}
	}
}

func nalTypes(au []byte) []byte {
	var out []byte
	for _, n := range v4l2m2m.NALUnits(au) {
		out = append(out, v4l2m2m.NALType(n))
	}
	return out
}

func (c *ptCall) expectSlate(t *testing.T) {
	t.Helper()
	for i := range capture.SlatesPerClose {
		u := c.next(t)
		if !bytes.Equal(u, c.slate[i]) {
			t.Fatalf("unit %d while shut is not slate unit %d (NAL types %v)", i, i, nalTypes(u))
		}
	}
	if !v4l2m2m.HasIDR(c.slate[0]) || v4l2m2m.HasIDR(c.slate[1]) {
		t.Fatalf("slate is not IDR then P: %v %v", nalTypes(c.slate[0]), nalTypes(c.slate[1]))
	}
}

func (c *ptCall) expectCameraFromIDR(t *testing.T) {
	t.Helper()
	u := c.next(t)
	types := nalTypes(u)
	if !bytes.Contains(types, []byte{v4l2m2m.NALSPS}) || !bytes.Contains(types, []byte{v4l2m2m.NALPPS}) || !v4l2m2m.HasIDR(u) {
		t.Fatalf("first camera unit after the gate opened has NAL types %v: want SPS, PPS and IDR", types)
	}
	for _, s := range c.slate {
		if bytes.Equal(u, s) {
			t.Fatal("the slate again, not the camera")
		}
	}
	for range 5 {
		if u := c.next(t); v4l2m2m.HasIDR(u) {
			t.Fatalf("camera sent another IDR unasked: %v", nalTypes(u))
		}
	}
}

var ptOpen = gate.State{Video: true, Audio: true}

func TestPassThroughGateSlateThenCameraFromIDR(t *testing.T) {
	fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: ptW, Height: ptH}}, Interval: time.Second / ptFPS, ForceKeyFrame: true, BitRate: true}
	fake.Source = newCameraCoder(t, ptW, ptH).code
	c := startPassThrough(t, fake)

	// Shut at the start: the slate, then its IDR repeated, while the camera streams.
	c.expectSlate(t)
	c.quiet(t, 800*time.Millisecond)
	if made, _, _, _ := fake.Stats(); made == 0 {
		t.Fatal("the fake camera made no frames")
	}
	if n := c.capt.Counters.VideoFrames.Load(); n != 0 {
		t.Fatalf("%d camera units admitted while shut", n)
	}

	// Open: stale units dropped, a keyframe asked for, the IDR first.
	c.g.Set(ptOpen)
	c.expectCameraFromIDR(t)
	st := c.pt.Stats()
	if st.Flushed.Load() == 0 || st.KeyRequests.Load() != 1 {
		t.Errorf("on open: %d stale units dropped (want some), %d keyframe requests (want 1)", st.Flushed.Load(), st.KeyRequests.Load())
	}

	// The far end's PLI: a keyframe is forced, and one comes.
	_, keys, _, forced := fake.Stats()
	if err := c.r.Controller().(codec.KeyFrameController).ForceKeyFrame(); err != nil {
		t.Fatal(err)
	}
	got := false
	for i := 0; i < 10 && !got; i++ {
		got = v4l2m2m.HasIDR(c.next(t))
	}
	if _, k2, _, f2 := fake.Stats(); !got || f2 != forced+1 || k2 <= keys {
		t.Errorf("PLI: IDR sent %v, forced %d→%d, camera keyframes %d→%d", got, forced, f2, keys, k2)
	}

	// Congestion control reaches the camera's bitrate control (through
	// the track's controller, as mediadevices binds it to a PeerConnection).
	if err := c.r.Controller().(codec.BitRateController).SetBitRate(600_000); err != nil {
		t.Fatal(err)
	}
	if b := fake.Bitrates; len(b) != 2 || b[0] != 1_000_000 || b[1] != 600_000 {
		t.Errorf("camera bitrates: %v, want the configured then congestion control's", b)
	}

	// Shut again: slate from its IDR, then the IDR repeated; open: camera from an IDR.
	c.g.Set(gate.State{})
	for { // at most the unit read as the gate shut is still sent
		u := c.next(t)
		if bytes.Equal(u, c.slate[0]) {
			break
		}
	}
	for i := 1; i < capture.SlatesPerClose; i++ {
		if u := c.next(t); !bytes.Equal(u, c.slate[i]) {
			t.Fatalf("after close, unit %d is not the slate", i)
		}
	}
	if !c.capt.Counters.LastIsSlate.Load() {
		t.Error("LastIsSlate false after a close")
	}
	c.quiet(t, 800*time.Millisecond)
	c.g.Set(ptOpen)
	c.expectCameraFromIDR(t)
}

func TestPassThroughWithoutKeyframeControlWaitsForTheCamerasIDR(t *testing.T) {
	coder := newCameraCoder(t, ptW, ptH)
	first := true
	// A camera that sends SPS/PPS only when streaming starts, and a
	// keyframe every 15 frames; its driver can be asked for nothing.
	fake := &v4l2m2m.FakeCamera{Card: "UVC H.264 camera", Sizes: []v4l2m2m.Size{{Width: ptW, Height: ptH}}, Interval: time.Second / ptFPS, GOP: 15}
	fake.Source = func(key bool) ([]byte, error) {
		au, err := coder.code(key)
		if err != nil || !key || first {
			first = false
			return au, err
		}
		var out []byte
		for _, n := range v4l2m2m.NALUnits(au) {
			if typ := v4l2m2m.NALType(n); typ != v4l2m2m.NALSPS && typ != v4l2m2m.NALPPS {
				out = append(append(out, 0, 0, 0, 1), n...)
			}
		}
		return out, nil
	}
	c := startPassThrough(t, fake)
	c.expectSlate(t)
	time.Sleep(200 * time.Millisecond) // past the camera's first IDR
	c.g.Set(ptOpen)
	c.expectCameraFromIDR(t) // SPS/PPS put back in front of the IDR
	st := c.pt.Stats()
	if st.KeyRequests.Load() != 0 {
		t.Errorf("asked a camera without the control for keyframes %d times", st.KeyRequests.Load())
	}
	// A PLI cannot be served, and is not an error.
	if err := c.r.Controller().(codec.KeyFrameController).ForceKeyFrame(); err != nil {
		t.Errorf("PLI without the control: %v", err)
	}
	if err := c.r.Controller().(codec.BitRateController).SetBitRate(600_000); !errors.Is(err, capture.ErrNoRateControl) {
		t.Errorf("bitrate on a camera without the control: %v", err)
	}
	if _, _, _, forced := fake.Stats(); forced != 0 {
		t.Errorf("forced %d keyframes on a camera without the control", forced)
	}
}

func TestPassThroughUnpluggedCameraIsLost(t *testing.T) {
	fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: ptW, Height: ptH}}, Interval: time.Second / ptFPS, ForceKeyFrame: true}
	fake.Source = newCameraCoder(t, ptW, ptH).code
	c := startPassThrough(t, fake)
	c.expectSlate(t)
	c.g.Set(ptOpen)
	c.expectCameraFromIDR(t)
	fake.Unplug()
	select {
	case err := <-c.capt.Lost():
		if !errors.Is(err, v4l2m2m.ErrCameraLost) || !strings.Contains(err.Error(), "camera lost") || !strings.Contains(err.Error(), "no such device") {
			t.Errorf("lost: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an unplugged camera did not end the call")
	}
}

func TestPassThroughNotChosen(t *testing.T) {
	fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: 1280, Height: 720}}, Source: func(bool) ([]byte, error) { return nil, nil }}
	t.Cleanup(fake.Install())
	for _, c := range []struct {
		cfg  encoder.PassThroughConfig
		want string
	}{
		{encoder.PassThroughConfig{Mode: "off", Width: 1280, Height: 720}, "uvc-h264 (unusable: conference.video_passthrough is off)"},
		{encoder.PassThroughConfig{Mode: "auto", Camera: capture.TestDevice, Width: 1280, Height: 720}, "the camera is the test driver"},
		{encoder.PassThroughConfig{Mode: "auto", Width: 640, Height: 480}, "gives H264 only at [1280x720], not the configured 640x480"},
		{encoder.PassThroughConfig{Mode: "auto", Camera: "/dev/video7", Width: 1280, Height: 720}, `no camera matches "/dev/video7"`},
	} {
		ch, err := encoder.Choose(encoder.Video, "auto", encoder.Settings{PassThrough: c.cfg})
		if err != nil {
			t.Fatal(err)
		}
		if ch.Chosen.Name == "uvc-h264" || !strings.Contains(ch.Explain(), c.want) {
			t.Errorf("%+v: %s", c.cfg, ch.Explain())
		}
	}
	on := encoder.Settings{PassThrough: encoder.PassThroughConfig{Mode: "auto", Width: 1280, Height: 720}}
	if ch, _ := encoder.Choose(encoder.Video, "VP8", on); ch.Chosen.Name == "uvc-h264" {
		t.Error("pass-through chosen with VP8 configured")
	}
	ch, _ := encoder.Choose(encoder.Video, "auto", on)
	if ex := ch.Explain(); ch.Chosen.Name != "uvc-h264" || !strings.Contains(ex, "bitrate: fixed by the camera (congestion control cannot lower it)") {
		t.Errorf("chosen: %s", ex)
	}
}

// The self-view of a camera that codes H.264 itself is the camera's own
// access units as they leave for the far end, and only while the gate lets
// video out (invariant 9): none of the slates, none while shut.
func TestPassThroughSelfView(t *testing.T) {
	fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: ptW, Height: ptH}}, Interval: time.Second / ptFPS, ForceKeyFrame: true, BitRate: true}
	fake.Source = newCameraCoder(t, ptW, ptH).code
	c := startPassThroughTapped(t, fake, true)
	var mu sync.Mutex
	var seen []capture.EncodedFrame
	c.tap.SetSink(func(f capture.EncodedFrame) {
		mu.Lock()
		seen = append(seen, capture.EncodedFrame{Codec: f.Codec, Keyframe: f.Keyframe, Data: append([]byte(nil), f.Data...)})
		mu.Unlock()
	})
	tapped := func() []capture.EncodedFrame {
		mu.Lock()
		defer mu.Unlock()
		return append([]capture.EncodedFrame(nil), seen...)
	}

	c.expectSlate(t)
	c.quiet(t, 600*time.Millisecond)
	if n := len(tapped()); n != 0 {
		t.Fatalf("%d units reached the self-view while the gate was shut", n)
	}
	c.g.Set(ptOpen)
	c.expectCameraFromIDR(t) // the IDR and 5 more
	got := tapped()
	if len(got) < 6 || got[0].Codec != "H264" || !got[0].Keyframe {
		t.Fatalf("camera out: the self-view got %d units (first %+v), want the IDR and what followed", len(got), got[0:min(1, len(got))])
	}
	for _, f := range got {
		for _, s := range c.slate {
			if bytes.Equal(f.Data, s) {
				t.Fatal("a slate unit reached the self-view")
			}
		}
	}
	c.g.Set(gate.State{})
	for { // the unit in flight at the close may still leave
		if u := c.next(t); bytes.Equal(u, c.slate[0]) {
			break
		}
	}
	for range capture.SlatesPerClose - 1 {
		c.next(t)
	}
	shut := len(tapped())
	c.quiet(t, 600*time.Millisecond)
	if n := len(tapped()); n != shut {
		t.Fatalf("%d units reached the self-view after the close", n-shut)
	}
}

// Issue 15, pass-through: a far end's PLI while the unit is private is
// answered by the slate's IDR (with its SPS and PPS) within SlateInterval,
// and no camera unit is sent, though the camera is asked for a keyframe.
func TestPassThroughPLIWhilePrivateGetsTheSlateIDR(t *testing.T) {
	fake := &v4l2m2m.FakeCamera{Card: "HD Pro Webcam C920", Sizes: []v4l2m2m.Size{{Width: ptW, Height: ptH}}, Interval: time.Second / ptFPS, ForceKeyFrame: true, BitRate: true}
	fake.Source = newCameraCoder(t, ptW, ptH).code
	c := startPassThrough(t, fake)
	c.expectSlate(t) // the gate starts shut
	c.g.Set(ptOpen)
	c.expectCameraFromIDR(t)
	c.g.Set(gate.State{})
	for { // at most the unit read as the gate shut is still sent
		if bytes.Equal(c.next(t), c.slate[0]) {
			break
		}
	}
	for i := 1; i < capture.SlatesPerClose; i++ {
		if u := c.next(t); !bytes.Equal(u, c.slate[i]) {
			t.Fatalf("after close, unit %d is not the slate", i)
		}
	}
	c.quiet(t, 600*time.Millisecond)
	admitted := c.capt.Counters.VideoFrames.Load()
	for i := range 3 {
		asked := time.Now()
		if err := c.r.Controller().(codec.KeyFrameController).ForceKeyFrame(); err != nil {
			t.Fatal(err)
		}
		u := c.next(t)
		if !bytes.Equal(u, c.slate[0]) {
			t.Fatalf("PLI %d while private: sent NAL types %v, not the slate's IDR", i, nalTypes(u))
		}
		if d := time.Since(asked); d > capture.SlateInterval+200*time.Millisecond {
			t.Fatalf("PLI %d while private: the slate's IDR %s later", i, d.Round(time.Millisecond))
		}
	}
	if n := c.capt.Counters.VideoFrames.Load(); n != admitted {
		t.Fatalf("%d camera units admitted while private", n-admitted)
	}
}
