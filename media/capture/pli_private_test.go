//go:build cgo && linux && (amd64 || arm64)

package capture

import (
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/codec/openh264"
	"github.com/pion/mediadevices/pkg/codec/vpx"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/media/encoder/v4l2m2m"
	"github.com/konsult/konsult/media/gate"
)

// Issue 15: a far end whose decoder asks for a keyframe (PLI/FIR) while the
// unit is private must get the slate as a keyframe, soon, and never a room
// frame. mediadevices answers a PLI by calling the encoder's ForceKeyFrame
// from the track's RTCP loop; its encoders take the same lock their Read
// holds while it waits for the next raw frame. Before the slate repeated
// (e2af693), Read waited on the shut gate for as long as the unit was
// private: the request never returned (and held up the track's RTCP loop),
// and no keyframe came, so the far end kept the room's last picture.
func TestPLIWhilePrivateGetsSlateKeyFrameVP8(t *testing.T) {
	p, err := vpx.NewVP8Params()
	if err != nil {
		t.Fatal(err)
	}
	p.BitRate = 1_000_000
	p.KeyFrameInterval = 600 // no keyframe of its own during the test
	pliWhilePrivate(t, &p, func(b []byte) bool { return len(b) > 0 && b[0]&1 == 0 })
}

// The same with openh264.
func TestPLIWhilePrivateGetsSlateKeyFrameH264(t *testing.T) {
	p, err := openh264.NewParams()
	if err != nil {
		t.Fatal(err)
	}
	p.BitRate = 1_000_000
	p.IntraPeriod = 600
	pliWhilePrivate(t, &p, v4l2m2m.HasIDR)
}

func pliWhilePrivate(t *testing.T, b codec.VideoEncoderBuilder, isKey func([]byte) bool) {
	g := gate.New()
	g.Set(gate.State{Video: true})
	done := make(chan struct{})
	var n Counters
	keys := &KeyFrames{}
	cam := &movingCamera{}
	// As capture.Open wires it: the gate's transform, the keyframe wrapper.
	r := gateVideo(g, 640, 480, 30, done, &n, nil, keys)(video.Reader(cam))
	enc, err := keys.Wrap(b).BuildVideoEncoder(r, prop.Media{Video: prop.Video{Width: 640, Height: 480, FrameRate: 30}})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	defer close(done)
	type frame struct {
		at  time.Time
		key bool
	}
	frames := make(chan frame, 1000)
	go func() {
		for {
			b, release, err := enc.Read()
			if err != nil {
				close(frames)
				return
			}
			frames <- frame{time.Now(), isKey(b)}
			release()
		}
	}()
	time.Sleep(500 * time.Millisecond) // the room
	g.Set(gate.State{})
	time.Sleep(time.Second) // long past the close's own slates
	for len(frames) > 0 {
		<-frames
	}
	reads := cam.reads.Load()
	kc, ok := enc.Controller().(codec.KeyFrameController)
	if !ok {
		t.Fatalf("%T has no keyframe control", enc.Controller())
	}
	// Three requests, as a far end on a lossy link sends them, each while
	// the unit has been private for a while. The request waits for the
	// encoder's lock, which its Read holds until the next slate (at most
	// SlateInterval) is coded; the bound is 1 s from the press.
	const within = time.Second
	for i := range 3 {
		asked := time.Now()
		ret := make(chan error, 1)
		go func() { ret <- kc.ForceKeyFrame() }() // as mediadevices' RTCP loop does
		select {
		case err := <-ret:
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
		case <-time.After(within):
			t.Fatalf("request %d: the keyframe request (PLI) did not return within %s while the unit is private: the track's RTCP loop is stuck and no keyframe comes", i, within)
		}
		var got time.Duration = -1
		for end := time.After(within); got < 0; {
			select {
			case f, ok := <-frames:
				if !ok {
					t.Fatal("the encoder ended")
				}
				if f.key {
					got = f.at.Sub(asked)
				}
			case <-end:
				t.Fatalf("request %d: no keyframe within %s of a PLI while private", i, within)
			}
		}
		t.Logf("PLI %d while private: a slate keyframe %s later", i, got.Round(time.Millisecond))
		time.Sleep(300 * time.Millisecond)
	}
	if d := cam.reads.Load() - reads; d != 0 {
		t.Fatalf("the camera was read %d times while private: a PLI must be answered with the slate, never the room", d)
	}
	if !n.LastIsSlate.Load() {
		t.Fatal("the last frame handed to the encoder is not the slate")
	}
}
