package appliance

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/konsult/konsult/media/gate"
	"pgregory.net/rapid"
)

type fakeCall struct {
	id    string
	ended chan error
}

func newFakeCall(id string) *fakeCall               { return &fakeCall{id: id, ended: make(chan error, 1)} }
func (c *fakeCall) ID() string                      { return c.id }
func (c *fakeCall) Leave(ctx context.Context) error { return nil }
func (c *fakeCall) Ended() <-chan error             { return c.ended }
func fixedNow() time.Time                           { return time.Unix(0, 0) }
func findEff[T any](effs []any) (T, bool) {
	for _, e := range effs {
		if t, ok := e.(T); ok {
			return t, true
		}
	}
	var zero T
	return zero, false
}

// world drives a core the way the loop would and keeps the physical truth
// the invariants are checked against.
type world struct {
	t    fataler
	c    *core
	gate gate.State
	led  string

	shutterSeq  uint64
	shutterOpen bool // latest commanded
	shutterFine bool // latest move confirmed by the "sensors"
	joinAttempt uint64
	liveCalls   map[Call]bool
	callN       int
}

type fataler interface{ Fatalf(string, ...any) }

func newWorld(t fataler) *world {
	w := &world{t: t, c: newCore(fixedNow), led: "off", liveCalls: map[Call]bool{}}
	w.shutterFine = true
	return w
}

func (w *world) send(in any) []any {
	gateBefore := w.gate
	effs := w.c.handle(in)
	g := gateBefore
	for _, e := range effs {
		switch e := e.(type) {
		case effGate:
			g = e.state
		case effShutter:
			if !e.open && g.Video {
				w.t.Fatalf("after %T: shutter told to close while the gate still lets video out", in)
			}
			w.shutterSeq, w.shutterOpen, w.shutterFine = e.seq, e.open, false
		case effJoin:
			w.joinAttempt = e.attempt
		case effLeave:
			delete(w.liveCalls, e.call)
		case effLED:
			w.led = LEDName(e.state)
		}
	}
	if f, ok := in.(inShutterFault); ok && !f.cleared {
		w.shutterFine = false // the sensors no longer vouch for the position
	}
	w.gate = g
	w.check(in)
	return effs
}

// check asserts the privacy invariants 1-4 of DESIGN.md.
func (w *world) check(in any) {
	c := w.c
	hw := len(c.hwFaults) > 0 || len(c.mediaFaults) > 0
	if w.gate != c.gate {
		w.t.Fatalf("after %T: gate effects say %+v, core says %+v", in, w.gate, c.gate)
	}
	if w.gate.Video && !(c.state == InCall && w.shutterOpen && w.shutterFine && !c.privacy && !hw) {
		w.t.Fatalf("invariant 1 broken after %#v: video out with state=%s shutterOpen=%v confirmed=%v privacy=%v faults=%v",
			in, c.state, w.shutterOpen, w.shutterFine, c.privacy, hw)
	}
	if w.gate.Audio && !(c.state == InCall && !c.mute && !c.privacy && !hw) {
		w.t.Fatalf("invariant 2 broken after %#v: audio out with state=%s mute=%v privacy=%v", in, c.state, c.mute, c.privacy)
	}
	if (w.led == "live") != w.gate.Live() {
		w.t.Fatalf("invariant 3 broken after %#v: LED %s with gate %+v", in, w.led, w.gate)
	}
	if (hw || c.state == Fault || c.state == Idle || c.state == Leaving) && (w.gate.Live() || w.shutterOpen) {
		w.t.Fatalf("invariant 4 broken after %#v: state=%s faults=%v but gate %+v shutterOpen=%v", in, c.state, hw, w.gate, w.shutterOpen)
	}
	if c.resetOn || c.resetting {
		if w.gate.Live() || w.shutterOpen && w.shutterFine {
			w.t.Fatalf("after %#v: live during a factory reset", in)
		}
	} else if c.state == Fault && w.led != "fault" {
		w.t.Fatalf("after %#v: state fault but LED %s", in, w.led)
	}
	if w.led == "identify" && c.state != Idle {
		w.t.Fatalf("after %#v: identify pattern shown in state %s", in, c.state)
	}
	if w.led == "consultation_due" && (c.state != Idle || !c.due || c.identify) {
		w.t.Fatalf("after %#v: consultation-due pattern in state %s (due %v, identify %v)", in, c.state, c.due, c.identify)
	}
	if len(w.liveCalls) > 1 {
		w.t.Fatalf("after %#v: %d calls joined and not left", in, len(w.liveCalls))
	}
}

func (w *world) finishShutter(ok bool) {
	var err error
	if !ok {
		err = errors.New("timeout")
	}
	w.shutterFine = ok // the sensors confirm before the report arrives
	w.send(inShutterDone{seq: w.shutterSeq, open: w.shutterOpen, err: err})
}

func (w *world) finishJoin(ok bool, attempt uint64) Call {
	if !ok {
		w.send(inJoinDone{attempt: attempt, err: errors.New("401 token rejected")})
		return nil
	}
	w.callN++
	call := newFakeCall(fmt.Sprint("m", w.callN))
	w.liveCalls[call] = true
	w.send(inJoinDone{attempt: attempt, call: call})
	return call
}

