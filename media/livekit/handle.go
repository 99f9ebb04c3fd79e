package livekit

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/webrtc/v4"
)

// handle takes one message from the server on sig; a socket since
// replaced has nothing more to say.
func (c *RTCCall) handle(sig *signal, r *lkp.SignalResponse) {
	c.mu.Lock()
	pc, current := c.pc, c.sig == sig
	c.mu.Unlock()
	if !current || pc == nil {
		return
	}
	switch m := r.GetMessage().(type) {
	case *lkp.SignalResponse_Answer:
		c.onAnswer(pc, m.Answer)
	case *lkp.SignalResponse_Offer:
		c.onOffer(pc, sig, m.Offer)
	case *lkp.SignalResponse_Trickle:
		var init webrtc.ICECandidateInit
		if err := json.Unmarshal([]byte(m.Trickle.GetCandidateInit()), &init); err == nil {
			if err := c.takeCandidate(init); err != nil {
				c.log.Debug("trickle: candidate of the server dropped", "err", err)
				return
			}
			_ = pc.AddICECandidate(init)
		}
	case *lkp.SignalResponse_Update:
		for _, p := range m.Update.GetParticipants() {
			c.participant(p)
		}
	case *lkp.SignalResponse_MediaSectionsRequirement:
		// More people publish than the offer has receive sections for: add
		// them and offer again, as livekit-client does; never more than the
		// unit can play and show, however many are asked for.
		wantA, wantV := m.MediaSectionsRequirement.GetNumAudios(), m.MediaSectionsRequirement.GetNumVideos()
		roomA, roomV := recvBudget(pc)
		a, v := min(int64(wantA), int64(roomA)), min(int64(wantV), int64(roomV))
		if int64(wantA) > a || int64(wantV) > v {
			c.log.Warn("receive sections: the server asks for more than the unit plays and shows; the rest are not added",
				"audio_asked", wantA, "video_asked", wantV, "audio_added", a, "video_added", v, "max_audio", MaxRecvAudio, "max_video", MaxRecvVideo)
		}
		if err := addReceivers(pc, int(a), int(v)); err != nil {
			c.log.Warn("receive sections", "err", err)
		}
		// Even with nothing added: LiveKit sends 0/0 to have the unit offer
		// again, which binds the track it has just given an existing section.
		c.negotiate(false)
	case *lkp.SignalResponse_RefreshToken:
		c.mu.Lock()
		c.token = m.RefreshToken
		c.mu.Unlock()
	case *lkp.SignalResponse_PongResp:
		c.mu.Lock()
		c.lastPong = time.Now()
		c.mu.Unlock()
	case *lkp.SignalResponse_Pong:
		c.mu.Lock()
		c.lastPong = time.Now()
		c.mu.Unlock()
	case *lkp.SignalResponse_Leave:
		l := m.Leave
		switch l.GetAction() {
		case lkp.LeaveRequest_RESUME:
			c.log.Info("the server asks the unit to resume", "reason", l.GetReason().String())
			sig.close() // watchSignal resumes
		case lkp.LeaveRequest_RECONNECT:
			// The server has closed this participant: join again as a new
			// one, with a new peer connection, the same call.
			c.log.Info("the server asks the unit to reconnect in full", "reason", l.GetReason().String())
			c.mu.Lock()
			c.rejoin = true
			c.mu.Unlock()
			sig.close() // watchSignal rejoins
		default:
			go c.end(fmt.Errorf("the conference server ended the call (%s)", strings.ToLower(strings.TrimPrefix(l.GetReason().String(), "DisconnectReason_"))))
		}
	case *lkp.SignalResponse_Reconnect:
		// Handled by resume, which reads it as the first message.
	}
}
