package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/link"
)

// retainedUnder collects the retained messages the broker holds under
// filter, as any dashboard subscribing to it would receive them.
func retainedUnder(t *testing.T, b *brokertest.Broker, filter string) map[string]bool {
	t.Helper()
	c := b.Client(t, b.Admin().Name)
	got := make(chan string, 64)
	tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		if m.Retained() && len(m.Payload()) > 0 {
			got <- m.Topic()
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	out := map[string]bool{}
	deadline := time.After(time.Second)
	for {
		select {
		case topic := <-got:
			out[topic] = true
		case <-deadline:
			c.Disconnect(100)
			return out
		}
	}
}

// TestRevokedUnitIsNamedRevoked: a revoked unit used to stay on the broker
// as "offline" for ever, and made every later push to its group exit 1.
// revoke now clears its retained documents and reminds the fleet manager of
// the ACL; status and push name it revoked from the CA's ledger and push
// leaves it out of its exit status.
func TestRevokedUnitIsNamedRevoked(t *testing.T) {
	realClock(t)
	noSettings(t)
	units := map[string][]string{"ku-a": {"ward"}, "ku-b": {"ward"}}
	c, err := ca.Init(filepath.Join(t.TempDir(), "fleet-ca"), "test fleet")
	if err != nil {
		t.Fatal(err)
	}
	// As fleetctl enrol approve leaves the ledger (brokertest issues the
	// units' certificates itself, outside it).
	if err := c.Update(func(l *ca.Ledger) error {
		for id, g := range units {
			l.Units[id] = &ca.Unit{ID: id, Status: "approved", Groups: g, Decided: time.Now()}
			l.Issued = append(l.Issued, ca.Issued{Serial: "1" + strings.Repeat("0", len(l.Issued)+1), Name: id, Kind: "unit", NotAfter: time.Now().Add(ca.UnitLifetime)})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b := brokertest.Start(t, brokertest.Options{Units: units, CA: c})
	dir, pubs := keys(t)
	f := &testFleet{t: t, b: b, key: filepath.Join(dir, "fleet.key"), pubs: pubs}
	f.startUnit("ku-a", units["ku-a"])
	gone := f.startUnit("ku-b", units["ku-b"])
	if out, errOut, err := f.fleetctl("push", "--key", f.key, "--device", "ku-b", "--version", "1", writeConfig(t, "[call]\nmax_length = \"1h\"\n")); err != nil {
		t.Fatalf("push to ku-b: %v\n%s%s", err, out, errOut)
	}
	gone.stop()

	out, errOut, err := f.fleetctl("revoke", "--ca-dir", c.Dir, "--reason", "stolen", "ku-b")
	if err != nil {
		t.Fatalf("revoke: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(out, "fleetctl acl --ca-dir "+c.Dir) || !strings.Contains(out, "SIGHUP") {
		t.Errorf("revoke does not remind to re-render the ACL:\n%s", out)
	}
	tp := link.Topics{}
	left := retainedUnder(t, b, "konsult/device/ku-b/#")
	for _, topic := range []string{tp.Status("ku-b"), tp.Reported("ku-b"), tp.DeviceConfig("ku-b")} {
		if left[topic] {
			t.Errorf("revoke left %s retained on the broker", topic)
		}
	}
	if len(retainedUnder(t, b, tp.Status("ku-a"))) == 0 {
		t.Errorf("revoke cleared another unit's status")
	}

	out, _, err = f.fleetctl("status", "--ca-dir", c.Dir)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if r := row(t, out, "ku-b"); !strings.Contains(r[len(r)-1], "revoked") || !strings.Contains(r[len(r)-1], "stolen") {
		t.Errorf("status does not name ku-b revoked: %q\n%s", r, out)
	}
	if r := row(t, out, "ku-a"); strings.Contains(strings.Join(r, " "), "revoked") {
		t.Errorf("status calls ku-a revoked: %q", r)
	}

	out, errOut, err = f.fleetctl("push", "--key", f.key, "--ca-dir", c.Dir, "--group", "ward", "--version", "1", "--wait", "5s", writeConfig(t, "[call]\nmax_length = \"2h\"\n"))
	if err != nil {
		t.Fatalf("push to the group exits non-zero because of the revoked unit: %v\n%s%s", err, out, errOut)
	}
	if r := row(t, out, "ku-b"); r[1] != "revoked" {
		t.Errorf("push row for ku-b: %q\n%s", r, out)
	}
	if r := row(t, out, "ku-a"); r[1] != "applied" {
		t.Errorf("push row for ku-a: %q\n%s", r, out)
	}
	t.Logf("push --group ward:\n%s", out)
}
