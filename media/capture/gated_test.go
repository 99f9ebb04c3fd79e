package capture

import (
	"image"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/io/video"

	"github.com/konsult/konsult/media/gate"
)

// camera is a fake upstream that counts how often it is read.
type camera struct{ reads atomic.Int64 }

func (c *camera) Read() (image.Image, func(), error) {
	c.reads.Add(1)
	time.Sleep(time.Millisecond)
	return image.NewRGBA(image.Rect(0, 0, 64, 48)), func() {}, nil
}

func TestGateVideo(t *testing.T) {
	g := gate.New()
	done := make(chan struct{})
	var n Counters
	cam := &camera{}
	var endedCalls atomic.Int64
	r := GateVideo(g, 64, 48, 30, done, &n, func(error) { endedCalls.Add(1) })(video.Reader(cam))

	frames := make(chan image.Image, 100)
	errs := make(chan error, 1)
	go func() {
		for {
			img, _, err := r.Read()
			if err != nil {
				errs <- err
				return
			}
			frames <- img
		}
	}()

	// Shut from the start: the slate (so an encoder can start), then the
	// slate again every SlateInterval, and the camera is never read.
	shutFor := func(d time.Duration) (slates int) {
		t.Helper()
		end := time.After(d)
		for {
			select {
			case f := <-frames:
				if _, ok := f.(*image.YCbCr); !ok {
					t.Fatalf("frame on a shut gate is %T, not the slate", f)
				}
				slates++
			case <-end:
				return slates
			}
		}
	}
	want := SlatesPerClose + int(time.Second/SlateInterval) - 1
	if n := shutFor(time.Second); n < want {
		t.Fatalf("gate shut for 1 s: %d slates, want at least %d (the slate repeated while shut)", n, want)
	}
	if cam.reads.Load() != 0 {
		t.Fatalf("shut gate: camera read %d times", cam.reads.Load())
	}

	g.Set(gate.State{Video: true})
	time.Sleep(100 * time.Millisecond)
	if n.VideoFrames.Load() < 10 {
		t.Fatalf("open gate passed only %d frames", n.VideoFrames.Load())
	}

	g.Set(gate.State{})
	time.Sleep(50 * time.Millisecond)
	passed, reads := n.VideoFrames.Load(), cam.reads.Load()
	for len(frames) > 0 { // the camera frames of the open gate, and the first slates
		<-frames
	}
	if got := shutFor(time.Second); got < int(time.Second/SlateInterval)-1 {
		t.Fatalf("gate shut again for 1 s: %d slates", got)
	}
	if n.VideoFrames.Load() != passed || cam.reads.Load() != reads {
		t.Fatal("camera frames kept passing after the gate shut")
	}
	if !n.LastIsSlate.Load() {
		t.Fatal("after close, the last frame is not the slate")
	}

	close(done)
	select {
	case err := <-errs:
		if err != io.EOF {
			t.Fatalf("after the call ended: %v, want EOF", err)
		}
		if endedCalls.Load() != 1 {
			t.Fatalf("ended called %d times, want once", endedCalls.Load())
		}
	case <-time.After(time.Second):
		t.Fatal("a reader waiting on a shut gate did not end with the call")
	}
}
