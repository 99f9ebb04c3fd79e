//go:build cgo && linux && (amd64 || arm64)

package capture

import (
	"sync"
	"testing"

	"github.com/pion/mediadevices/pkg/codec/vpx"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/media/gate"
)

// The tap passes the encoder's output on only while the gate lets video
// out (never the slates, never the frame in flight at a close), and makes
// the encoder code a keyframe when asked.
func TestTapOnlyWhileCameraOut(t *testing.T) {
	g := gate.New()
	done := make(chan struct{})
	var n Counters
	keys := &KeyFrames{}
	tap := NewTap(g)
	var mu sync.Mutex
	var got []EncodedFrame
	tap.SetSink(func(f EncodedFrame) {
		mu.Lock()
		got = append(got, EncodedFrame{Codec: f.Codec, Keyframe: f.Keyframe, Data: append([]byte(nil), f.Data...)})
		mu.Unlock()
	})
	p, err := vpx.NewVP8Params()
	if err != nil {
		t.Fatal(err)
	}
	p.BitRate, p.KeyFrameInterval = 1_000_000, 600
	r := gateVideo(g, 640, 480, 30, done, &n, nil, keys)(video.Reader(&movingCamera{}))
	enc, err := keys.Wrap(tap.Wrap(&p)).BuildVideoEncoder(r, prop.Media{Video: prop.Video{Width: 640, Height: 480, FrameRate: 30}})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	defer close(done)
	read := func(k int) {
		for range k {
			_, release, err := enc.Read()
			if err != nil {
				t.Fatal(err)
			}
			release()
		}
	}
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		keys := 0
		for _, f := range got {
			if f.Keyframe {
				keys++
			}
		}
		return len(got), keys
	}
	read(5) // slates: the gate starts shut
	if n, _ := count(); n != 0 {
		t.Fatalf("%d frames tapped while the gate was shut", n)
	}
	g.Set(gate.State{Video: true})
	read(10)
	all, key := count()
	if all != 10 || key < 1 || got[0].Codec != "VP8" || !got[0].Keyframe {
		t.Fatalf("camera out: %d frames tapped (%d keyframes), want 10 starting with a keyframe", all, key)
	}
	tap.RequestKeyframe()
	read(1)
	if _, k := count(); k != key+1 {
		t.Fatalf("RequestKeyframe: %d keyframes, want %d", k, key+1)
	}
	g.Set(gate.State{})
	read(5)
	if a, _ := count(); a != all+1 {
		t.Fatalf("%d frames tapped after the gate shut", a-all-1)
	}
	tap.SetSink(nil)
	g.Set(gate.State{Video: true})
	read(3)
	if a, _ := count(); a != all+1 {
		t.Fatal("frames tapped with no sink")
	}
}
