package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// A unit on the Konsult image has no login: the fleet manager runs its
// self-check from afar. fleetctl must show the same checks, with the same
// verdicts, as roomctl doctor on the unit, and carry no secret of the unit.
func TestFleetDoctorShowsTheUnitsSelfCheck(t *testing.T) {
	const secret = "doctor-test-api-secret-0123456789abcdef"
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, "[conference]\nurl = \"https://livekit.clinic.example\"\napi_key = \"unit\"\napi_secret = \""+secret+"\"\n", "ward-3")

	local := u.api.Doctor
	checks, err := local(context.Background())
	if err != nil || len(checks) == 0 {
		t.Fatalf("roomctl doctor on the unit: %v (%d checks)", err, len(checks))
	}
	out, err := f.try("cmd", "--key", filepath.Join(f.caDir, "fleet.key"), "--device", id, "doctor", "--wait", "20s")
	t.Logf("fleetctl cmd doctor:\n%s", out)
	failed := 0
	for _, c := range checks {
		mark := "ok  "
		if !c.OK {
			mark, failed = "FAIL", failed+1
		}
		if !strings.Contains(out, mark+"  "+c.Name) {
			t.Errorf("fleetctl does not show %q as %q (the unit's own doctor does)", c.Name, strings.TrimSpace(mark))
		}
	}
	if (failed > 0) != (err != nil) {
		t.Errorf("exit status %v with %d failed check(s) on the unit", err, failed)
	}
	if row := lineWith(out, id); !strings.Contains(row, "done") {
		t.Errorf("the unit's row does not say done: %q", row)
	}
	if strings.Contains(out, secret) {
		t.Error("the unit's API secret reached the fleet in its self-check")
	}
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
