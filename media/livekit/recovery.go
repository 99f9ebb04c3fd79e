package livekit

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/whip"
)

// settleWait is how long a disconnected connection gets to come back by
// itself (a few lost consent checks) before the unit restarts ICE; retryWait
// is how long each restart gets.
const (
	settleWait = time.Second
	retryWait  = 3 * time.Second
)

// errNoRestart from a recovery's restart: the server cannot restart ICE;
// wait for the connection to come back by itself.
var errNoRestart = errors.New("the server does not take ICE restarts")

// recovery gets a lost media path back without leaving the room, the same
// way for both connectors: they differ only in how ICE is restarted (WHIP
// PATCH, or an offer over the signalling WebSocket). The far end sees the
// picture freeze and resume, never the unit leaving. The gate is untouched:
// nothing is sent while the path is down anyway.
type recovery struct {
	grace   time.Duration
	over    <-chan struct{}      // closed when the call is over
	end     func(error)          // ends the call by itself, with the reason
	restart func() error         // one ICE restart; errNoRestart to stop trying
	log     func(string, ...any) // progress, at info level

	mu   sync.Mutex
	back chan struct{} // non-nil while a recovery runs; closed when the connection is back
}

// onState starts a recovery when the path is lost and ends it when the
// connection is back. Closed is the caller's business (the call is over).
func (r *recovery) onState(s webrtc.PeerConnectionState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch s {
	case webrtc.PeerConnectionStateConnected:
		if r.back != nil {
			close(r.back)
			r.back = nil
		}
	case webrtc.PeerConnectionStateDisconnected, webrtc.PeerConnectionStateFailed:
		if r.back == nil {
			r.back = make(chan struct{})
			go r.run(r.back)
		}
	}
}

// run restarts ICE until the connection is back or the grace time is up.
func (r *recovery) run(back <-chan struct{}) {
	deadline := time.NewTimer(r.grace)
	defer deadline.Stop()
	wait := time.NewTimer(settleWait)
	defer wait.Stop()
	noRestart := false
	for {
		select {
		case <-back:
			r.log("reconnect: media connection back")
			return
		case <-r.over:
			return
		case <-deadline.C:
			r.end(fmt.Errorf("lost the conference server for more than %s: %w", r.grace, whip.ErrICEFailed))
			return
		case <-wait.C:
		}
		if !noRestart {
			switch err := r.restart(); {
			case errors.Is(err, errNoRestart):
				noRestart = true
				r.log("reconnect: the server does not take ICE restarts; waiting for the connection to come back by itself")
			case err != nil:
				r.log("reconnect: ICE restart failed; retrying", "err", err)
			default:
				r.log("reconnect: ICE restarted; waiting for the connection")
			}
		}
		wait.Reset(retryWait)
	}
}
