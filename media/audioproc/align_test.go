package audioproc

import (
	"testing"
	"time"
)

// A stall the devices catch up from keeps the position; a lasting drift
// moves it after outFor; falling out of the ring moves it at once.
func TestAligner(t *testing.T) {
	clock := time.Unix(0, 0)
	a := newAligner(400, 0, 1000)
	a.now = func() time.Time { return clock }
	var written int64 = 10000
	// read is one 100-sample read d after the last; the writer has written
	// w more meanwhile.
	read := func(w int64, d time.Duration) bool {
		written += w
		clock = clock.Add(d)
		_, moved := a.next(written, 100, 48000)
		return moved
	}
	steady := func(n int) (moves int) {
		for i := 0; i < n; i++ {
			if read(100, 2*time.Millisecond) {
				moves++
			}
		}
		return moves
	}
	if s, _ := a.next(written, 100, 48000); s != written-400 {
		t.Fatalf("first read at %d, want %d", s, written-400)
	}
	if m := steady(100); m != 0 {
		t.Fatalf("steady: moved %d times", m)
	}
	// The reader stalls 600 ms while the writer goes on, then catches up
	// in a burst.
	written += 28800
	clock = clock.Add(600 * time.Millisecond)
	for i := 0; i < 288; i++ {
		if read(0, 10*time.Microsecond) {
			t.Fatalf("moved during the reader's catch-up (read %d)", i)
		}
	}
	// The writer stalls 300 ms (the reader runs ahead into silence), then
	// catches up.
	for i := 0; i < 150; i++ {
		if read(0, 2*time.Millisecond) {
			t.Fatalf("moved while the writer stalled (read %d)", i)
		}
	}
	written += 15000
	if m := steady(100); m != 0 {
		t.Fatalf("after the stalls: moved %d times", m)
	}
	// A lasting drift: the writer 20 ms (960) further ahead for good.
	written += 960
	if m := steady(1500); m != 1 {
		t.Errorf("a lasting drift moved the position %d times, want once", m)
	}
	// Out of the ring: at once.
	if !read(48000, 2*time.Millisecond) {
		t.Error("a reader out of the ring was not moved")
	}
}