func TestTransitions(t *testing.T) {
	t.Run("join: InCall and live only after the shutter confirms", func(t *testing.T) {
		w := newWorld(t)
		w.send(inAction{act: ActJoin})
		if w.c.state != Joining || !w.shutterOpen {
			t.Fatalf("JOIN: state %s, shutter commanded open %v", w.c.state, w.shutterOpen)
		}
		w.finishJoin(true, w.joinAttempt)
		if w.c.state != Joining || w.gate.Live() {
			t.Fatalf("joined before shutter confirmed: state %s gate %+v", w.c.state, w.gate)
		}
		w.finishShutter(true)
		if w.c.state != InCall || !w.gate.Video || !w.gate.Audio || w.led != "live" {
			t.Fatalf("after confirm: state %s gate %+v led %s", w.c.state, w.gate, w.led)
		}
	})
	t.Run("privacy shuts the gate before the shutter moves, then in-call private LED", func(t *testing.T) {
		w := inCall(t)
		effs := w.send(inAction{act: ActPrivacy})
		gi, si := -1, -1
		for i, e := range effs {
			switch e.(type) {
			case effGate:
				gi = i
			case effShutter:
				si = i
			}
		}
		if gi < 0 || si < 0 || gi > si {
			t.Fatalf("want gate effect before shutter effect, got %#v", effs)
		}
		if w.gate.Live() || w.led != "in_call_private" || w.c.state != InCall {
			t.Fatalf("privacy: gate %+v led %s state %s", w.gate, w.led, w.c.state)
		}
	})
	t.Run("mute cuts audio only", func(t *testing.T) {
		w := inCall(t)
		w.send(inAction{act: ActMute})
		if w.gate.Audio || !w.gate.Video || w.led != "live" {
			t.Fatalf("mute: gate %+v led %s", w.gate, w.led)
		}
	})
	t.Run("leave then idle once call and shutter are done", func(t *testing.T) {
		w := inCall(t)
		effs := w.send(inAction{act: ActLeave})
		if _, ok := findEff[effLeave](effs); !ok {
			t.Fatal("LEAVE did not hang up the call")
		}
		if w.c.state != Leaving {
			t.Fatalf("state %s", w.c.state)
		}
		w.send(inLeaveDone{})
		w.finishShutter(true)
		if w.c.state != Idle || w.led != "off" {
			t.Fatalf("after leave: state %s led %s", w.c.state, w.led)
		}
	})
	t.Run("shutter fault mid-call leaves, shows fault, recovers when cleared", func(t *testing.T) {
		w := inCall(t)
		w.send(inShutterFault{kind: "moved_by_itself", detail: "open sensor changed"})
		if w.gate.Live() || w.led != "fault" || len(w.liveCalls) != 0 {
			t.Fatalf("fault: gate %+v led %s calls %d", w.gate, w.led, len(w.liveCalls))
		}
		w.send(inLeaveDone{})
		w.finishShutter(true)
		if w.c.state != Fault {
			t.Fatalf("state %s, want fault while the fault is active", w.c.state)
		}
		w.send(inShutterFault{kind: "moved_by_itself", cleared: true})
		if w.c.state != Idle || w.led != "off" {
			t.Fatalf("after clear: state %s led %s", w.c.state, w.led)
		}
	})
	t.Run("join failure is a fault until JOIN retries", func(t *testing.T) {
		w := newWorld(t)
		w.send(inAction{act: ActJoin})
		w.finishJoin(false, w.joinAttempt)
		w.finishShutter(true)
		if w.c.state != Fault || w.led != "fault" || w.c.callErr == "" {
			t.Fatalf("state %s led %s err %q", w.c.state, w.led, w.c.callErr)
		}
		w.send(inAction{act: ActJoin})
		if w.c.state != Joining {
			t.Fatalf("retry: state %s", w.c.state)
		}
	})
	t.Run("a join that completes after LEAVE is hung up", func(t *testing.T) {
		w := newWorld(t)
		w.send(inAction{act: ActJoin})
		stale := w.joinAttempt
		w.send(inAction{act: ActLeave})
		w.finishJoin(true, stale)
		if len(w.liveCalls) != 0 {
			t.Fatal("late join left a call running")
		}
	})
	t.Run("maximum call length hangs up without a fault", func(t *testing.T) {
		w := inCall(t)
		effs := w.send(inMaxLength{call: w.c.call})
		if _, ok := findEff[effLeave](effs); !ok || w.gate.Live() {
			t.Fatalf("max length: no hang-up, or gate still open: %#v", effs)
		}
		w.send(inLeaveDone{})
		w.finishShutter(true)
		if w.c.state != Idle || w.led != "off" {
			t.Fatalf("after max length: state %s led %s", w.c.state, w.led)
		}
	})
	t.Run("identify blinks while idle only and ends with its own timer", func(t *testing.T) {
		w := newWorld(t)
		w.send(inIdentify{seq: 1, on: true})
		if w.led != "identify" {
			t.Fatalf("identify while idle: LED %s", w.led)
		}
		w.send(inAction{act: ActJoin})
		w.finishJoin(true, w.joinAttempt)
		w.finishShutter(true)
		if w.led != "live" {
			t.Fatalf("identify during a live call: LED %s, want live", w.led)
		}
		w.send(inAction{act: ActLeave})
		w.send(inLeaveDone{})
		w.finishShutter(true)
		if w.c.state != Idle || w.led != "identify" {
			t.Fatalf("back to idle with identify still on: state %s LED %s", w.c.state, w.led)
		}
		w.send(inIdentify{seq: 2, on: true})
		w.send(inIdentify{seq: 1}) // the first identify's timer
		if w.led != "identify" {
			t.Fatalf("the first identify's end cut the second short: LED %s", w.led)
		}
		w.send(inShutterFault{kind: "moved_by_itself", detail: "x"})
		if w.led != "fault" {
			t.Fatalf("identify over a fault: LED %s", w.led)
		}
		w.send(inShutterFault{kind: "moved_by_itself", cleared: true})
		w.send(inIdentify{seq: 2})
		if w.led != "off" {
			t.Fatalf("after identify ended: LED %s", w.led)
		}
	})
	t.Run("privacy on before JOIN joins with the shutter closed", func(t *testing.T) {
		w := newWorld(t)
		w.send(inAction{act: ActPrivacyOn})
		w.send(inAction{act: ActJoin})
		w.finishJoin(true, w.joinAttempt)
		if w.c.state != InCall || w.shutterOpen || w.gate.Live() {
			t.Fatalf("state %s shutterOpen %v gate %+v", w.c.state, w.shutterOpen, w.gate)
		}
	})
}

