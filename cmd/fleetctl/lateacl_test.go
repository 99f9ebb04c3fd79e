package main

import (
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/link"
)

// TestNewUnitGetsGroupConfigAfterLateACL walks the documented order for a
// new unit of a group that already has a config: the unit is approved and
// connects, the fleet manager renders the ACL a few seconds later (a human
// typing fleetctl acl, then reloading Mosquitto). Mosquitto refuses the
// group subscription made before the reload and never hands over the
// retained config by itself; the unit must get it without a restart.
func TestNewUnitGetsGroupConfigAfterLateACL(t *testing.T) {
	units := map[string][]string{"unit-old": {"ward"}, "unit-new": {"ward"}}
	f := startFleet(t, units)
	// The ACL as fleetctl acl rendered it before unit-new was approved.
	before, err := link.ACL(map[string][]string{"unit-old": {"ward"}}, "")
	if err != nil {
		t.Fatal(err)
	}
	f.b.SetACL(before)
	time.Sleep(300 * time.Millisecond) // Mosquitto reloads on SIGHUP asynchronously
	old := f.startUnit("unit-old", units["unit-old"])
	if out, errOut, err := f.fleetctl("push", "--key", f.key, "--group", "ward", "--version", "1", writeConfig(t, "[call]\nmax_length = \"3h\"\n")); err != nil {
		t.Fatalf("push: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(old.lastApplied(), "3h") {
		t.Fatalf("unit-old runs %q", old.lastApplied())
	}

	// Approved: unit-new connects with its groups before the ACL has them.
	paused := time.Now()
	u := f.startUnit("unit-new", units["unit-new"])
	out := statusWhen(t, func() (string, string, error) { return f.fleetctl("status") }, "no config for group ward yet")
	if r := row(t, out, "unit-new"); !strings.Contains(r[len(r)-1], "no config for group ward yet") {
		t.Errorf("status does not say unit-new lacks its group config: %q\n%s", r, out)
	}
	if r := row(t, out, "unit-old"); strings.Contains(strings.Join(r, " "), "no config for group") {
		t.Errorf("status says unit-old lacks a config it runs: %q", r)
	}
	time.Sleep(3*time.Second - time.Since(paused))

	after, err := link.ACL(units, "")
	if err != nil {
		t.Fatal(err)
	}
	f.b.SetACL(after)
	reloaded := time.Now()
	deadline := reloaded.Add(20 * time.Second)
	for !strings.Contains(u.lastApplied(), "3h") {
		if time.Now().After(deadline) {
			t.Fatalf("unit-new never received group ward's config after the ACL reload (runs %q)\nbroker log:\n%s", u.lastApplied(), f.b.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("unit-new applied group ward's config %s after the ACL reload", time.Since(reloaded).Round(100*time.Millisecond))
	out = statusWhen(t, func() (string, string, error) { return f.fleetctl("status") }, "ward v1, ")
	if r := row(t, out, "unit-new"); r[4] != "ward v1" || strings.Contains(strings.Join(r, " "), "no config for group") {
		t.Errorf("status after delivery: %q\n%s", r, out)
	}
}
