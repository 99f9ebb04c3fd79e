package livekit

import (
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// The signalling socket breaks twice in a row, the second time after the
// server took the unit's ICE-restart offer but before its answer went out
// (CI saw this: two breaks 300 ms apart under load). The unit must offer
// again on the next socket, not try a second offer on top of the
// unanswered one (pion refuses that, and the call stayed stuck in
// have-local-offer with the server's ICE credentials changed under it:
// the far end's picture froze).
func TestResumeAfterLostAnswerOffersAgain(t *testing.T) {
	f := newSigFake(t, func(c *sigConn) {
		switch c.n {
		case 1:
			time.Sleep(300 * time.Millisecond)
			_ = c.ws.Close()
		case 2:
			// Wait for the resume's ICE-restart offer, take it, lose the
			// answer with the socket.
			for deadline := time.Now().Add(5 * time.Second); c.offers.Load() == 0 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond)
			_ = c.ws.Close()
		}
	})
	f.answerOffers = true
	f.loseAnswer = func(c *sigConn) bool { return c.n == 2 }
	h := &countingHandler{}
	conn, _ := sigConnector(t, f, h, 15*time.Second)
	call := sigJoin(t, conn)
	deadline := time.Now().Add(15 * time.Second)
	for {
		pc := call.peer()
		if f.conns.Load() >= 3 && pc != nil && pc.SignalingState() == webrtc.SignalingStateStable &&
			pc.ConnectionState() == webrtc.PeerConnectionStateConnected && call.Restarts() >= 2 {
			break
		}
		if time.Now().After(deadline) {
			h.mu.Lock()
			log := h.text.String()
			h.mu.Unlock()
			state := "none"
			if pc != nil {
				state = pc.SignalingState().String() + "/" + pc.ConnectionState().String()
			}
			t.Fatalf("after two breaks (the second with the answer lost) the call is %s, connections %d, ICE restarts %d; log:\n%s",
				state, f.conns.Load(), call.Restarts(), log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.mu.Lock()
	failed := h.msgs["negotiation failed"]
	h.mu.Unlock()
	if failed > 0 {
		t.Errorf("%d negotiations failed", failed)
	}
}