func inCall(t *testing.T) *world {
	w := newWorld(t)
	w.send(inAction{act: ActJoin})
	w.finishJoin(true, w.joinAttempt)
	w.finishShutter(true)
	if w.c.state != InCall {
		t.Fatalf("setup: state %s", w.c.state)
	}
	return w
}

// TestInvariantsUnderRandomEvents drives the core through random sequences of
// every input it can get, in any order, including stale and duplicate
// results, and checks invariants 1–4 after each one.
func TestInvariantsUnderRandomEvents(t *testing.T) {
	actions := []Action{ActJoin, ActLeave, ActPrivacy, ActPrivacyOn, ActPrivacyOff, ActMute, ActMuteOn, ActMuteOff}
	faults := []string{"timeout", "sensors_disagree", "moved_by_itself"}
	rapid.Check(t, func(rt *rapid.T) {
		w := newWorld(rt)
		var calls []Call
		steps := rapid.IntRange(1, 60).Draw(rt, "steps")
		for range steps {
			switch rapid.IntRange(0, 10).Draw(rt, "kind") {
			case 0, 1:
				w.send(inAction{act: rapid.SampledFrom(actions).Draw(rt, "action")})
			case 2:
				w.finishShutter(rapid.Bool().Draw(rt, "shutterOK"))
			case 3:
				attempt := w.joinAttempt
				if rapid.Bool().Draw(rt, "staleJoin") && attempt > 0 {
					attempt--
				}
				if c := w.finishJoin(rapid.Bool().Draw(rt, "joinOK"), attempt); c != nil {
					calls = append(calls, c)
				}
			case 4:
				w.send(inLeaveDone{})
			case 5:
				if len(calls) > 0 {
					w.send(inCallEnded{call: rapid.SampledFrom(calls).Draw(rt, "endedCall"), err: errors.New("server gone")})
				}
			case 6:
				w.send(inShutterFault{kind: rapid.SampledFrom(faults).Draw(rt, "fault"), detail: "x", cleared: rapid.Bool().Draw(rt, "cleared")})
			case 7:
				w.send(inMediaFault{device: rapid.SampledFrom([]string{"camera", "microphone"}).Draw(rt, "dev"), detail: "gone", cleared: rapid.Bool().Draw(rt, "back")})
			case 8:
				// a duplicate, stale shutter report
				w.send(inShutterDone{seq: w.shutterSeq - 1, open: true})
			case 9:
				if len(calls) > 0 {
					w.send(inMaxLength{call: rapid.SampledFrom(calls).Draw(rt, "timedOut")})
				}
			case 10:
				w.send(inIdentify{seq: rapid.Uint64Range(1, 3).Draw(rt, "identifySeq"), on: rapid.Bool().Draw(rt, "identifyOn")})
				if rapid.Bool().Draw(rt, "dueChange") {
					w.send(inDue{on: rapid.Bool().Draw(rt, "due")})
				}
				if rapid.Bool().Draw(rt, "reset") {
					w.send(inHeld{button: rapid.SampledFrom([]string{"privacy", "join", "mute"}).Draw(rt, "held"), down: rapid.Bool().Draw(rt, "down")})
					if rapid.Bool().Draw(rt, "tick") {
						w.send(inResetTick{seq: w.c.resetSeq, final: rapid.Bool().Draw(rt, "final")})
					}
				}
			}
		}
	})
}
