package audioproc

import "time"

// aligner keeps a reader's position in a stream written on another clock
// (the speaker's). The reader reads one chunk per chunk, so device jitter
// moves the gap to the writer but not the position, and the echo's delay as
// the canceller learnt it stays put: the canceller and the simulated room
// advance together, chunk for chunk, whatever either device's clock does.
//
// A stalled device (a loaded machine: the speaker's thread or the
// microphone's reader late by hundreds of milliseconds) catches up in a
// burst, and the gap comes back by itself. So the position is set again at
// the lead only when the gap has stayed outside [lo, hi] for outFor of wall
// time (a real drift: one clock faster than the other) or the reader has
// fallen out of the ring (at once): a new delay, which the canceller must
// learn anew.
type aligner struct {
	lead, lo, hi int64
	started      bool
	cursor       int64     // next sample to read (before 0: silence before the first)
	outSince     time.Time // when the gap left [lo, hi]; zero while inside
	now          func() time.Time
}

// outFor is how long the gap may stay out of bounds before the position is
// set again: longer than any stall a device catches up from.
const outFor = 2 * time.Second

func newAligner(lead, lo, hi int) aligner {
	return aligner{lead: int64(lead), lo: int64(lo), hi: int64(hi), now: time.Now}
}

// next returns where a read of n samples starts, written samples having
// been written into a ring of capacity, and whether that is a new position.
func (a *aligner) next(written int64, n, capacity int) (start int64, moved bool) {
	if a.started {
		gap := written - a.cursor
		lost := gap > int64(capacity-n) // about to be overwritten
		keep := !lost
		if gap < a.lo || gap > a.hi {
			t := a.now()
			if a.outSince.IsZero() {
				a.outSince = t
			}
			keep = keep && t.Sub(a.outSince) < outFor
		} else {
			a.outSince = time.Time{}
		}
		if keep {
			start = a.cursor
			a.cursor += int64(n)
			return start, false
		}
	}
	moved, a.started = a.started, true
	a.cursor = written - a.lead
	a.outSince = time.Time{}
	start = a.cursor
	a.cursor += int64(n)
	return start, moved
}

// restart makes the next read set the position again, without counting
// as a move.
func (a *aligner) restart() { a.started = false }
