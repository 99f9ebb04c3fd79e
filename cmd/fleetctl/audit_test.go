package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/fleetd"
	"github.com/konsult/konsult/provisioning/identity"
)

// TestAuditVerifyReportsGaps: fleetd holds records 1-10 and 13-15 of a
// chain whose unit reports 18 sent: verify names 11-12 as missing (the
// chain does not verify) and, once 11-12 arrive, 16-18 as the gap.
func TestAuditVerifyReportsGaps(t *testing.T) {
	dir := t.TempDir()
	k, _, err := identity.LoadOrCreateKey(filepath.Join(dir, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(audit.Options{Dir: filepath.Join(dir, "audit"), Signer: k.Signer()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 17 {
		if _, err := l.Append(audit.KindMuteOn, nil); err != nil {
			t.Fatal(err)
		}
	}
	unit := l.Device()
	db := filepath.Join(dir, "fleetd.db")
	st, err := fleetd.OpenStore(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	recs := l.Records()
	add := func(from, to int) {
		for _, r := range recs[from-1 : to] {
			if err := st.AddAudit(ctx, unit, r.Line(), time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	add(1, 10)
	add(13, 15)
	add(13, 13) // a copy, as QoS 1 may deliver: dropped
	head := recs[len(recs)-1]
	if err := st.SetAuditMark(ctx, unit, fleet.AuditReport{Chain: head.Chain, Sent: 18, Head: 18, HeadHash: head.Hash()}, time.Now()); err != nil {
		t.Fatal(err)
	}
	st.Close()

	var out, errOut strings.Builder
	err = run(ctx, []string{"audit", "verify", "--unit", unit, "--db", db}, &out, &errOut)
	if err == nil || !strings.Contains(out.String(), "FAILED: records 11 to 12 are missing between 10 and 13: deleted") {
		t.Fatalf("verify with a hole: err=%v\n%s", err, out.String())
	}
	st, _ = fleetd.OpenStore(db)
	add(11, 12)
	st.Close()
	out.Reset()
	err = run(ctx, []string{"audit", "verify", "--unit", unit, "--db", db}, &out, &errOut)
	if err == nil || !strings.Contains(out.String(), "INCOMPLETE: the unit reports 18 records sent, fleetd lacks 16-18") {
		t.Fatalf("verify with a tail gap: err=%v\n%s", err, out.String())
	}
	// The same with everything there: OK.
	st, _ = fleetd.OpenStore(db)
	add(16, 18)
	st.Close()
	out.Reset()
	if err := run(ctx, []string{"audit", "verify", "--unit", unit, "--db", db}, &out, &errOut); err != nil || !strings.Contains(out.String(), ": OK") {
		t.Fatalf("verify of the whole chain: err=%v\n%s", err, out.String())
	}
	// Export, then verify the export as a file.
	exp := filepath.Join(dir, "export.jsonl")
	if err := run(ctx, []string{"audit", "export", "--unit", unit, "--db", db, "--out", exp}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := run(ctx, []string{"audit", "verify", "--file", exp, "--unit", unit}, &out, &errOut); err != nil || !strings.Contains(out.String(), "records 1 to 18 verified") {
		t.Fatalf("verify of the export: err=%v\n%s", err, out.String())
	}
}
