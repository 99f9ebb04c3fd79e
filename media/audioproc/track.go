package audioproc

import "math"

// tracker re-estimates the echo's delay while the canceller runs. The
// aligner pairs each microphone frame with the reference by counting
// samples on both sides, which holds only while neither device's stream
// has a gap. A speaker underrun (the device played silence the mix never
// had) makes the echo come later by the silence; a microphone overrun or a
// dropped chunk makes it come sooner. Either moves the echo within the
// filter, which then has to learn the room again (seconds, or never when
// gaps keep coming: the QEMU lab's snd-aloop path under TCG), or out of its
// reach. So every trackEvery the tracker finds the lag at which the
// microphone's last trackWin best matches the reference (1 ms envelopes,
// then samples), and when it has moved from the lag the filter learnt,
// steadily, the reference's position moves by as much: the filter's
// learnt room stays valid and nothing is reset.
type tracker struct {
	blk     int       // envelope block: 1 ms
	win     int       // samples of microphone compared
	lo, hi  int       // lags searched, samples (lag: the echo's delay after the paired reference)
	mic     []float32 // ring of the raw microphone, paired contiguously with the reference
	n       int64     // samples in mic since the pairing last changed
	known   bool      // lag0 holds the lag the filter learnt
	lag0    int
	pending int // blocks: a coarse lag seen once, away from lag0
	hasPend bool
	shifts  uint64
	reach   int // the largest lag the filter models well (its tail less a margin)
	target  int // where a first estimate beyond reach puts the echo
}

const (
	trackWin   = 250  // ms of microphone compared
	trackEvery = 10   // frames (10 ms) between estimates
	trackLo    = -30  // ms: an echo sooner than the paired reference (a microphone gap)
	trackHi    = 400  // ms: later (a speaker underrun, and the room's own delay)
	trackMinR  = 0.5  // normalized correlation of the envelopes for an estimate
	trackFloor = 1e-6 // microphone power (-60 dBFS) under which there is no echo to match
)

func newTracker(rate, tail int) tracker {
	blk := rate / 1000
	return tracker{blk: blk, win: trackWin * blk, lo: trackLo * blk, hi: trackHi * blk, mic: make([]float32, trackWin*blk),
		reach: tail - 50*blk, target: 10 * blk}
}

// discontinue forgets the microphone history: the pairing changed.
func (t *tracker) discontinue() { t.n, t.hasPend = 0, false }

// forget: the filter starts again (a reset or a realignment).
func (t *tracker) forget() { t.discontinue(); t.known = false }

func (t *tracker) add(f []float32) {
	w := int64(len(t.mic))
	for _, v := range f {
		t.mic[t.n%w] = v
		t.n++
	}
}

// history copies the microphone's last win samples in order.
func (t *tracker) history() []float32 {
	w := int64(len(t.mic))
	out := make([]float32, w)
	for i := range out {
		out[i] = t.mic[(t.n-w+int64(i))%w]
	}
	return out
}

// estimate returns the echo's lag in samples given refAt (the reference
// sample paired with microphone history sample i at lag 0 is end-win+i,
// end the index after the newest paired one), or false without a clear
// match. coarse only: the 1 ms lag, in samples.
func (t *tracker) estimate(mic []float32, refAt func(j int64) (float32, bool), end int64, coarse bool, around int) (int, bool) {
	b := t.blk
	nb := len(mic) / b
	me := blockEnv(mic, b)
	var mMean float64
	for _, v := range me {
		mMean += v
	}
	mMean /= float64(nb)
	if power(mic) < trackFloor {
		return 0, false
	}
	start := end - int64(len(mic))
	if coarse {
		// The reference's envelope from start-hi to end-lo.
		first := start - int64(t.hi)
		rn := (t.hi-t.lo)/b + nb
		re := make([]float64, rn)
		for k := range re {
			var s float64
			for i := 0; i < b; i++ {
				v, ok := refAt(first + int64(k*b+i))
				if !ok {
					return 0, false
				}
				s += math.Abs(float64(v))
			}
			re[k] = s / float64(b)
		}
		best, bestLag := math.Inf(-1), 0
		for lagB := t.lo / b; lagB <= t.hi/b; lagB++ {
			off := (t.hi/b - lagB) // re index of mic block 0 at this lag
			r := re[off : off+nb]
			var rm, c, r2, m2 float64
			for _, v := range r {
				rm += v
			}
			rm /= float64(nb)
			for i, v := range r {
				dm, dr := me[i]-mMean, v-rm
				c += dm * dr
				r2 += dr * dr
				m2 += dm * dm
			}
			if r2 == 0 || m2 == 0 {
				continue
			}
			if cc := c / math.Sqrt(r2*m2); cc > best {
				best, bestLag = cc, lagB
			}
		}
		if best < trackMinR {
			return 0, false
		}
		return bestLag * b, true
	}
	// Samples, within two blocks of around, over the last quarter of the
	// history (enough for a peak, a quarter of the cost).
	seg := mic[len(mic)*3/4:]
	segStart := end - int64(len(seg))
	best, bestLag := math.Inf(-1), 0
	var m2 float64
	for _, v := range seg {
		m2 += float64(v) * float64(v)
	}
	for lag := around - 2*b; lag <= around+2*b; lag++ {
		var c, r2 float64
		for i, v := range seg {
			r, ok := refAt(segStart + int64(i) - int64(lag))
			if !ok {
				return 0, false
			}
			c += float64(v) * float64(r)
			r2 += float64(r) * float64(r)
		}
		if r2 == 0 {
			continue
		}
		if cc := c / math.Sqrt(r2*m2); cc > best {
			best, bestLag = cc, lag
		}
	}
	return bestLag, !math.IsInf(best, -1)
}

