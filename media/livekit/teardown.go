package livekit

import (
	"context"
	"time"

	lkp "github.com/livekit/protocol/livekit"
)

// Leave tells the server the unit leaves (the far end sees it go at once)
// and releases camera, microphone and speaker.
func (c *RTCCall) Leave(context.Context) error {
	c.leaving()
	c.finish(nil, false) // first: the watchers see the call over, not a lost socket
	c.leaveQuietly()
	return nil
}

func (c *RTCCall) leaveQuietly() {
	c.mu.Lock()
	sig := c.sig
	c.sig = nil
	c.mu.Unlock()
	if sig != nil {
		_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Leave{Leave: &lkp.LeaveRequest{
			Reason: lkp.DisconnectReason_CLIENT_INITIATED, Action: lkp.LeaveRequest_DISCONNECT,
		}}})
		sig.close()
	}
	c.close()
}

// releaseMedia (the lifecycle's release, once) ends the pipelines, then
// the peer connection (which stops the encoders reading), and only then
// releases camera, microphone, speaker.
func (c *RTCCall) releaseMedia() {
	c.capt.Stop(time.Second)
	if pc := c.peer(); pc != nil {
		_ = pc.Close()
	}
	c.capt.Close()
	c.player.Close()
	c.conn.mu.Lock()
	if c.conn.cur == c {
		c.conn.cur = nil
	}
	c.conn.mu.Unlock()
}

// end is the call ending by itself; the first reason wins. If Join is
// still waiting, it wakes Join with the reason (claim).
func (c *RTCCall) end(err error) {
	if byItself, ok := c.claim(); ok {
		c.finish(err, byItself)
		c.leaveQuietly()
	}
}
