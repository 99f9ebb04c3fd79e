package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
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
	var res []cmdResult
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
