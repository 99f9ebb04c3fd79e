package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/link"
)

// retainedUnder is the topics the broker holds retained under filter, as
// any dashboard subscribing to it would receive them.
func retainedUnder(t *testing.T, b *brokertest.Broker, filter string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for topic := range fleettest.RetainedUnder(t, b, filter, time.Second) {
		out[topic] = true
	}
	return out
}

// TestRevokedUnitIsNamedRevoked: a revoked unit used to stay on the broker
// as "offline" for ever, and made every later push to its group exit 1.
// revoke now clears its retained documents and reminds the fleet manager of
// the ACL; status and push name it revoked from the CA's ledger and push
// leaves it out of its exit status.
func TestRevokedUnitIsNamedRevoked(t *testing.T) {
	realClock(t)
	noSettings(t)
	units := map[string][]string{"unit-a": {"ward"}, "unit-b": {"ward"}}
	c, err := ca.Init(filepath.Join(t.TempDir(), "fleet-ca"), "test fleet")
	if err != nil {
		t.Fatal(err)
	}
	// As fleetctl enrol approve leaves the ledger (brokertest issues the
	// units' certificates from c, into this ledger).
	if err := c.Update(func(l *ca.Ledger) error {
		for id, g := range units {
			l.Units[id] = &ca.Unit{ID: id, Status: "approved", Groups: g, Decided: time.Now()}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b := brokertest.Start(t, brokertest.Options{Units: units, CA: c})
	dir, pubs := keys(t)
	f := &testFleet{t: t, b: b, key: filepath.Join(dir, "fleet.key"), pubs: pubs}
	f.startUnit("unit-a", units["unit-a"])
	gone := f.startUnit("unit-b", units["unit-b"])
	if out, errOut, err := f.fleetctl("push", "--key", f.key, "--device", "unit-b", "--version", "1", writeConfig(t, "[call]\nmax_length = \"1h\"\n")); err != nil {
		t.Fatalf("push to unit-b: %v\n%s%s", err, out, errOut)
	}
	gone.stop()

	out, errOut, err := f.fleetctl("revoke", "--ca-dir", c.Dir, "--reason", "stolen", "unit-b")
	if err != nil {
		t.Fatalf("revoke: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(out, "fleetctl acl --ca-dir "+c.Dir) || !strings.Contains(out, "SIGHUP") {
		t.Errorf("revoke does not remind to re-render the ACL:\n%s", out)
	}
	tp := link.Topics{}
	left := retainedUnder(t, b, "konsult/device/unit-b/#")
	for _, topic := range []string{tp.Status("unit-b"), tp.Reported("unit-b"), tp.DeviceConfig("unit-b")} {
		if left[topic] {
			t.Errorf("revoke left %s retained on the broker", topic)
		}
	}
	if len(retainedUnder(t, b, tp.Status("unit-a"))) == 0 {
		t.Errorf("revoke cleared another unit's status")
	}

	out, _, err = f.fleetctl("status", "--ca-dir", c.Dir)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if r := row(t, out, "unit-b"); !strings.Contains(r[len(r)-1], "revoked") || !strings.Contains(r[len(r)-1], "stolen") {
		t.Errorf("status does not name unit-b revoked: %q\n%s", r, out)
	}
	if r := row(t, out, "unit-a"); strings.Contains(strings.Join(r, " "), "revoked") {
		t.Errorf("status calls unit-a revoked: %q", r)
	}

	out, errOut, err = f.fleetctl("push", "--key", f.key, "--ca-dir", c.Dir, "--group", "ward", "--version", "1", "--wait", "5s", writeConfig(t, "[call]\nmax_length = \"2h\"\n"))
	if err != nil {
		t.Fatalf("push to the group exits non-zero because of the revoked unit: %v\n%s%s", err, out, errOut)
	}
	if r := row(t, out, "unit-b"); r[1] != "revoked" {
		t.Errorf("push row for unit-b: %q\n%s", r, out)
	}
	if r := row(t, out, "unit-a"); r[1] != "applied" {
		t.Errorf("push row for unit-a: %q\n%s", r, out)
	}
	t.Logf("push --group ward:\n%s", out)
}
