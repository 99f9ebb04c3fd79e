package livekit

import (
	"errors"
	"sync"
	"sync/atomic"
)

// lifecycle is the end of a call, the same for both connectors' calls
// (Call over WHIP, RTCCall over LiveKit's signalling): who may end it, the
// reason, Ended delivering that reason once, and releasing the devices
// once. What a call does around it (tell the server, in which order) stays
// with the call: a WHIP call releases the devices before it reports the
// end, an RTCCall reports first so its watchers see the call over rather
// than a lost socket.
type lifecycle struct {
	// connected: media flows and the call is the unit's, so its ending
	// by itself is news (Ended yields the reason).
	connected atomic.Bool
	// joining: Join is still waiting for the media connection; an end now
	// wakes Join with the reason instead (RTCCall only).
	joining atomic.Bool

	release   func() // stops the pipelines and releases camera, microphone (and speaker)
	closeOnce sync.Once
	endOnce   sync.Once
	ended     chan error
	over      chan struct{} // closed when the call is over, for internal watchers

	mu  sync.Mutex
	why error
}

// init readies the lifecycle; release runs once, on the first close.
func (l *lifecycle) init(release func()) {
	l.release = release
	l.ended = make(chan error, 1)
	l.over = make(chan struct{})
}

// Ended yields once if the call ends by itself; closed when the call is over.
func (l *lifecycle) Ended() <-chan error { return l.ended }

// close releases the call's devices, once, whoever ends it.
func (l *lifecycle) close() { l.closeOnce.Do(l.release) }

// leaving marks the call as being left by the unit: whatever ends it from
// here is our doing, not the call ending by itself.
func (l *lifecycle) leaving() {
	l.connected.Store(false)
	l.joining.Store(false)
}

// claim decides whether an end the call meets by itself is the one that
// ends it. The first wins: once ending (or being left) the connection
// closing as a result is not news, hence the swaps. byItself says whether
// Ended yields the reason (the call was up) or Join returns it (Join was
// still waiting).
func (l *lifecycle) claim() (byItself, ok bool) {
	if l.connected.CompareAndSwap(true, false) {
		return true, true
	}
	if l.joining.CompareAndSwap(true, false) {
		return false, true
	}
	return false, false
}

// finish records the reason and tells the watchers the call is over; only
// the first finish counts.
func (l *lifecycle) finish(err error, byItself bool) {
	l.endOnce.Do(func() {
		l.mu.Lock()
		l.why = err
		l.mu.Unlock()
		if byItself {
			l.ended <- err
		}
		close(l.ended)
		close(l.over)
	})
}

// reason is why the call ended, for Join.
func (l *lifecycle) reason() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.why == nil {
		return errors.New("the call ended")
	}
	return l.why
}
