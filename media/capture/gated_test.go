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

	// Shut from the start: the slate (so an encoder can start), then nothing,
	// and the camera is never read.
	for i := 0; i < SlatesPerClose; i++ {
		if f := <-frames; func() bool { _, ok := f.(*image.YCbCr); return !ok }() {
			t.Fatalf("frame %d on a shut gate is %T, not the slate", i, f)
		}
	}
	time.Sleep(150 * time.Millisecond)
	if len(frames) != 0 || cam.reads.Load() != 0 {
		t.Fatalf("shut gate: %d more frames, camera read %d times", len(frames), cam.reads.Load())
	}

	g.Set(gate.State{Video: true})
	time.Sleep(100 * time.Millisecond)
	if n.VideoFrames.Load() < 10 {
		t.Fatalf("open gate passed only %d frames", n.VideoFrames.Load())
	}

	g.Set(gate.State{})
	time.Sleep(150 * time.Millisecond)
	passed, reads := n.VideoFrames.Load(), cam.reads.Load()
	time.Sleep(100 * time.Millisecond)
	if n.VideoFrames.Load() != passed || cam.reads.Load() != reads {
		t.Fatal("camera frames kept passing after the gate shut")
	}
	if n.Slates.Load() != 2*SlatesPerClose || !n.LastIsSlate.Load() {
		t.Fatalf("after close: slates %d, last is slate %v", n.Slates.Load(), n.LastIsSlate.Load())
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
