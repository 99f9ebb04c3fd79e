package appliance

import "testing"

// A booked consultation that is due shows on the LED while the unit is
// idle: a pattern of its own, so staff know to press JOIN. LIVE, a call, a
// fault and identify always win; when nothing is due the LED is off again.
func TestConsultationDueShowsOnTheLEDWhileIdle(t *testing.T) {
	w := newWorld(t)
	w.send(inDue{on: true})
	if w.led != "consultation_due" {
		t.Fatalf("idle with a consultation due: LED %s", w.led)
	}
	w.send(inIdentify{seq: 1, on: true})
	if w.led != "identify" {
		t.Fatalf("identify asked while due: LED %s, identify must win", w.led)
	}
	w.send(inIdentify{seq: 1})
	w.send(inAction{act: ActJoin})
	if w.led == "consultation_due" {
		t.Fatalf("joining: LED still %s", w.led)
	}
	w.finishJoin(true, w.joinAttempt)
	w.finishShutter(true)
	if w.led != "live" {
		t.Fatalf("in the consultation: LED %s, want live", w.led)
	}
	w.send(inAction{act: ActLeave})
	w.send(inLeaveDone{})
	w.finishShutter(true)
	if w.c.state != Idle || w.led != "consultation_due" {
		t.Fatalf("left early, still due: state %s LED %s", w.c.state, w.led)
	}
	w.send(inShutterFault{kind: "timeout", detail: "x"})
	if w.led != "fault" {
		t.Fatalf("a fault while due: LED %s", w.led)
	}
	w.send(inShutterFault{kind: "timeout", detail: "x", cleared: true})
	w.send(inDue{on: false})
	if w.led != "off" {
		t.Fatalf("nothing due: LED %s", w.led)
	}
}

type encryptedCall struct {
	*fakeCall
	failures uint64
}

func (c encryptedCall) E2EE() bool                  { return true }
func (c encryptedCall) SafetyCode() string          { return "1978 4840" }
func (c encryptedCall) E2EEDecryptFailures() uint64 { return c.failures }

// The call's end says, for an end-to-end encrypted call, how many far-end
// frames did not decrypt: per call, in the event stream the fleet and the
// audit follow.
func TestCallLeftCountsDecryptFailures(t *testing.T) {
	w := newWorld(t)
	w.send(inAction{act: ActJoin})
	call := encryptedCall{fakeCall: newFakeCall("m-e2ee"), failures: 17}
	w.send(inJoinDone{attempt: w.joinAttempt, call: call})
	w.finishShutter(true)
	effs := w.send(inAction{act: ActLeave})
	var left *Event
	for _, e := range effs {
		if ev, ok := e.(effEvent); ok && ev.ev.Type == "call" && ev.ev.Detail == "left" {
			left = &ev.ev
		}
	}
	if left == nil || left.E2EE == nil || !*left.E2EE || left.DecryptFailures == nil || *left.DecryptFailures != 17 {
		t.Fatalf("call left event: %+v", left)
	}
}
