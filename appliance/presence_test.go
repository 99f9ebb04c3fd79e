package appliance

import (
	"testing"

	"github.com/konsult/konsult/media"
)

// Someone at the far end: the participant events carry the pseudonym only;
// the LED says "occupied" while the room is private but not alone, and LIVE
// always wins; the last one leaving, after the grace time, hangs up.
func TestFarEndPresence(t *testing.T) {
	w := inCall(t)
	call := w.c.call
	effs := w.send(inPresence{call: call, p: media.Presence{Participant: "p-0a1b2c3d4e", Joined: true, Others: 1}})
	ev, ok := findEff[effEvent](effs)
	if !ok || ev.ev.Type != "participant" || ev.ev.Detail != "joined" || ev.ev.Participant != "p-0a1b2c3d4e" || ev.ev.Meeting != call.ID() {
		t.Fatalf("participant event: %+v", ev.ev)
	}
	if w.led != "live" {
		t.Fatalf("LED %s with media leaving: LIVE must win", w.led)
	}
	w.send(inAction{act: ActPrivacy})
	if w.led != "in_call_occupied" {
		t.Fatalf("private with someone at the far end: LED %s", w.led)
	}
	w.send(inPresence{call: call, p: media.Presence{Participant: "p-0a1b2c3d4e", Joined: false, Others: 0}})
	if w.led != "in_call_private" {
		t.Fatalf("private and alone: LED %s", w.led)
	}
	w.send(inAlone{call: call})
	if w.c.state != Leaving || w.gate.Live() || w.shutterOpen {
		t.Fatalf("alone past the grace time: state %s gate %+v shutter open %v", w.c.state, w.gate, w.shutterOpen)
	}
}

// Someone who comes back within the grace time keeps the call.
func TestFarEndBackWithinGrace(t *testing.T) {
	w := inCall(t)
	call := w.c.call
	w.send(inPresence{call: call, p: media.Presence{Participant: "p-1", Joined: true, Others: 1}})
	w.send(inPresence{call: call, p: media.Presence{Participant: "p-1", Joined: false, Others: 0}})
	w.send(inPresence{call: call, p: media.Presence{Participant: "p-1", Joined: true, Others: 1}})
	w.send(inAlone{call: call}) // the timer fired just as they came back
	if w.c.state != InCall {
		t.Fatalf("state %s: the far end came back, the call must stay", w.c.state)
	}
}
