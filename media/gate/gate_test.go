package gate

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestClosedByDefault(t *testing.T) {
	g := New()
	if _, ok := g.Enter(Video); ok {
		t.Fatal("new gate admitted a video frame")
	}
	if _, ok := g.Enter(Audio); ok {
		t.Fatal("new gate admitted an audio chunk")
	}
}

func TestKindsAreIndependent(t *testing.T) {
	g := New()
	g.Set(State{Audio: true})
	if _, ok := g.Enter(Video); ok {
		t.Fatal("audio-only gate admitted video")
	}
	rel, ok := g.Enter(Audio)
	if !ok {
		t.Fatal("audio-only gate refused audio")
	}
	rel()
}

// Closing must wait for the frame already in the encoder, and admit nothing after.
func TestCloseWaitsForFrameInFlight(t *testing.T) {
	g := New()
	g.Set(State{Video: true, Audio: true})
	rel, ok := g.Enter(Video)
	if !ok {
		t.Fatal("open gate refused video")
	}
	var encoding atomic.Bool
	encoding.Store(true)
	done := make(chan struct{})
	go func() {
		g.Set(State{})
		if encoding.Load() {
			t.Error("Set returned while a frame was still being encoded")
		}
		close(done)
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("Set closed the gate without waiting for the frame in flight")
	default:
	}
	encoding.Store(false)
	rel()
	<-done
	if _, ok := g.Enter(Video); ok {
		t.Fatal("closed gate admitted a frame")
	}
}

func TestChangedWakes(t *testing.T) {
	g := New()
	ch := g.Changed()
	g.Set(State{}) // no change: must not wake
	select {
	case <-ch:
		t.Fatal("Changed fired without a change")
	default:
	}
	g.Set(State{Video: true})
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("Changed did not fire on open")
	}
}

func BenchmarkEnterOpen(b *testing.B) {
	g := New()
	g.Set(State{Video: true})
	for b.Loop() {
		rel, _ := g.Enter(Video)
		rel()
	}
}
