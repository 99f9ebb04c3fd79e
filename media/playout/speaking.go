package playout

import (
	"math"
	"sync/atomic"
	"time"
)

// SpeechLevel is the RMS (0..1) above which a far-end voice counts as
// speaking: about -40 dBFS, above a quiet room's noise after Opus, below
// any voice at a normal distance from a microphone.
const SpeechLevel = 0.01

// speakingHold is how long a voice counts as speaking after it was last
// heard above SpeechLevel: the emphasis does not flicker between words.
const speakingHold = 600 * time.Millisecond

// speechLevel is one source's recent loudness, written by its decoder's
// goroutine and read by Speaking.
type speechLevel struct {
	rms atomic.Uint64 // float64 bits, of the last decoded packet
	at  atomic.Int64  // unix nanoseconds of the last packet above SpeechLevel
}

func (l *speechLevel) hear(pcm []float32) {
	if len(pcm) == 0 {
		return
	}
	var sum float64
	for _, v := range pcm {
		sum += float64(v) * float64(v)
	}
	rms := math.Sqrt(sum / float64(len(pcm)))
	l.rms.Store(math.Float64bits(rms))
	if rms >= SpeechLevel {
		l.at.Store(time.Now().UnixNano())
	}
}

// Speaking is the far-end participant (pseudonym) who speaks now: of those
// heard above SpeechLevel within the last speakingHold, the loudest; ""
// when nobody speaks. It reads each source's figure, no audio.
func (p *Player) Speaking() string {
	now := time.Now().UnixNano()
	best, who := -1.0, ""
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.sources {
		if now-s.level.at.Load() > int64(speakingHold) {
			continue
		}
		if r := math.Float64frombits(s.level.rms.Load()); r > best {
			best, who = r, s.participant
		}
	}
	return who
}
