package livekit

import (
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/pion/webrtc/v4"
)

// What a LiveKit server (or anyone who runs one) can make the unit hold.
// docs/LIMITS.md lists them with the figures they were sized from.
const (
	// MaxRecvAudio and MaxRecvVideo bound the receive sections (each a
	// transceiver, and once a track comes, a reader and its buffers) the
	// unit keeps, whoever asks for more: the server's MediaSectionsRequirement
	// or its own offers. A consultation has the patient and a few others
	// (interpreter, relative, a second clinician); the unit's screen shows
	// at most 4 pictures at once (a Raspberry Pi 4 decodes about 4×720p30),
	// so 8 videos is twice what it can show, and 16 voices four times the
	// largest consultation.
	MaxRecvAudio = 16
	MaxRecvVideo = 8

	// MaxSignalMessage bounds one signalling message. The largest a real
	// server sends is a join (or reconnect) response listing the room:
	// about 450 bytes per participant with a camera (three simulcast
	// layers) and a microphone (TestJoinResponseSize), 45 KB for MaxOthers
	// participants; an offer with every section is a few tens of KB.
	// 1 MiB is more than 20 times the largest, and leaves room for rooms
	// of a couple of thousand people.
	MaxSignalMessage = 1 << 20

	// MaxOthers bounds the far-end participants the unit tracks (and names
	// by pseudonym in events). A room of more than 100 is not a
	// consultation; the rest are counted, not tracked.
	MaxOthers = 100
)

// ErrMessageTooBig: the server sent a signalling message over
// MaxSignalMessage; the socket is closed, not read on.
var ErrMessageTooBig = errors.New("the conference server sent a signalling message over the 1 MiB limit")

// Backoff between leave/rejoin cycles: a server that drops the unit again
// right after every reconnect is answered ever more slowly, up to
// maxCycleBackoff (or half the grace time, so the call is not lost to the
// wait alone), and a connection that stays up stableAfter starts again
// from firstBackoff.
const (
	firstBackoff    = 200 * time.Millisecond
	maxCycleBackoff = 5 * time.Second
)

// stableAfter: a variable so that tests need not wait half a minute.
var stableAfter = 30 * time.Second

// cycleBackoff is the pause before the first attempt after the signalling
// of a connection that came up at upAt was lost, and the next flap count.
func cycleBackoff(flaps int, upAt, now time.Time, grace time.Duration) (time.Duration, int) {
	if upAt.IsZero() || now.Sub(upAt) >= stableAfter {
		flaps = 0
	} else {
		flaps++
	}
	d := firstBackoff << min(flaps, 10)
	d = min(d, backoffCap(grace))
	return jitter(d), flaps
}

func backoffCap(grace time.Duration) time.Duration {
	return max(firstBackoff, min(maxCycleBackoff, grace/2))
}

// jitter spreads d over [d/2, d]: units that lost the same server do not
// come back in step.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// recvBudget is how many more receive sections of each kind pc may get.
func recvBudget(pc *webrtc.PeerConnection) (audio, video int) {
	a, v := 0, 0
	for _, t := range pc.GetTransceivers() {
		if s := t.Sender(); s != nil && s.Track() != nil {
			continue // the unit's own camera or microphone
		}
		switch t.Kind() {
		case webrtc.RTPCodecTypeAudio:
			a++
		case webrtc.RTPCodecTypeVideo:
			v++
		}
	}
	return max(0, MaxRecvAudio-a), max(0, MaxRecvVideo-v)
}

// offerSections counts an SDP's audio and video sections.
func offerSections(sdp string) (audio, video int) {
	for l := range strings.SplitSeq(sdp, "\n") {
		switch {
		case strings.HasPrefix(l, "m=audio "):
			audio++
		case strings.HasPrefix(l, "m=video "):
			video++
		}
	}
	return audio, video
}

// lineBudget rate-limits a log line that a server can trigger at will: at
// most burst lines per window, then one line saying how many were left out.
type lineBudget struct {
	start   time.Time
	n       int
	skipped int
}

const (
	logBurst  = 20
	logWindow = time.Minute
)

// allow says whether to log now, and how many lines were left out before.
func (b *lineBudget) allow(now time.Time) (bool, int) {
	if now.Sub(b.start) >= logWindow {
		skipped := b.skipped
		b.start, b.n, b.skipped = now, 0, 0
		b.n++
		return true, skipped
	}
	if b.n < logBurst {
		b.n++
		return true, 0
	}
	b.skipped++
	return false, 0
}
