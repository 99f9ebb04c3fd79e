package appliance

import (
	"fmt"
	"testing"
)

// A JOIN with nothing due (ErrNothingDue from the connector, however it
// wraps it) is not a fault: the shutter closes, the unit is back to idle
// with the notice, and the next JOIN clears it and tries again.
func TestNothingDueIsANoticeNotAFault(t *testing.T) {
	w := newWorld(t)
	w.send(inAction{act: ActJoin})
	effs := w.send(inJoinDone{attempt: w.joinAttempt, err: fmt.Errorf("join: conference token: %w", ErrNothingDue)})
	if w.c.state != Leaving || w.shutterOpen || w.c.callErr != "" {
		t.Fatalf("state %s shutter open %v error %q", w.c.state, w.shutterOpen, w.c.callErr)
	}
	if w.c.notice != "no consultation now" {
		t.Fatalf("notice %q", w.c.notice)
	}
	found := false
	for _, e := range effs {
		if ev, ok := e.(effEvent); ok && ev.ev.Type == "call" && ev.ev.Detail == "nothing_due" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no nothing_due event in %#v", effs)
	}
	w.finishShutter(true)
	if w.c.state != Idle || w.led == "fault" {
		t.Fatalf("after the shutter closed: state %s LED %s", w.c.state, w.led)
	}
	w.send(inAction{act: ActJoin})
	if w.c.notice != "" || w.c.state != Joining {
		t.Fatalf("the next JOIN: state %s notice %q", w.c.state, w.c.notice)
	}
}
