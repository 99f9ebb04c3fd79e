package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

func TestCmdToAGroup(t *testing.T) {
	units := map[string][]string{"room-11": {"clinic-a"}, "room-12": {"clinic-a"}, "room-13": {"clinic-a"}}
	f := startFleet(t, units)
	f.startUnit("room-11", units["room-11"])
	f.startUnit("room-12", units["room-12"])
	f.startUnit("room-13", units["room-13"]).stop()

	out, errOut, err := f.fleetctl("cmd", "--key", f.key, "--group", "clinic-a", "identify", "--seconds", "30", "--wait", "5s")
	t.Logf("fleetctl cmd --group clinic-a identify:\n%s%sfleetctl: %v", errOut, out, err)
	if err == nil || !strings.Contains(err.Error(), "identify for group clinic-a: 1 of 3 units did not carry it out (1 offline)") {
		t.Fatalf("cmd identify: %v\n%s", err, out)
	}
	for _, id := range []string{"room-11", "room-12"} {
		if r := row(t, out, id); r[1] != "done" || r[2] == "-" {
			t.Errorf("%s: %q", id, r)
		}
	}
	if r := row(t, out, "room-13"); r[1] != "offline" || !strings.Contains(r[3], "runs it if it is back before") {
		t.Errorf("room-13: %q", r)
	}
}

func TestCmdRefused(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	f.startUnit("room-12", nil) // a unit that cannot reboot on command
	start := time.Now()
	out, _, err := f.fleetctl("cmd", "--key", f.key, "--device", "room-12", "reboot", "--json")
	if err == nil || !strings.Contains(err.Error(), "1 refused") {
		t.Fatalf("cmd reboot: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cmd waited %s for an answer that came at once", took)
	}
	var res []manager.CmdResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res) != 1 {
		t.Fatalf("cmd --json %q: %v", out, err)
	}
	if r := res[0]; r.Unit != "room-12" || r.Result != "refused" || r.Reason != "failed" || !strings.Contains(r.Message, "cannot restart") {
		t.Fatalf("result %+v", r)
	}

	// A unit that was never seen: the command waits in the broker, and
	// fleetctl says nobody answered.
	out, _, err = f.fleetctl("cmd", "--key", f.key, "--device", "room-99", "leave", "--wait", "1s")
	if err == nil || row(t, out, "room-99")[1] != "never seen" {
		t.Fatalf("cmd to an unknown unit: %v\n%s", err, out)
	}
}

// doctor brings each unit's self-check back; a failed check fails the
// command, as roomctl doctor does on the unit, and names unit and check.
func TestCmdDoctor(t *testing.T) {
	units := map[string][]string{"room-11": {"clinic-a"}, "room-12": {"clinic-a"}}
	f := startFleet(t, units)
	withDoctor := func(checks ...fleet.DoctorCheck) unitOpt {
		return func(o *agent.Options, _ *testUnit) {
			o.Doctor = func(context.Context) []fleet.DoctorCheck { return checks }
		}
	}
	f.startUnit("room-11", units["room-11"], withDoctor(
		fleet.DoctorCheck{Name: "board", OK: true, Detail: "pi4: gpiochip0"},
		fleet.DoctorCheck{Name: "camera", OK: true, Detail: "/dev/video0 (C920)"}))
	f.startUnit("room-12", units["room-12"], withDoctor(
		fleet.DoctorCheck{Name: "board", OK: true, Detail: "pi4: gpiochip0"},
		fleet.DoctorCheck{Name: "shutter", OK: false, Detail: "open sensor (pin 29) never went high", Fix: "check the wire on pin 29"}))

	out, errOut, err := f.fleetctl("cmd", "--key", f.key, "--group", "clinic-a", "doctor", "--wait", "5s")
	t.Logf("fleetctl cmd --group clinic-a doctor:\n%s%sfleetctl: %v", errOut, out, err)
	if err == nil || !strings.Contains(err.Error(), "1 check(s) failed (room-12: shutter)") {
		t.Fatalf("doctor with a failed check: %v", err)
	}
	for _, want := range []string{
		"room-11\n  ok    board            pi4: gpiochip0\n  ok    camera           /dev/video0 (C920)\n",
		"room-12\n  ok    board            pi4: gpiochip0\n  FAIL  shutter          open sensor (pin 29) never went high\n" +
			"                         fix: check the wire on pin 29\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks\n%s", want)
		}
	}

	// All well: exit status 0.
	out, _, err = f.fleetctl("cmd", "--key", f.key, "--device", "room-11", "doctor", "--wait", "5s", "--json")
	var res []manager.CmdResult
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || len(res) != 1 || len(res[0].Checks) != 2 {
		t.Fatalf("doctor room-11 --json: %v\n%s", err, out)
	}
}

// fakeIdentity is an enrolled unit's certificate as the agent reports it.
type fakeIdentity struct{ r fleet.IdentityReport }

func (f fakeIdentity) Report() *fleet.IdentityReport   { r := f.r; return &r }
func (f fakeIdentity) InstallCertificate(string) error { return errors.New("not in this test") }

// A unit whose certificate is due, and one whose certificate ran out: status
// says so in time, because nobody running fleetctl renew means the unit
// drops off the fleet on its certificate's last day.
func TestStatusShowsCertificatesDue(t *testing.T) {
	units := map[string][]string{"room-11": nil, "room-12": nil, "room-13": nil}
	f := startFleet(t, units)
	withIdentity := func(r fleet.IdentityReport) unitOpt {
		return func(o *agent.Options, _ *testUnit) { o.Identity = fakeIdentity{r} }
	}
	due := time.Now().Add(20 * 24 * time.Hour).UTC()
	f.startUnit("room-11", nil, withIdentity(fleet.IdentityReport{Serial: "1", NotAfter: due, RenewalCSR: "-----BEGIN CERTIFICATE REQUEST-----\n..."}))
	f.startUnit("room-12", nil, withIdentity(fleet.IdentityReport{Serial: "2", NotAfter: time.Now().Add(80 * 24 * time.Hour)}))
	f.startUnit("room-13", nil, withIdentity(fleet.IdentityReport{Serial: "3", NotAfter: time.Now().Add(-time.Hour), LastRenewalError: "certificate is for another unit"}))

	out := statusWhen(t, func() (string, string, error) { return f.fleetctl("status") }, "certificate expired", "asks for renewal")
	if r := row(t, out, "room-11"); !strings.Contains(r[8], "certificate expires "+clock(due)) || !strings.Contains(r[8], "fleetctl renew") {
		t.Errorf("a unit asking for renewal: %q", r)
	}
	if r := row(t, out, "room-12"); strings.Contains(strings.Join(r, " "), "certificate") {
		t.Errorf("a unit with 80 days left has a note: %q", r)
	}
	if r := row(t, out, "room-13"); !strings.Contains(r[8], "certificate expired") || !strings.Contains(r[8], "last renewal not installed: certificate is for another unit") {
		t.Errorf("a unit whose certificate ran out: %q", r)
	}
}
