package audioproc

// aligner keeps a reader's position in a stream written on another clock
// (the speaker's). The reader reads one chunk per chunk, so device jitter
// moves the gap to the writer but not the position, and the echo's delay as
// the canceller learnt it stays put: the canceller and the simulated room
// advance together, chunk for chunk, whatever either device's clock does.
// Only when the gap, smoothed over a second or two, leaves [lo, hi] (the
// reader would read what is not yet written, or so old the canceller's tail
// cannot cover it) or the reader has fallen out of the ring is the position
// set again at the lead: a new delay, which the canceller must learn anew.
type aligner struct {
	lead, lo, hi int64
	started      bool
	cursor       int64   // next sample to read (before 0: silence before the first)
	avg          float64 // smoothed gap between the writer and the cursor
}

func newAligner(lead, lo, hi int) aligner {
	return aligner{lead: int64(lead), lo: int64(lo), hi: int64(hi)}
}

// next returns where a read of n samples starts, written samples having
// been written into a ring of capacity, and whether that is a new position.
func (a *aligner) next(written int64, n, capacity int) (start int64, moved bool) {
	if a.started {
		gap := float64(written - a.cursor)
		a.avg += (gap - a.avg) / 100
		lost := written-a.cursor > int64(capacity-n) // about to be overwritten
		if a.avg >= float64(a.lo) && a.avg <= float64(a.hi) && !lost {
			start = a.cursor
			a.cursor += int64(n)
			return start, false
		}
	}
	moved, a.started = a.started, true
	a.cursor = written - a.lead
	a.avg = float64(a.lead)
	start = a.cursor
	a.cursor += int64(n)
	return start, moved
}

// restart makes the next read set the position again, without counting
// as a move.
func (a *aligner) restart() { a.started = false }
