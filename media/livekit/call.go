package livekit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/whip"
)

// Call is one published session in a LiveKit room.
type Call struct {
	id    string
	pc    *webrtc.PeerConnection
	sess  *whip.Session
	capt  *capture.Capture
	grace time.Duration

	connected atomic.Bool
	once      sync.Once
	endOnce   sync.Once
	ended     chan error
	over      chan struct{} // closed when the call is over, for internal watchers
	mu        sync.Mutex
	lostTimer *time.Timer
}

// ID is a random meeting id for events; it says nothing about the room.
func (c *Call) ID() string { return c.id }

// Ended yields once if the call ends by itself; closed when the call is over.
func (c *Call) Ended() <-chan error { return c.ended }

// Leave deletes the WHIP session (the server drops the participant at once)
// and releases camera and microphone.
func (c *Call) Leave(ctx context.Context) error {
	c.connected.Store(false) // what follows is our doing, not the call ending by itself
	var err error
	if c.sess != nil {
		err = c.sess.Delete(ctx)
	}
	c.close()
	c.finish(nil, false)
	if err != nil {
		return fmt.Errorf("delete WHIP session: %w", err)
	}
	return nil
}

// close ends the pipelines, then the PeerConnection (which stops the
// encoders reading), and only then releases camera and microphone.
func (c *Call) close() {
	c.once.Do(func() {
		c.capt.Stop(time.Second)
		_ = c.pc.Close()
		c.capt.Close()
	})
}

func (c *Call) finish(err error, byItself bool) {
	c.endOnce.Do(func() {
		if byItself {
			c.ended <- err
		}
		close(c.ended)
		close(c.over)
	})
}

// onState turns the connection state into the end of the call: a failed
// connection at once, a disconnected one after the grace time.
func (c *Call) onState(s webrtc.PeerConnectionState) {
	if !c.connected.Load() {
		return // Join is still deciding
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch s {
	case webrtc.PeerConnectionStateConnected:
		if c.lostTimer != nil {
			c.lostTimer.Stop()
			c.lostTimer = nil
		}
	case webrtc.PeerConnectionStateDisconnected:
		if c.lostTimer == nil {
			c.lostTimer = time.AfterFunc(c.grace, func() {
				c.end(fmt.Errorf("lost the conference server for more than %s: %w", c.grace, whip.ErrICEFailed))
			})
		}
	case webrtc.PeerConnectionStateFailed:
		go c.end(fmt.Errorf("connection to the conference server failed: %w", whip.ErrICEFailed))
	case webrtc.PeerConnectionStateClosed:
		go c.end(errors.New("the conference server closed the call"))
	}
}

// end is the call ending by itself. The first reason wins: once ending, the
// connection closing as a result is not news (hence the swap).
func (c *Call) end(err error) {
	if !c.connected.CompareAndSwap(true, false) {
		return // already ending, or being left
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c.sess != nil {
		_ = c.sess.Delete(ctx) // best effort: the server may be gone
	}
	c.close()
	c.finish(err, true)
}
