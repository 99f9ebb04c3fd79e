package slatesoak

import (
	"testing"
	"time"
)

// The send-side judgment catches a unit that goes on coding room sound
// after the shut, and lets the encoder's pipeline of frames pulled before
// it through.
func TestSentLoud(t *testing.T) {
	shut := time.Now()
	at := func(i int) time.Time { return shut.Add(time.Duration(i) * 20 * time.Millisecond) }
	reopen := at(100)
	for _, c := range []struct {
		name  string
		sizes []int
		loud  int
	}{
		{"silence at once", []int{3, 3, 3, 3}, 0},
		{"the pipeline, then silence", []int{81, 81, 81, 3, 3, 3}, 0},
		{"room sound after the silence began", []int{81, 3, 3, 81, 3}, 1},
		{"never silent", []int{81, 81, 81, 81, 81, 81, 81, 81}, 8 - SentPipeline},
	} {
		s := &Sent{}
		s.frames = append(s.frames, sentFrame{shut.Add(-time.Millisecond), 81}) // before the press: not counted
		for i, n := range c.sizes {
			s.frames = append(s.frames, sentFrame{at(i), n})
		}
		s.frames = append(s.frames, sentFrame{reopen, 81}) // after the reopen: not counted
		if loud, all := s.loud(shut, reopen); loud != c.loud || all != len(c.sizes) {
			t.Errorf("%s: loud %d of %d, want %d of %d", c.name, loud, all, c.loud, len(c.sizes))
		}
	}
	var none *Sent
	if loud, all := none.loud(shut, reopen); loud != -1 || all != -1 {
		t.Errorf("not recorded: %d, %d", loud, all)
	}
}
