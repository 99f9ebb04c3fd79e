package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/audit"
)

// TestStandaloneAuditAcrossFactoryReset (issue 24): with the fleet off the
// unit records privacy and the factory reset itself in its own log; after
// the reset a new chain starts whose first record says a reset happened,
// under the new unit's key.
func TestStandaloneAuditAcrossFactoryReset(t *testing.T) {
	dir := t.TempDir()
	u := startUnit(t, "[fleet]\nenabled = false\n"+dirs(dir))
	logPath := filepath.Join(dir, "state", "audit", audit.LogFile)
	if err := u.api.Action(context.Background(), "privacy"); err != nil {
		t.Fatal(err)
	}
	u.eventually("privacy on", func(s status) bool { return s.Privacy })
	var before []audit.Record
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		before, _ = audit.ReadFile(logPath)
		if n := len(before); n > 0 && before[n-1].Kind == audit.KindPrivacyOn {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the fleet-off unit's log: %+v", before)
		}
	}
	if r := before[0]; r.Kind != audit.KindChainStarted || r.Fields["reason"] != "first_start" {
		t.Fatalf("first record %+v", r)
	}
	if res := audit.Verify(before, ""); !res.OK() {
		t.Fatalf("the unit's own log does not verify: %v", res.Problem)
	}
	factoryReset(t, u, "api")
	u.logged(t, "factory reset: wiped", 1)
	u.logged(t, "msg=ready", 2)
	var after []audit.Record
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		after, _ = audit.ReadFile(logPath)
		if len(after) >= 3 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no new log after the reset: %+v", after)
		}
	}
	first := after[0]
	if first.Kind != audit.KindChainStarted || first.Fields["reason"] != "factory_reset" || first.Chain == before[0].Chain {
		t.Fatalf("the new chain starts with %+v, want a chain_started for factory_reset on a new chain", first)
	}
	if first.Fields["device"] == before[0].Fields["device"] {
		t.Error("the new chain carries the old identity's device id")
	}
	if res := audit.Verify(after, ""); !res.OK() {
		t.Fatalf("the new chain does not verify: %v", res.Problem)
	}
}
