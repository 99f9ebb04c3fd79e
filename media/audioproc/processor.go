package audioproc

import (
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Config chooses what the processor does. Each stage is its own switch
// ([audio] aec, ns, agc).
type Config struct {
	EchoCancel    bool // acoustic echo cancellation against the speaker mix
	NoiseSuppress bool // with EchoCancel, also suppresses the residual echo
	GainControl   bool
	// Rate of the speaker mix and of the microphone (playout.SampleRate);
	// 48000 if zero. A microphone at another rate passes unprocessed.
	Rate int
	// Tail is the longest echo the canceller models, from the reference's
	// alignment on (device delay beyond refLead, and the room's reverb);
	// 200 ms if zero (faster to converge than 300 ms: 35 dB against 30 dB
	// at the far end 10 s into a call, TestFarEndEchoCancelled).
	Tail time.Duration
	// NoTrack turns the delay tracker off (track.go): the echo's delay is
	// then only what the filter learns. Only to measure what it does.
	NoTrack bool
	Log     *slog.Logger
}

// Enabled reports whether any stage is on: with none, the unit needs no
// processor at all.
func (c Config) Enabled() bool { return c.EchoCancel || c.NoiseSuppress || c.GainControl }

const (
	// refCapacity bounds the speaker history kept for the canceller: 2 s
	// (the tracker looks up to trackWin + trackHi back).
	refCapacity = 2 * time.Second
	// refLead is how far behind the newest speaker sample the reference
	// for a microphone frame starts: room for the two devices' jitter and
	// for the speaker falling behind (a loaded machine), so the reference
	// rarely runs out. Any echo delay beyond it is learnt by the filter
	// (and reported as DelayMs); an echo sooner than refLead - frameDur
	// after the tap cannot be cancelled. A unit's ALSA path (playback
	// buffer, 20 ms capture chunks) is slower than that. The reference is
	// realigned (and the filter starts again) only when the smoothed gap
	// leaves 0 to refLead + Tail/2 (aligner).
	refLead = 40 * time.Millisecond
)

// Processor is the microphone's processing: echo cancellation against the
// exact mix handed to the speaker (Render), noise suppression and gain
// control (Process). Render may be called from the speaker's real-time
// callback: it only copies into a bounded ring and never waits on the
// processing. One Processor can serve the unit for as long as it runs; it
// must be Reset on every gate close (capture does).
type Processor struct {
	cfg   Config
	log   *slog.Logger
	frame int // samples per 10 ms

	refMu   sync.Mutex
	ref     []float32 // ring of what the speaker was handed
	written int64     // samples handed so far
	refDrop uint64    // realignments: the reference was lost or ran out

	mu       sync.Mutex // the canceller and the capture side's state
	s        *speex
	align    aligner   // the reference's position for the next microphone frame
	trk      tracker   // the echo's delay, re-estimated (track.go)
	refSnap  []float32 // the reference around the tracker's window, copied
	trkIn    float64   // microphone power before and after the canceller, ~100 ms
	trkOut   float64
	in       []float32 // microphone samples short of a whole frame
	out      []float32 // processed samples not yet handed back
	rframe   []float32
	wrongHz  bool
	frames   uint64
	resets   uint64
	echoIn   float64 // energy in and out over frames with far end playing,
	echoOut  float64 // exponentially weighted (a few seconds)
	lastPeak int
	closed   bool

	last  atomic.Int64 // unix ns of the last processed frame
	erle  atomic.Uint64
	delay atomic.Int64
}

// New makes the processor.
func New(cfg Config) (*Processor, error) {
	if cfg.Rate == 0 {
		cfg.Rate = 48000
	}
	if cfg.Tail == 0 {
		cfg.Tail = 200 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	frame := cfg.Rate / 100
	p := &Processor{cfg: cfg, log: cfg.Log, frame: frame, rframe: make([]float32, frame), lastPeak: -1,
		align: newAligner(samples(refLead, cfg.Rate), 0, samples(refLead+cfg.Tail/2, cfg.Rate))}
	p.ref = make([]float32, samples(refCapacity, cfg.Rate))
	p.trk = newTracker(cfg.Rate, samples(cfg.Tail, cfg.Rate))
	s, err := newSpeex(frame, samples(cfg.Tail, cfg.Rate), cfg.Rate, cfg.EchoCancel, cfg.NoiseSuppress, cfg.GainControl)
	if err != nil {
		return nil, fmt.Errorf("audio processing: %w", err)
	}
	p.s = s
	p.erle.Store(math.Float64bits(math.NaN()))
	p.delay.Store(-1)
	return p, nil
}

func samples(d time.Duration, rate int) int { return int(d * time.Duration(rate) / time.Second) }

// Config is what the processor was made with.
func (p *Processor) Config() Config { return p.cfg }

// Render takes what is handed to the speaker, mono at Rate: the echo
// reference. It must be the exact mix played (playout's tap), not the
// remote tracks: the echo is of what the room heard.
func (p *Processor) Render(mix []float32) {
	if p == nil || !p.cfg.EchoCancel {
		return
	}
	p.refMu.Lock()
	defer p.refMu.Unlock()
	n := int64(len(p.ref))
	for _, v := range mix {
		p.ref[p.written%n] = v
		p.written++
	}
}

// reference copies the far end paired with the next microphone frame into
// p.rframe. Called with p.mu held.
func (p *Processor) reference() {
	p.refMu.Lock()
	defer p.refMu.Unlock()
	start, moved := p.align.next(p.written, p.frame, len(p.ref))
	if moved {
		p.refDrop++
		p.trk.forget()
		p.s.reset() //nolint:errcheck // a failed preprocessor is made again at the next reset
	}
	n := int64(len(p.ref))
	for i := range p.rframe {
		j := start + int64(i)
		if j >= p.written || j < p.written-n || j < 0 {
			p.rframe[i] = 0 // not played yet (jitter beyond the lead)
			continue
		}
		p.rframe[i] = p.ref[j%n]
	}
}

// Process cleans pcm (mono, at rate) in place. It keeps at most one 10 ms
// frame between calls; a microphone whose chunks are whole 10 ms frames (20
// ms, as mediadevices delivers) gets its own samples back with no added
// delay.
func (p *Processor) Process(pcm []float32, rate int) error {
	if p == nil {
		return nil // no processing configured: a nil *Processor passes audio through
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(pcm) == 0 {
		return nil
	}
	if rate != p.cfg.Rate {
		if !p.wrongHz {
			p.wrongHz = true
			p.log.Warn("audio processing off: the microphone's rate is not the speaker's", "mic_hz", rate, "speaker_hz", p.cfg.Rate)
		}
		return fmt.Errorf("audio processing: microphone at %d Hz, speaker at %d Hz", rate, p.cfg.Rate)
	}
	p.in = append(p.in, pcm...)
	done := 0
	for len(p.in)-done >= p.frame {
		p.frameOnce(p.in[done : done+p.frame])
		p.out = append(p.out, p.in[done:done+p.frame]...)
		done += p.frame
	}
	p.in = append(p.in[:0], p.in[done:]...)
	if short := len(pcm) - len(p.out); short > 0 {
		// The first chunk of a size that is not whole frames: begin with
		// silence, once, so every later chunk has its samples ready.
		p.out = append(make([]float32, short, short+len(p.out)), p.out...)
	}
	copy(pcm, p.out)
	p.out = append(p.out[:0], p.out[len(pcm):]...)
	p.last.Store(time.Now().UnixNano())
	return nil
}

// erleWeight: each far-end frame's share of the ERLE average (~5 s).
const erleWeight = 1.0 / 500

func (p *Processor) frameOnce(f []float32) {
	if p.cfg.EchoCancel {
		p.reference()
	}
	ein := power(f)
	if p.cfg.EchoCancel {
		p.trk.add(f)
	}
	p.s.process(f, p.rframe)
	p.frames++
	if !p.cfg.EchoCancel {
		return
	}
	// The last ~100 ms's echo in and out: the tracker moves the reference
	// only while the canceller has lost the echo.
	p.trkIn += 0.1 * (ein - p.trkIn)
	p.trkOut += 0.1 * (power(f) - p.trkOut)
	if p.frames%trackEvery == 0 && !p.cfg.NoTrack {
		p.track(p.trkOut > p.trkIn/4) // under 6 dB
	}
	// ERLE over frames where the far end plays: what the microphone heard
	// over what is left. With the room talking too it reads low (a bound).
	if power(p.rframe) > 1e-6 {
		p.echoIn += erleWeight * (ein - p.echoIn)
		p.echoOut += erleWeight * (power(f) - p.echoOut)
		if p.echoOut > 0 && p.echoIn > 0 {
			p.erle.Store(math.Float64bits(10 * math.Log10(p.echoIn/p.echoOut)))
		}
	}
	if p.frames%100 == 0 {
		if k := p.s.peakLag(); k >= 0 {
			p.delay.Store(int64((time.Duration(k)*time.Second/time.Duration(p.cfg.Rate) + refLead) / time.Millisecond))
		}
	}
}

// track runs the tracker over a copy of the reference around its window
// (the speaker's callback never waits on the estimate) and moves the
// reference's position as it says.
func (p *Processor) track(lost bool) {
	t := &p.trk
	if t.n < int64(len(t.mic)) {
		return
	}
	margin := int64(4 * t.blk)
	p.refMu.Lock()
	end := p.align.cursor
	first := end - int64(t.win) - int64(t.hi) - margin
	oldest, written := p.written-int64(len(p.ref)), p.written
	// Lags before 0 need the reference after the paired one: as far as it
	// has been written.
	t.lo = max(samples(trackLo*time.Millisecond, p.cfg.Rate), -int(written-end-margin)/t.blk*t.blk)
	last := end - int64(t.lo) + margin
	if t.lo > t.hi-100*t.blk || first < 0 || first < oldest || last > written {
		p.refMu.Unlock()
		return // not all of it at hand: no estimate this time
	}
	p.refSnap = p.refSnap[:0]
	n := int64(len(p.ref))
	for j := first; j < last; j++ {
		p.refSnap = append(p.refSnap, p.ref[j%n])
	}
	p.refMu.Unlock()
	snap := p.refSnap
	refAt := func(j int64) (float32, bool) {
		if j < first || j >= last {
			return 0, false
		}
		return snap[j-first], true
	}
	shift := t.step(refAt, end, lost)
	if shift == 0 {
		return
	}
	p.refMu.Lock()
	p.align.cursor -= int64(shift)
	// A gap restores the aligner's gap (written - cursor); a device
	// buffer longer than assumed gives it a new one: the aligner's window
	// (and where it would realign) moves there, so it keeps the delay.
	if gap := p.written - p.align.cursor; gap < p.align.lo || gap > p.align.hi {
		below, above := p.align.lead-p.align.lo, p.align.hi-p.align.lead
		p.align.lead, p.align.lo, p.align.hi = gap, gap-below, gap+above
		p.align.outSince = time.Time{}
	}
	p.refMu.Unlock()
	p.log.Debug("audio processing: the echo's delay moved (a gap in a device's stream): reference moved with it", "ms", shift*1000/p.cfg.Rate)
}

func power(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return s / float64(len(x))
}

// Reset forgets every microphone sample the processor holds: the partial
// frame, processed samples not yet handed back, the canceller's filter and
// buffers, the noise estimate and the gain. Call it whenever the gate
// closes the microphone (capture does), so nothing heard before a mute can
// come out after it. The far end is kept: it is not the room.
func (p *Processor) Reset() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.in)
	clear(p.out)
	p.in, p.out = p.in[:0], p.out[:0]
	p.align.restart()
	p.trk.forget()
	clear(p.trk.mic)
	if p.s != nil {
		if err := p.s.reset(); err != nil {
			p.log.Warn("audio processing: reset failed: noise suppression and gain control off", "err", err)
		}
	}
	p.resets++
}

// Skip says n microphone samples were captured but dropped before
// processing (capture's backlog drop): the reference skips as much, so the
// echo's delay as the filter learnt it stays true.
func (p *Processor) Skip(n int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.align.started {
		p.align.cursor += int64(n)
	}
	p.trk.discontinue()
}

// Close releases the canceller; Process passes audio through after.
func (p *Processor) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.s != nil {
		p.s.free()
		p.s = nil
	}
}

