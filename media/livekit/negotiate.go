package livekit

import (
	"encoding/json"
	"fmt"
	"strings"

	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/icepolicy"
)

func midToTrack(pc *webrtc.PeerConnection) map[string]string {
	m := map[string]string{}
	for _, t := range pc.GetTransceivers() {
		if s := t.Sender(); s != nil && s.Track() != nil && t.Mid() != "" {
			m[t.Mid()] = s.Track().ID()
		}
	}
	return m
}

// ownSenders counts the unit's own tracks of kind on pc.
func ownSenders(pc *webrtc.PeerConnection, kind webrtc.RTPCodecType) int {
	n := 0
	for _, t := range pc.GetTransceivers() {
		if s := t.Sender(); s != nil && s.Track() != nil && t.Kind() == kind {
			n++
		}
	}
	return n
}

func addReceivers(pc *webrtc.PeerConnection, audio, video int) error {
	for i := 0; i < audio; i++ {
		if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fmt.Errorf("add audio receiver: %w", err)
		}
	}
	for i := 0; i < video; i++ {
		if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fmt.Errorf("add video receiver: %w", err)
		}
	}
	return nil
}

func (c *RTCCall) onCandidate(pc *webrtc.PeerConnection, cand *webrtc.ICECandidate) {
	if cand == nil {
		return
	}
	init := cand.ToJSON()
	c.mu.Lock()
	if c.pc != pc { // gathered by a peer connection since replaced
		c.mu.Unlock()
		return
	}
	sig := c.sig
	if sig == nil {
		c.pendingCands = append(c.pendingCands, init)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.sendCandidate(sig, init)
}

func (c *RTCCall) sendCandidate(sig *signal, init webrtc.ICECandidateInit) {
	b, err := json.Marshal(init)
	if err != nil {
		return
	}
	_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Trickle{Trickle: &lkp.TrickleRequest{
		CandidateInit: string(b), Target: lkp.SignalTarget_PUBLISHER,
	}}})
}

// candidates is the current peer connection's budget of remote candidates.
func (c *RTCCall) candidates() *icepolicy.Candidates {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.remoteCands == nil {
		c.remoteCands = &icepolicy.Candidates{Policy: c.conn.icePolicy()}
	}
	return c.remoteCands
}

// takeCandidate applies the ICE policy to a candidate the server trickled:
// the unit sends connectivity checks to every candidate it takes, so a
// server must not name internal hosts or thousands of addresses.
func (c *RTCCall) takeCandidate(init webrtc.ICECandidateInit) error {
	if strings.TrimSpace(init.Candidate) == "" {
		return nil // end of candidates
	}
	// Counted against the current generation whatever ufrag it claims: only
	// a new remote description starts a new count, else a server could
	// reset it with every trickle.
	return c.candidates().Take("", init.Candidate)
}

// filterRemote drops the candidates of a server's SDP that the ICE policy
// refuses.
func (c *RTCCall) filterRemote(sdp string) string {
	out, dropped, why := c.candidates().FilterSDP(sdp)
	if dropped > 0 {
		c.log.Warn("negotiation: candidates of the server dropped by the ICE policy", "dropped", dropped, "why", why)
	}
	return out
}

func (c *RTCCall) onAnswer(pc *webrtc.PeerConnection, sd *lkp.SessionDescription) {
	c.mu.Lock()
	if sd.GetId() != 0 && sd.GetId() != c.offerID {
		c.mu.Unlock()
		return // the answer to an offer since replaced
	}
	c.mu.Unlock()
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: c.filterRemote(sd.GetSdp())}); err != nil {
		c.log.Warn("negotiation: answer not taken", "err", err)
	}
	c.mu.Lock()
	c.negotiating = false
	again := c.again
	c.again = false
	c.mu.Unlock()
	if again {
		c.negotiate(false)
	}
}

// onOffer answers an offer from the server (not used by LiveKit with one
// peer connection today, but part of the protocol).
func (c *RTCCall) onOffer(pc *webrtc.PeerConnection, sig *signal, sd *lkp.SessionDescription) {
	// Every section of an offer becomes a transceiver: an offer with more
	// than the unit can play and show is refused whole.
	if a, v := offerSections(sd.GetSdp()); a > ownSenders(pc, webrtc.RTPCodecTypeAudio)+MaxRecvAudio || v > ownSenders(pc, webrtc.RTPCodecTypeVideo)+MaxRecvVideo {
		c.log.Warn("negotiation: server offer refused: more media sections than the unit plays and shows",
			"audio", a, "video", v, "max_audio", MaxRecvAudio, "max_video", MaxRecvVideo)
		return
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: c.filterRemote(sd.GetSdp())}); err != nil {
		c.log.Warn("negotiation: server offer not taken", "err", err)
		return
	}
	ans, err := pc.CreateAnswer(nil)
	if err == nil {
		err = pc.SetLocalDescription(ans)
	}
	if err != nil {
		c.log.Warn("negotiation: cannot answer the server", "err", err)
		return
	}
	_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Answer{Answer: &lkp.SessionDescription{Type: "answer", Sdp: ans.SDP, Id: sd.GetId()}}})
}

// negotiate sends a new offer over the WebSocket; one at a time, and one
// more after the answer if something changed meanwhile.
func (c *RTCCall) negotiate(iceRestart bool) {
	c.mu.Lock()
	if iceRestart {
		c.restartICE = true
	}
	if c.negotiating || c.sig == nil || c.pc == nil {
		c.again = true
		c.mu.Unlock()
		return
	}
	c.negotiating = true
	restart := c.restartICE
	c.restartICE = false
	c.offerID++
	id, sig, pc := c.offerID, c.sig, c.pc
	c.mu.Unlock()
	fail := func(err error) {
		c.log.Warn("negotiation failed", "err", err)
		c.mu.Lock()
		c.negotiating = false
		c.mu.Unlock()
	}
	offer, restart, err := c.nextOffer(pc, restart)
	if err != nil {
		fail(err)
		return
	}
	if err := sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Offer{Offer: &lkp.SessionDescription{
		Type: "offer", Sdp: offer.SDP, Id: id, MidToTrackId: midToTrack(pc),
	}}}); err != nil {
		fail(err) // the signal watcher resumes and offers again
		return
	}
	if restart {
		c.restarts.Add(1)
	}
}

// nextOffer is the offer to send: a new one, or, when an earlier offer's
// answer was lost with a signalling socket (the peer connection still
// waits in have-local-offer), that same offer again. pion cannot roll an
// offer back, and a new offer on top of it is refused; without this the
// call stayed in have-local-offer for good, and after an ICE restart the
// server had taken but never answered, media stopped (CI, issue 17 round).
// A restart still wanted is done once the answer is in. It reports
// whether the offer it returns restarts ICE.
func (c *RTCCall) nextOffer(pc *webrtc.PeerConnection, restart bool) (webrtc.SessionDescription, bool, error) {
	if pc.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
		if pend := pc.PendingLocalDescription(); pend != nil {
			c.mu.Lock()
			if restart {
				c.restartICE = true
			}
			c.again = c.again || restart
			c.mu.Unlock()
			return *pend, false, nil
		}
	}
	offer, err := pc.CreateOffer(&webrtc.OfferOptions{ICERestart: restart})
	if err != nil {
		return webrtc.SessionDescription{}, false, err
	}
	if err := pc.SetLocalDescription(offer); err != nil {
		return webrtc.SessionDescription{}, false, err
	}
	return offer, restart, nil
}
