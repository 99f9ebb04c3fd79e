package livekit

import (
	"context"
	"errors"
	"fmt"
	"time"

	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/whip"
)

// watchSignal gets the signalling back when the WebSocket drops: it
// resumes the session as the same participant (JoinRequest.reconnect with
// our SID), so the far end sees no one leave; or, when the server asks for
// a full reconnect (LeaveRequest action RECONNECT, on the socket or as the
// answer to a resume), it joins again as a new participant with a new peer
// connection and the same capture behind the same gate. It gives up after
// the grace time, and the call ends with the reason.
func (c *RTCCall) watchSignal(sig *signal) {
	select {
	case <-c.over:
		return
	case <-sig.done:
	}
	c.mu.Lock()
	if c.sig == sig {
		c.sig = nil
	}
	rejoin := c.rejoin
	c.mu.Unlock()
	select {
	case <-c.over:
		return
	default:
	}
	if errors.Is(sig.err, ErrMessageTooBig) {
		// Not a lost connection but a server breaking the protocol (or
		// trying to exhaust the unit): a resume would only fetch it again.
		c.log.Error("signalling: the conference server sent an oversized message; ending the call", "limit", MaxSignalMessage)
		c.end(fmt.Errorf("signalling: %w", sig.err))
		return
	}
	if rejoin {
		c.log.Warn("signalling closed for a full reconnect; joining again")
	} else {
		c.log.Warn("signalling lost; resuming the session", "err", sig.err)
	}
	deadline := time.Now().Add(c.grace)
	c.mu.Lock()
	pause, flaps := cycleBackoff(c.flaps, c.upAt, time.Now(), c.grace)
	c.flaps = flaps
	c.mu.Unlock()
	if flaps > 0 {
		c.log.Info("signalling: lost again soon after coming back; waiting longer before the next attempt", "wait", pause.Round(time.Millisecond), "in_a_row", flaps)
	}
	wait := max(pause, firstBackoff)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.over:
			return
		case <-time.After(pause):
		}
		pause, wait = jitter(wait), min(2*wait, max(2*time.Second, backoffCap(c.grace)))
		c.mu.Lock()
		rejoin := c.rejoin
		c.mu.Unlock()
		var next *signal
		var err error
		if rejoin {
			next, err = c.reconnect(time.Until(deadline))
		} else {
			next, err = c.resume(time.Until(deadline))
		}
		if err != nil {
			last = err
			if errors.Is(err, errFullReconnect) {
				c.log.Info("resume refused: the server asks for a full reconnect", "err", err)
				pause = 0
				continue
			}
			c.log.Warn("reconnect failed; retrying", "rejoin", rejoin, "err", err)
			if errors.Is(err, ErrRejected) || errors.Is(err, ErrMessageTooBig) {
				break
			}
			continue
		}
		if rejoin {
			c.rejoins.Add(1)
		} else {
			c.resumes.Add(1)
		}
		c.mu.Lock()
		c.upAt = time.Now()
		c.mu.Unlock()
		go c.watchSignal(next)
		return
	}
	if last != nil {
		c.end(fmt.Errorf("lost the conference server for more than %s (last attempt: %v): %w", c.grace, last, whip.ErrICEFailed))
		return
	}
	c.end(fmt.Errorf("lost the conference server for more than %s: %w", c.grace, whip.ErrICEFailed))
}

// errFullReconnect: the server will not resume the session and asks for a
// full reconnect instead (it has closed the participant).
var errFullReconnect = errors.New("the conference server asks for a full reconnect")

