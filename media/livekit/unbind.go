package livekit

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/mediadevices"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// boundedUnbind wraps a mediadevices track so PeerConnection.Close cannot
// hang on it. mediadevices v0.9.4's unbind deadlocks if the track's encoder
// loop ends on its own (EOF) just as unbind runs: unbind then waits on a
// channel nobody reads. Capture.Stop makes that rare; this makes it
// harmless: after a second the close goes on (the stuck goroutine is left
// behind, and the devices are still released).
//
// The same track is bound again by the next peer connection after a full
// reconnect, so a binding left behind must not spoil it: its encoder loop,
// still waiting for a frame behind a shut gate, writes the frame it gets
// when the gate opens into the old peer connection, and mediadevices keeps
// the write error as the track's error and refuses every later bind. Once
// unbound, a binding's writes are dropped instead, and its loop then ends
// on the pending unbind.
type boundedUnbind struct {
	mediadevices.Track

	mu      sync.Mutex
	unbound map[string]*atomic.Bool // per binding (TrackLocalContext.ID)
}

func newBoundedUnbind(t mediadevices.Track) *boundedUnbind {
	return &boundedUnbind{Track: t, unbound: map[string]*atomic.Bool{}}
}

func (t *boundedUnbind) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	gone := &atomic.Bool{}
	t.mu.Lock()
	t.unbound[ctx.ID()] = gone
	t.mu.Unlock()
	return t.Track.Bind(unboundContext{ctx, gone})
}

func (t *boundedUnbind) Unbind(ctx webrtc.TrackLocalContext) error {
	t.mu.Lock()
	if gone := t.unbound[ctx.ID()]; gone != nil {
		gone.Store(true)
	}
	delete(t.unbound, ctx.ID())
	t.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- t.Track.Unbind(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Second):
		return fmt.Errorf("unbind %s track: no answer within 1s (mediadevices unbind race)", t.Kind())
	}
}

// unboundContext hands the encoder loop a writer that drops everything once
// its binding is unbound.
type unboundContext struct {
	webrtc.TrackLocalContext
	gone *atomic.Bool
}

func (c unboundContext) WriteStream() webrtc.TrackLocalWriter {
	return unboundWriter{c.TrackLocalContext.WriteStream(), c.gone}
}

type unboundWriter struct {
	webrtc.TrackLocalWriter
	gone *atomic.Bool
}

func (w unboundWriter) WriteRTP(h *rtp.Header, payload []byte) (int, error) {
	if w.gone.Load() {
		return len(payload), nil
	}
	return w.TrackLocalWriter.WriteRTP(h, payload)
}

func (w unboundWriter) Write(b []byte) (int, error) {
	if w.gone.Load() {
		return len(b), nil
	}
	return w.TrackLocalWriter.Write(b)
}
