package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/playout"
)

func remoteVideo(s status, who string) playout.VideoStats {
	if s.Remote == nil {
		return playout.VideoStats{}
	}
	for _, v := range s.Remote.Video {
		if v.Participant == who && !v.Ended {
			return v
		}
	}
	return playout.VideoStats{}
}

func isParticipant(detail string) func(appliance.Event) bool {
	return func(e appliance.Event) bool { return e.Type == "participant" && e.Detail == detail }
}

// The clinic's call, as the room and the far end see it: the unit joins an
// empty room; the patient joins 10 s later and the unit shows and plays
// them; an interpreter joins and leaves; the patient leaves and the unit
// hangs up after the grace time with the shutter closed. Nobody's name or
// identity appears in the unit's events or log.
func TestTwoWayCall(t *testing.T) {
	lk := farend.StartLiveKit(t)
	room := "clinic-two-way"
	u := startUnit(t, connectorConfig("livekit", lk, room, "")+"\n[call]\nleave_when_alone = \"3s\"\n")
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	u.eventually("live in an empty room", func(s status) bool { return s.LED == "live" })

	time.Sleep(10 * time.Second)
	patient := farend.StartFarEnd(t, lk, room, "patient-Jane-Doe", farend.Publish())
	joinedAt := time.Now()
	evs := u.waitFor("patient joined", 20*time.Second, isParticipant("joined"))
	pat := evs[len(evs)-1].Participant
	if pat == "" || strings.Contains(pat, "Jane") || strings.Contains(pat, "patient") {
		t.Fatalf("participant event names %q: want a pseudonym", pat)
	}
	var s status
	deadline := time.Now().Add(20 * time.Second)
	for {
		s = u.status()
		v := remoteVideo(s, pat)
		if v.Frames > 30 && v.FPS >= 15 && s.Remote.EnergyPeak > 0.01 {
			t.Logf("unit shows the patient: %d frames, %.0f fps, %dx%d, first %s after they joined; plays on %q, energy peak %.3f",
				v.Frames, v.FPS, v.Width, v.Height, v.FirstFrameAt.Sub(joinedAt).Round(time.Millisecond), s.Remote.Device, s.Remote.EnergyPeak)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unit does not show/play the patient: %+v", s.Remote)
		}
		time.Sleep(100 * time.Millisecond)
	}
	farWait(t, patient, "the patient sees and hears the unit", 20*time.Second, func(s farend.FarEndStats) bool {
		return s.VideoFrom == "unit-1" && s.FPS >= 15 && s.AudioEnergyPeak > 0.01 && !s.LastFrameIsUniform
	})

	// PRIVACY with someone at the far end: the LED says the room is not alone.
	u.press("privacy")
	u.eventually("occupied LED", func(s status) bool { return s.LED == "in_call_occupied" })
	time.Sleep(500 * time.Millisecond) // a person's second press, not a bounce
	u.press("privacy")
	u.eventually("live again", func(s status) bool { return s.LED == "live" })

	interp := farend.StartFarEnd(t, lk, room, "interpreter-Ali", farend.Publish())
	evs = u.waitFor("interpreter joined", 20*time.Second, isParticipant("joined"))
	inter := evs[len(evs)-1].Participant
	if inter == pat || strings.Contains(inter, "Ali") {
		t.Fatalf("interpreter's pseudonym %q (patient's %q)", inter, pat)
	}
	u.eventually("interpreter shown and heard beside the patient", func(s status) bool {
		return remoteVideo(s, inter).Frames > 10 && s.Remote != nil && s.Remote.AudioSources == 2
	})
	if err := interp.Leave(); err != nil {
		t.Fatal(err)
	}
	evs = u.waitFor("interpreter left", 20*time.Second, isParticipant("left"))
	if evs[len(evs)-1].Participant != inter {
		t.Fatalf("left: %q, want the interpreter %q", evs[len(evs)-1].Participant, inter)
	}
	if st := u.status(); st.State != appliance.InCall {
		t.Fatalf("the patient is still there, but the unit is %s", st.State)
	}

	// The patient leaves: the unit waits the grace time, then hangs up.
	if err := patient.Leave(); err != nil {
		t.Fatal(err)
	}
	u.waitFor("patient left", 20*time.Second, isParticipant("left"))
	left := time.Now()
	evs = u.waitFor("the unit hangs up", 20*time.Second, func(e appliance.Event) bool { return e.Type == "call" && e.Detail == "left" })
	if took := time.Since(left); took < 2500*time.Millisecond {
		t.Fatalf("hung up %s after the last one left: before the 3 s grace time", took)
	}
	if !strings.Contains(evs[len(evs)-1].Reason, "last far-end participant") {
		t.Fatalf("reason %q", evs[len(evs)-1].Reason)
	}
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	if st := u.status(); st.Sim.Shutter.Position != "closed" || st.LED != "off" || st.Gate.Live() {
		t.Fatalf("after hanging up: shutter %s LED %s gate %+v", st.Sim.Shutter.Position, st.LED, st.Gate)
	}
	ps, err := lk.Participants(context.Background(), room)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ps, "unit-1") {
		t.Fatalf("unit still in the room: %v", ps)
	}
	for _, name := range []string{"Jane", "patient-", "interpreter", "Ali"} {
		if strings.Contains(u.logs.String(), name) {
			t.Fatalf("the unit's log names a participant (%q)", name)
		}
	}
}