// Stats is what roomctl status and doctor show.
type Stats struct {
	EchoCancel    bool `json:"aec"`
	NoiseSuppress bool `json:"ns"`
	GainControl   bool `json:"agc"`
	// Active: microphone frames went through in the last second.
	Active bool `json:"active"`
	// ERLE (dB) over the last few seconds the far end played, and kept
	// after the call: microphone power over what the canceller left.
	// ERLEKnown is false until the far end has played.
	ERLEKnown bool    `json:"erle_known"`
	ERLE      float64 `json:"erle_db"`
	// DelayMs is the echo's delay from the speaker tap to the processing
	// of the microphone chunk that holds it (so up to a chunk more than the
	// acoustic and device delay), from the peak of the canceller's filter;
	// -1 until estimated.
	DelayMs int `json:"delay_ms"`
	// Frames: 10 ms microphone frames processed. Realigned: the speaker
	// and microphone drifted apart and the canceller started again.
	// Resets: gate closes.
	Frames    uint64 `json:"frames"`
	Realigned uint64 `json:"realigned"`
	Resets    uint64 `json:"resets"`
	// DelayShifts: the echo's delay moved (a gap in the speaker's or the
	// microphone's stream) and the reference moved with it, the filter
	// kept (track.go).
	DelayShifts uint64 `json:"delay_shifts"`
}

// Stats reports the processor's state; safe from any goroutine.
func (p *Processor) Stats() Stats {
	if p == nil {
		return Stats{DelayMs: -1}
	}
	s := Stats{EchoCancel: p.cfg.EchoCancel, NoiseSuppress: p.cfg.NoiseSuppress, GainControl: p.cfg.GainControl}
	s.Active = time.Since(time.Unix(0, p.last.Load())) < time.Second
	if e := math.Float64frombits(p.erle.Load()); !math.IsNaN(e) {
		s.ERLEKnown, s.ERLE = true, math.Round(e*10)/10
	}
	s.DelayMs = int(p.delay.Load())
	p.mu.Lock()
	s.Frames, s.Resets, s.DelayShifts = p.frames, p.resets, p.trk.shifts
	p.mu.Unlock()
	p.refMu.Lock()
	s.Realigned = p.refDrop
	p.refMu.Unlock()
	return s
}
