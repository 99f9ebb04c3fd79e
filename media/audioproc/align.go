package audioproc

// aligner keeps a reader's position in a stream written on another clock
// (the speaker's) a steady lead behind the writer: the microphone reads
// one chunk per chunk, so device jitter moves the gap but not the position,
// and the echo's delay as the filter sees it stays put. Only a sustained
// drift (clock skew, a stall) moves it: when the gap, smoothed over some
// two seconds, is off by more than slip, or the reader has fallen out of
// the ring, the position is set again at the lead.
type aligner struct {
	lead, slip int64
	cursor     int64   // next sample to read; -1 until the first read
	avg        float64 // smoothed gap between the writer and the cursor
}

func newAligner(lead, slip int) aligner {
	return aligner{lead: int64(lead), slip: int64(slip), cursor: -1}
}

// next returns where a read of n samples starts, written samples having
// been written into a ring of capacity, and whether that is a new position.
func (a *aligner) next(written int64, n, capacity int) (start int64, moved bool) {
	if a.cursor >= 0 {
		gap := float64(written - a.cursor)
		a.avg += (gap - a.avg) / 100
		d := a.avg - float64(a.lead)
		lost := written-a.cursor > int64(capacity-n) // about to be overwritten
		if d <= float64(a.slip) && d >= -float64(a.slip) && !lost {
			start = a.cursor
			a.cursor += int64(n)
			return start, false
		}
	}
	moved = a.cursor >= 0
	a.cursor = max(written-a.lead, 0)
	a.avg = float64(a.lead)
	start = a.cursor
	a.cursor += int64(n)
	return start, moved
}
