package slatesoak

import (
	"sync"
	"time"
)

// SilenceFrame is the largest Opus frame the unit codes for silence: with
// the gate shut the microphone's samples are zeros, which Opus codes in
// 3 bytes (measured by TestE2EEMute; its encrypted frames are 3 bytes too).
const SilenceFrame = 3

// SentPipeline is how many frames of room sound the encoder may still
// code after the gate shut, before its first silence frame: the chunks it
// had pulled through the gate before (TestE2EEMute sees 3 of 81 bytes).
// Counted in frames, not time: a loaded machine delays the encoder, not
// the gate, which is applied as the encoder pulls.
const SentPipeline = 5

// Sent records every Opus frame the unit codes, with its size and when it
// left the encoder; Transform goes in livekit.Media.SendTransform. It tells
// room sound the unit sent after a press (a leak) from sound sent before it
// that the far end played late.
type Sent struct {
	mu     sync.Mutex
	frames []sentFrame
}

type sentFrame struct {
	at   time.Time
	size int
}

// Transform records an audio frame and passes every frame on unchanged.
func (s *Sent) Transform(kind string, f []byte) ([]byte, error) {
	if kind == "audio" {
		s.mu.Lock()
		s.frames = append(s.frames, sentFrame{time.Now(), len(f)})
		s.mu.Unlock()
	}
	return f, nil
}

// loud counts the room-sound frames the unit coded while shut (from shut
// until reopen): every frame larger than silence after the first silence
// frame, and those before it beyond SentPipeline; all is every frame
// coded then.
func (s *Sent) loud(shut, reopen time.Time) (loud, all int) {
	if s == nil {
		return -1, -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	silent, pre := false, 0
	for _, f := range s.frames {
		if f.at.Before(shut) || !f.at.Before(reopen) {
			continue
		}
		all++
		switch {
		case f.size <= SilenceFrame:
			silent = true
		case !silent:
			pre++
		default:
			loud++
		}
	}
	return loud + max(pre-SentPipeline, 0), all
}
