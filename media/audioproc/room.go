package audioproc

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// EchoConfig is the simulated room's acoustic path from the speaker to the
// microphone ([sim.echo]).
type EchoConfig struct {
	Delay         time.Duration // speaker to microphone, device buffers and air
	AttenuationDB float64       // of the direct path: 0 is as loud as played
	Reverb        time.Duration // RT60 of the room's tail; 0: direct path only
	// Only: the microphone hears the echo alone, the simulated
	// microphone's own test tone taken out (echo measurements).
	Only bool
}

// Bounds of EchoConfig (appliance/config checks them too).
const (
	MaxEchoDelay       = 500 * time.Millisecond
	MaxEchoReverb      = 500 * time.Millisecond
	MaxEchoAttenuation = 60.0
)

// Check says what is out of range.
func (c EchoConfig) Check() error {
	switch {
	case c.Delay < 0 || c.Delay > MaxEchoDelay:
		return fmt.Errorf("sim.echo.delay %v: want 0 to %v", c.Delay, MaxEchoDelay)
	case c.AttenuationDB < 0 || c.AttenuationDB > MaxEchoAttenuation:
		return fmt.Errorf("sim.echo.attenuation_db %g: want 0 to %g", c.AttenuationDB, MaxEchoAttenuation)
	case c.Reverb < 0 || c.Reverb > MaxEchoReverb:
		return fmt.Errorf("sim.echo.reverb %v: want 0 to %v", c.Reverb, MaxEchoReverb)
	}
	return nil
}

// reflections is how many discrete echoes make the reverberant tail: a
// sparse impulse response, cheap enough to run on every microphone sample
// (64 multiply-adds) yet a filter the canceller has to learn, not a delay.
const reflections = 64

// echoCapacity bounds the speaker history the room keeps: the longest delay
// and tail, plus slack for the two devices' jitter.
const echoCapacity = 48000 * 3 / 2

// EchoPath is the simulated room: what the speaker plays (Play, from
// playout's tap) comes back into the simulated microphone (AddTo) later,
// quieter, with a short reverberation. Both sides run in real time on their
// own clocks; the microphone keeps its own read position in the speaker's
// stream, so the echo stays in step with what was played, and starts again
// at the configured delay only when the two drift more than maxSlip apart
// (it then hears silence or older sound meanwhile, as if the speaker had
// stalled).
type EchoPath struct {
	rate  int
	only  bool
	delay int       // samples
	taps  []int     // delays of the reflections after the direct path, samples
	gains []float32 // taps' gains (the first is the direct path)

	mu      sync.Mutex
	hist    []float32 // ring of what was played
	written int64     // samples played so far
	align   aligner   // the next speaker sample the microphone hears (direct path)
}

const maxSlip = 150 // ms

// NewEchoPath makes the room for a speaker and microphone at rate.
func NewEchoPath(cfg EchoConfig, rate int) (*EchoPath, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	e := &EchoPath{rate: rate, only: cfg.Only, delay: int(cfg.Delay.Seconds() * float64(rate)), hist: make([]float32, echoCapacity)}
	e.align = newAligner(e.delay, e.delay-maxSlip*rate/1000, e.delay+maxSlip*rate/1000)
	g := float32(math.Pow(10, -cfg.AttenuationDB/20))
	e.taps, e.gains = []int{0}, []float32{g}
	if cfg.Reverb > 0 {
		// Reflections spread over the tail, decaying 60 dB over RT60, with a
		// fixed seed so every run is the same room.
		rt := cfg.Reverb.Seconds()
		r := rand.New(rand.NewPCG(20, 1))
		first := rate / 400 // 2.5 ms: the first wall
		span := int(rt*float64(rate)) - first
		for i := 0; i < reflections && span > 0; i++ {
			d := first + r.IntN(span)
			amp := 0.5 * math.Pow(10, -3*float64(d)/(rt*float64(rate))) // -60 dB at RT60
			if r.IntN(2) == 0 {
				amp = -amp
			}
			e.taps = append(e.taps, d)
			e.gains = append(e.gains, g*float32(amp))
		}
	}
	return e, nil
}

// Play takes what the speaker plays.
func (e *EchoPath) Play(mix []float32) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, v := range mix {
		e.hist[e.written%int64(len(e.hist))] = v
		e.written++
	}
}

// AddTo adds the room's echo to one microphone chunk (mono, at the room's
// rate).
func (e *EchoPath) AddTo(mic []float32) {
	if e == nil {
		return // no simulated room: the microphone as it is
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	n := int64(len(mic))
	// The chunk just read was heard over the last n samples: it ends delay
	// before the speaker's newest sample.
	start, _ := e.align.next(e.written, len(mic), len(e.hist)-e.maxTap())
	start -= n
	oldest := e.written - int64(len(e.hist))
	for i := int64(0); i < n; i++ {
		t := start + i
		var y float32
		for k, d := range e.taps {
			j := t - int64(d)
			if j < 0 || j < oldest || j >= e.written {
				continue
			}
			y += e.gains[k] * e.hist[j%int64(len(e.hist))]
		}
		if e.only {
			mic[i] = y
		} else {
			mic[i] += y
		}
	}
}

func (e *EchoPath) maxTap() int {
	m := 0
	for _, d := range e.taps {
		m = max(m, d)
	}
	return m + e.rate/10
}

// Tap is the speaker side of the chain, for playout's mix tap
// (playout.Config.OnMix, livekit.RTCOptions.OnMix): the mix goes to the
// canceller's reference and to the simulated room. Either may be nil.
func Tap(p *Processor, room *EchoPath) func([]float32) {
	return func(mix []float32) {
		if p != nil {
			p.Render(mix)
		}
		if room != nil {
			room.Play(mix)
		}
	}
}
