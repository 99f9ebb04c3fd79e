package livekit

import (
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
)

// RequestKeyframe asks the far end for a keyframe of participant's video
// (a PLI on each of their video receivers): the unit's screen, opened mid
// call, can show nothing until one comes. It reports whether a request was
// sent (false: no call media now, or no video from that participant).
//
// The SFU answers a PLI from its own cache or forwards it to the
// publisher; a browser codes the next frame as a keyframe either way.
func (c *RTCCall) RequestKeyframe(participant string) bool {
	pc := c.peer()
	if pc == nil {
		return false
	}
	var pkts []rtcp.Packet
	for _, tr := range pc.GetTransceivers() {
		r := tr.Receiver()
		if r == nil || tr.Kind() != webrtc.RTPCodecTypeVideo {
			continue
		}
		t := r.Track()
		if t == nil || t.SSRC() == 0 || c.nameOf(t.StreamID()) != participant {
			continue
		}
		pkts = append(pkts, &rtcp.PictureLossIndication{MediaSSRC: uint32(t.SSRC())})
	}
	if len(pkts) == 0 {
		return false
	}
	return pc.WriteRTCP(pkts) == nil
}