// freshToken is the token for a resume or a rejoin: a new one where the
// unit signs its own (the call may outlast the first), else the server's
// latest refresh.
func (c *RTCCall) freshToken() string {
	if c.conn.cfg.APIKey != "" {
		if t, err := c.conn.token(); err == nil {
			return t
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

func (c *RTCCall) resume(left time.Duration) (*signal, error) {
	tok := c.freshToken()
	c.mu.Lock()
	sid := c.sid
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), min(left, 5*time.Second))
	defer cancel()
	jr := &lkp.JoinRequest{
		ClientInfo:         clientInfo(),
		ConnectionSettings: &lkp.ConnectionSettings{AutoSubscribe: true},
		Reconnect:          true,
		ReconnectReason:    lkp.ReconnectReason_RR_SIGNAL_DISCONNECTED,
		ParticipantSid:     sid,
	}
	sig, first, err := dialSignal(ctx, c.conn.cfg.URL, tok, jr, c.conn.dialer)
	if err != nil {
		return nil, err
	}
	if l := first.GetLeave(); l != nil {
		sig.close()
		if l.GetAction() == lkp.LeaveRequest_RECONNECT {
			c.mu.Lock()
			c.rejoin = true
			c.mu.Unlock()
			return nil, fmt.Errorf("%w (%s)", errFullReconnect, l.GetReason())
		}
		return nil, fmt.Errorf("%w: the server will not resume the session (%s)", ErrRejected, l.GetReason())
	}
	c.mu.Lock()
	pc := c.pc
	c.mu.Unlock()
	if rc := first.GetReconnect(); rc != nil && pc != nil {
		if err := pc.SetConfiguration(c.conn.pcConfig(rc.GetIceServers())); err != nil {
			c.log.Debug("resume: ICE servers not taken", "err", err)
		}
	}
	c.mu.Lock()
	c.sig = sig
	c.negotiating = false // an answer lost with the old socket never comes
	c.lastPong = time.Now()
	c.mu.Unlock()
	go sig.loop(func(r *lkp.SignalResponse) { c.handle(sig, r) })
	// New paths may be needed (the address may have changed): restart ICE.
	c.negotiate(true)
	return sig, nil
}

// rejoinWait bounds one full-reconnect attempt: the join and the new media
// connection.
const rejoinWait = 10 * time.Second

// reconnect is one full-reconnect attempt: the old peer connection goes
// (its senders let go of the camera and microphone tracks; the capture
// keeps running behind the gate), and connect joins again. It returns once
// media flows on the new peer connection.
func (c *RTCCall) reconnect(left time.Duration) (*signal, error) {
	ctx, cancel := context.WithTimeout(context.Background(), min(left, rejoinWait))
	defer cancel()
	c.mu.Lock()
	old := c.pc
	c.pc = nil // its callbacks are not the call's news any more
	if c.pcGone != nil {
		close(c.pcGone)
		c.pcGone = nil
	}
	c.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	s, err := c.connect(ctx, c.freshToken(), true)
	if err != nil {
		return nil, fmt.Errorf("rejoin: %w", err)
	}
	select {
	case <-s.up:
	case <-ctx.Done():
		s.sig.close()
		c.mu.Lock()
		if c.sig == s.sig {
			c.sig = nil
		}
		c.mu.Unlock()
		return nil, fmt.Errorf("rejoin: no media connection within %s: %w", min(left, rejoinWait), whip.ErrICEFailed)
	case <-c.over:
		return nil, fmt.Errorf("rejoin: %w", c.reason())
	}
	c.mu.Lock()
	c.rejoin = false
	c.mu.Unlock()
	c.log.Info("rejoined the room as a new participant")
	return s.sig, nil
}

// onState turns the connection state of the call's peer connection into
// recovery or the end of the call.
func (c *RTCCall) onState(pc *webrtc.PeerConnection, s webrtc.PeerConnectionState) {
	if !c.connected.Load() || c.peer() != pc {
		return // Join is still deciding, or pc has been replaced
	}
	if s == webrtc.PeerConnectionStateClosed {
		// The server closed the media session (DTLS close): as when it
		// closes the participant for a full reconnect. The signalling says
		// what comes next (a leave ends the call, a resume may be answered
		// with a full reconnect); until then it is a lost path, and the
		// call ends if nothing brings it back within the grace time.
		c.log.Warn("the conference server closed the media connection; waiting for the signalling")
		s = webrtc.PeerConnectionStateFailed
	}
	c.recovery.onState(s)
}

// restartOverSignal is one ICE restart: an offer with fresh credentials
// over the WebSocket.
func (c *RTCCall) restartOverSignal() error {
	c.mu.Lock()
	pc := c.pc
	c.negotiating = false // a restart replaces any offer still waiting
	c.mu.Unlock()
	if pc != nil && pc.ConnectionState() == webrtc.PeerConnectionStateClosed {
		return errNoRestart // only a full reconnect brings a closed one back
	}
	c.negotiate(true)
	return nil
}
