package link

import (
	"testing"
	"time"
)

// Retries of a fleet that lost its broker together must spread out, within
// a window that doubles per attempt up to the ceiling.
func TestJitterSpreadsAndGrows(t *testing.T) {
	const base, ceiling = time.Second, 60 * time.Second
	for attempt, limit := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, 60 * time.Second, 60 * time.Second} {
		seen := map[time.Duration]bool{}
		var top time.Duration
		for range 200 {
			d := jitter(attempt, base, ceiling)
			if d < 0 || d >= limit {
				t.Fatalf("attempt %d: jitter %s outside [0, %s)", attempt, d, limit)
			}
			seen[d] = true
			top = max(top, d)
		}
		if len(seen) < 150 {
			t.Errorf("attempt %d: only %d distinct delays in 200", attempt, len(seen))
		}
		if top < limit/2 {
			t.Errorf("attempt %d: largest of 200 delays %s, window is %s", attempt, top, limit)
		}
	}
	if d := jitter(1000, base, ceiling); d >= ceiling {
		t.Fatalf("attempt 1000: %s, beyond the ceiling", d)
	}
}
