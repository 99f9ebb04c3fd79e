package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/enrol"
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

// TestAuditGoesOnAfterTheAgentStops: the fleet agent stops (its queue
// cannot be opened) and the unit runs on without its fleet; what it does
// then is still recorded in its log, and the chain still verifies.
func TestAuditGoesOnAfterTheAgentStops(t *testing.T) {
	f := newFleetSide(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state", "link"), []byte("not a folder"), 0o600); err != nil {
		t.Fatal(err)
	}
	u := startUnit(t, f.unitConfig(filepath.Join(dir, "state"))+"identity_dir = "+quote(filepath.Join(dir, "identity"))+"\n")
	u.logged(t, "fleet agent stopped", 1)
	if err := u.api.Action(context.Background(), "mute"); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "state", "audit", audit.LogFile)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		recs, _ := audit.ReadFile(logPath)
		if n := len(recs); n > 0 && recs[n-1].Kind == audit.KindMuteOn {
			if res := audit.Verify(recs, ""); !res.OK() {
				t.Fatalf("chain: %v", res.Problem)
			}
			return
		}
		if time.Now().After(end) {
			t.Fatalf("mute after the agent stopped is not in the log: %+v", recs)
		}
	}
}

// TestAuditKeptWhileWaitingForEnrolment: a unit that waits for its claim
// code has no agent yet; what it does meanwhile is in its log all the
// same, under the key it enrols with.
func TestAuditKeptWhileWaitingForEnrolment(t *testing.T) {
	f := newEnrolFleet(t)
	dir := t.TempDir()
	u := startUnit(t, f.unitConfig(dir, ""))
	u.within(20*time.Second, "waiting for a claim code", func(s status) bool { return enrolment(s).Phase == enrol.PhaseNeedCode })
	if err := u.api.Action(context.Background(), "privacy"); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "state", "audit", audit.LogFile)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		recs, _ := audit.ReadFile(logPath)
		if n := len(recs); n > 0 && recs[n-1].Kind == audit.KindPrivacyOn {
			if res := audit.Verify(recs, u.status().Fleet.Enrolment.Device); !res.OK() {
				t.Fatalf("chain: %v", res.Problem)
			}
			return
		}
		if time.Now().After(end) {
			t.Fatalf("privacy while waiting for enrolment is not in the log: %+v", recs)
		}
	}
}
