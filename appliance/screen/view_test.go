package screen

import (
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/gate"
)

// The status bar says in words what the LED means; the self-view is out
// only while both the unit's gate and the display's say so.
func TestViewMirrorsTheLED(t *testing.T) {
	s := &Server{cfg: Config{Room: "R", Language: "en"}}
	for _, c := range []struct {
		st          appliance.Status
		bar, kind   string
		cameraOut   bool
		fault, join bool
	}{
		{appliance.Status{State: appliance.Idle}, "Private: nothing leaves the room", "off", false, false, true},
		{appliance.Status{State: appliance.Joining}, "Connecting…", "busy", false, false, false},
		{appliance.Status{State: appliance.InCall, Gate: gate.State{Video: true, Audio: true}}, "LIVE: camera and microphone on", "live", true, false, false},
		{appliance.Status{State: appliance.InCall, Gate: gate.State{Video: true}}, "LIVE: camera on, microphone off", "live", true, false, false},
		{appliance.Status{State: appliance.InCall, Gate: gate.State{Audio: true}}, "LIVE: microphone on, camera closed", "live", false, false, false},
		{appliance.Status{State: appliance.InCall}, "Private: nothing leaves the room", "private", false, false, false},
		{appliance.Status{State: appliance.Leaving}, "Ending the call…", "busy", false, false, false},
		{appliance.Status{State: appliance.Fault, LastError: "join failed: no media connection to the server"}, "The unit has a fault", "fault", false, true, false},
		{appliance.Status{State: appliance.InCall, Faults: []string{"camera lost: unplugged"}}, "The unit has a fault", "fault", false, true, false},
	} {
		v := s.view(c.st, &display.State{CameraOut: true})
		if v.Bar != c.bar || v.BarKind != c.kind || v.CameraOut != c.cameraOut || (v.Fault != nil) != c.fault || (v.PressJoin != "") != c.join {
			t.Errorf("%+v: view %+v", c.st, v)
		}
	}
	v := s.view(appliance.Status{State: appliance.InCall, Gate: gate.State{Video: true, Audio: true}}, &display.State{CameraOut: false})
	if v.CameraOut {
		t.Error("camera out while the display's gate says it is not")
	}
	since := time.Now().Add(-time.Minute)
	v = s.view(appliance.Status{State: appliance.InCall, Since: since}, &display.State{Far: []display.SlotState{{Slot: 0}, {Slot: 3}}})
	if v.CallSince != since.UnixMilli() || v.Others != 2 || v.OthersTxt != "2 at the far end" {
		t.Errorf("call: %+v", v)
	}
	for _, c := range []struct{ reason, todo string }{
		{"shutter did not close: timeout", "shutter"},
		{"camera lost: device unplugged", "cable"},
		{"join failed: no media connection to the server (ICE/DTLS)", "network"},
		{"something else", "technical support"},
	} {
		v := s.view(appliance.Status{State: appliance.Fault, Faults: []string{c.reason}}, nil)
		if v.Fault == nil || !strings.Contains(v.Fault.Todo, c.todo) || v.Fault.Reasons[0] != c.reason {
			t.Errorf("fault %q: %+v", c.reason, v.Fault)
		}
	}
	for _, lang := range Languages {
		_, tx := textsFor(lang)
		if tx.Notice == "" || tx.Live == "" || tx.TodoOther == "" || len(tx.Shutter) != 5 || !strings.Contains(tx.FarPeople, "%d") {
			t.Errorf("%s: texts incomplete", lang)
		}
	}
}

// The idle screen names the next consultation by its time only, says when
// one is due (JOIN enters it from DueLead before its start), and answers a
// JOIN that found none with "no consultation now", in each language.
func TestViewNamesTheNextConsultation(t *testing.T) {
	var next time.Time
	has := false
	s := &Server{cfg: Config{Room: "R", Language: "en", Next: func() (time.Time, bool) { return next, has }}}
	idle := appliance.Status{State: appliance.Idle}
	if v := s.view(idle, nil); v.Next != "" {
		t.Errorf("no schedule: next %q", v.Next)
	}
	has, next = true, time.Now().Add(2*time.Hour)
	at := next.Local().Format("15:04")
	if v := s.view(idle, nil); v.Next != "Next consultation at "+at {
		t.Errorf("in two hours: next %q", v.Next)
	}
	next = time.Now().Add(5 * time.Minute)
	at = next.Local().Format("15:04")
	if v := s.view(idle, nil); v.Next != "Consultation at "+at+": press JOIN to start" {
		t.Errorf("due: next %q", v.Next)
	}
	if v := s.view(appliance.Status{State: appliance.InCall}, nil); v.Next != "" {
		t.Errorf("in a call the line goes: %q", v.Next)
	}
	has = false
	if v := s.view(appliance.Status{State: appliance.Idle, Notice: "no consultation now"}, nil); v.Next != "No consultation now" {
		t.Errorf("after a JOIN with none due: %q", v.Next)
	}
	for _, lang := range Languages {
		_, tx := textsFor(lang)
		if !strings.Contains(tx.NextAt, "%s") || !strings.Contains(tx.DueAt, "%s") || !strings.Contains(tx.DueAt, "JOIN") || tx.NothingDue == "" {
			t.Errorf("%s: schedule texts %q %q %q", lang, tx.NextAt, tx.DueAt, tx.NothingDue)
		}
	}
}