// corrAt is the normalized correlation of the history's last quarter with
// the reference at lag.
func (t *tracker) corrAt(mic []float32, refAt func(j int64) (float32, bool), end int64, lag int) float64 {
	seg := mic[len(mic)*3/4:]
	segStart := end - int64(len(seg))
	var c, r2, m2 float64
	for i, v := range seg {
		r, ok := refAt(segStart + int64(i) - int64(lag))
		if !ok {
			return 0
		}
		c += float64(v) * float64(r)
		r2 += float64(r) * float64(r)
		m2 += float64(v) * float64(v)
	}
	if r2 == 0 || m2 == 0 {
		return 0
	}
	return c / math.Sqrt(r2*m2)
}

func blockEnv(x []float32, b int) []float64 {
	out := make([]float64, len(x)/b)
	for k := range out {
		var s float64
		for _, v := range x[k*b : (k+1)*b] {
			s += math.Abs(float64(v))
		}
		out[k] = s / float64(b)
	}
	return out
}

// step runs an estimate once the history is full and returns how far the
// reference's position must move back (samples; 0: stay).
//
// lost says the canceller has lost the echo (its output is within 6 dB of
// its input): only then does the reference move. A filter that cancels
// well has the delay right, whatever the envelopes say (a room's strong
// reflection can match better than the direct path).
func (t *tracker) step(refAt func(j int64) (float32, bool), end int64, lost bool) int {
	if t.n < int64(len(t.mic)) {
		return 0
	}
	mic := t.history()
	lag, ok := t.estimate(mic, refAt, end, true, 0)
	if debugTrack != nil {
		debugTrack(lag, ok, t)
	}
	if !ok {
		t.hasPend = false
		return 0
	}
	if !t.known {
		// The first clear lag: what the filter is learning. Confirmed by a
		// second estimate at the same place.
		if t.hasPend && iabs(lag-t.pending) <= t.blk {
			fine, ok := t.estimate(mic, refAt, end, false, lag)
			if !ok {
				return 0
			}
			if fine < 0 || fine > t.reach {
				// Beyond what the filter models (a device's buffer longer
				// than refLead assumes): the reference moves to put the
				// echo target into the filter, then the lag is learnt.
				t.shifts++
				t.discontinue()
				return fine - t.target
			}
			t.lag0, t.known, t.hasPend = fine, true, false
			return 0
		}
		t.pending, t.hasPend = lag, true
		return 0
	}
	if iabs(lag-t.lag0) < 2*t.blk || !lost {
		t.hasPend = false // where the filter has it (small drifts it follows itself)
		return 0
	}
	if !t.hasPend || iabs(lag-t.pending) > t.blk {
		t.pending, t.hasPend = lag, true // moved: once is not yet steady
		return 0
	}
	fine, ok := t.estimate(mic, refAt, end, false, lag)
	if !ok {
		return 0
	}
	// A gap leaves nothing of the echo where the filter has it; double
	// talk or a reflection leaves the old lag as good as ever.
	if rNew, rOld := t.corrAt(mic, refAt, end, fine), t.corrAt(mic, refAt, end, t.lag0); rNew < 0.3 || rOld > rNew/2 {
		t.hasPend = false
		return 0
	}
	t.shifts++
	t.discontinue()
	return fine - t.lag0
}

func iabs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

var debugTrack func(lag int, ok bool, t *tracker)
