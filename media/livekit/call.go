package livekit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
	"github.com/konsult/konsult/media/whip"
)

// Call is one published session in a LiveKit room.
type Call struct {
	id   string
	pc   *webrtc.PeerConnection
	sess *whip.Session
	capt *capture.Capture
	log  *slog.Logger
	rate *congestion.Controller

	lifecycle // Ended, and the end of the call
	recovery  recovery
	restarts  atomic.Int32
}

// Congestion is the controller that sets the video bitrate from the
// network's estimate.
func (c *Call) Congestion() *congestion.Controller { return c.rate }

// Restarts counts the ICE restarts this call made to get its connection back.
func (c *Call) Restarts() int { return int(c.restarts.Load()) }

// ID is a random meeting id for events; it says nothing about the room.
func (c *Call) ID() string { return c.id }

// Leave deletes the WHIP session (the server drops the participant at once)
// and releases camera and microphone.
func (c *Call) Leave(ctx context.Context) error {
	c.leaving() // what follows is our doing, not the call ending by itself
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

// releaseMedia (the lifecycle's release, once) ends the pipelines, then
// the PeerConnection (which stops the encoders reading), and only then
// releases camera and microphone.
func (c *Call) releaseMedia() {
	c.capt.Stop(time.Second)
	_ = c.pc.Close()
	c.capt.Close()
}

// onState turns the connection state into the end of the call: closed at
// once; disconnected or failed only if the connection is not back within
// the grace time (recovery).
func (c *Call) onState(s webrtc.PeerConnectionState) {
	if !c.connected.Load() {
		return // Join is still deciding
	}
	if s == webrtc.PeerConnectionStateClosed {
		go c.end(errors.New("the conference server closed the call"))
		return
	}
	c.recovery.onState(s)
}

// restartICE is one ICE restart over WHIP PATCH (new credentials, fresh
// candidates, so a changed address works too).
func (c *Call) restartICE() error {
	if c.sess == nil {
		return errNoRestart
	}
	ctx, cancel := context.WithTimeout(context.Background(), retryWait)
	defer cancel()
	err := c.sess.RestartICE(ctx)
	switch {
	case errors.Is(err, whip.ErrNotSupported):
		return errNoRestart
	case errors.Is(err, whip.ErrNotFound):
		// The server no longer knows the session: there is nothing to get back.
		go c.end(fmt.Errorf("the conference server ended the session while the connection was down: %w", err))
	case err == nil:
		c.restarts.Add(1)
	}
	return err
}

// end is the call ending by itself. The first reason wins: once ending, the
// connection closing as a result is not news (hence the swap).
func (c *Call) end(err error) {
	byItself, ok := c.claim()
	if !ok {
		return // already ending, or being left
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c.sess != nil {
		_ = c.sess.Delete(ctx) // best effort: the server may be gone
	}
	c.close()
	c.finish(err, byItself)
}
