package livekit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/playout"
)

// Others is how many far-end participants are in the meeting now.
func (c *RTCCall) Others() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.others)
}

// pseudonym names a participant in events: a keyed hash of the server's
// identity with this call's salt. It cannot be turned back into the
// identity, and it differs from call to call.
func (c *RTCCall) pseudonym(identity string) string {
	m := hmac.New(sha256.New, c.salt)
	m.Write([]byte(identity))
	return "p-" + hex.EncodeToString(m.Sum(nil)[:5])
}

// participant takes the server's news about one participant.
func (c *RTCCall) participant(p *lkp.ParticipantInfo) {
	if p.GetSid() == "" || p.GetIdentity() == c.conn.cfg.Identity {
		return
	}
	c.mu.Lock()
	if p.GetSid() == c.sid {
		c.mu.Unlock()
		return
	}
	_, known := c.others[p.GetSid()]
	var ev *media.Presence
	switch {
	case p.GetState() == lkp.ParticipantInfo_DISCONNECTED && known:
		name := c.others[p.GetSid()]
		delete(c.others, p.GetSid())
		ev = &media.Presence{Participant: name, Joined: false, Others: len(c.others)}
	case p.GetState() != lkp.ParticipantInfo_DISCONNECTED && !known && len(c.others) >= MaxOthers:
		// A server (or a flood of joins) cannot grow the map without limit.
		c.untracked++
		ok, _ := c.farLog.allow(time.Now())
		n := c.untracked
		c.mu.Unlock()
		if ok {
			c.log.Warn("far end: more participants than the unit tracks; not tracked", "max", MaxOthers, "untracked", n)
		}
		return
	case p.GetState() != lkp.ParticipantInfo_DISCONNECTED && !known:
		name := c.pseudonym(p.GetIdentity())
		c.others[p.GetSid()] = name
		ev = &media.Presence{Participant: name, Joined: true, Others: len(c.others)}
	}
	var logIt bool
	var skipped int
	if ev != nil {
		logIt, skipped = c.farLog.allow(time.Now())
	}
	c.mu.Unlock()
	if ev == nil {
		return
	}
	if skipped > 0 {
		c.log.Info("far end: changes not logged (too many)", "count", skipped)
	}
	if logIt {
		c.log.Info("far end", "participant", ev.Participant, "joined", ev.Joined, "others", ev.Others)
	}
	select {
	case <-c.over:
	case c.presence <- *ev:
	default:
		if logIt {
			c.log.Warn("far end: presence event dropped (nobody reading)")
		}
	}
}

// syncOthers takes the room as a join response lists it. After a full
// reconnect, whoever left meanwhile is reported gone; those still there
// keep their SIDs, so they are not announced again.
func (c *RTCCall) syncOthers(ps []*lkp.ParticipantInfo) {
	here := map[string]bool{}
	for _, p := range ps {
		here[p.GetSid()] = true
		c.participant(p)
	}
	c.mu.Lock()
	var gone []string
	for sid := range c.others {
		if !here[sid] {
			gone = append(gone, sid)
		}
	}
	c.mu.Unlock()
	for _, sid := range gone {
		c.participant(&lkp.ParticipantInfo{Sid: sid, State: lkp.ParticipantInfo_DISCONNECTED})
	}
}

func (c *RTCCall) nameOf(streamID string) string {
	sid, _, _ := strings.Cut(streamID, "|")
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.others[sid]; ok {
		return n
	}
	return c.pseudonym(sid)
}

// onTrack plays a remote participant's audio and shows their video, each
// in its own goroutine that ends with the track (or its peer connection).
func (c *RTCCall) onTrack(pc *webrtc.PeerConnection, t *webrtc.TrackRemote) {
	who := c.nameOf(t.StreamID())
	c.log.Info("far end track", "participant", who, "kind", t.Kind().String(), "codec", t.Codec().MimeType)
	go func() {
		var err error
		if t.Kind() == webrtc.RTPCodecTypeAudio {
			err = c.player.PlayAudio(who, t)
		} else {
			// Frames before a keyframe cannot be shown: ask for one.
			err = c.player.ShowVideo(who, t.Codec().MimeType, t, func() {
				_ = pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: uint32(t.SSRC())}})
			})
		}
		if err != nil && !errors.Is(err, playout.ErrClosed) {
			c.log.Debug("far end track ended", "participant", who, "err", err)
		}
	}()
}
