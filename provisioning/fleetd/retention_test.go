package fleetd

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/identity"
)

// fleetd keeps a unit's audit records for [retention] audit, and what it
// keeps after pruning still verifies: it cuts only as far as the unit's
// own checkpoints account for. A chain the unit has left (a factory reset
// began a new one) goes whole once all of it is past retention; the
// current chain never does.
func TestAuditRecordsPrunedPastRetentionStillVerify(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := OpenStore(filepath.Join(dir, "fleetd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k, _, err := identity.LoadOrCreateKey(filepath.Join(dir, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now().Add(-800 * 24 * time.Hour)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	const unit = "ku-test"
	open := func(sub string) *audit.Log {
		l, err := audit.Open(audit.Options{Dir: filepath.Join(dir, sub), Signer: k.Signer(), Retention: 90 * 24 * time.Hour, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	ship := func(l *audit.Log, after uint64) uint64 {
		for _, r := range l.After(after) {
			if err := st.AddAudit(ctx, unit, r.Line(), clock()); err != nil {
				t.Fatal(err)
			}
			after = r.Seq
		}
		return after
	}
	// An old chain: 100 days of a record a day, then the unit is reset.
	old := open("old")
	var sent uint64
	for range 100 {
		advance(24 * time.Hour)
		if _, err := old.Append(audit.KindPrivacyOn, nil); err != nil {
			t.Fatal(err)
		}
		sent = ship(old, sent)
	}
	old.Close()
	// The current chain: 600 days, a record a day; the unit prunes its
	// own copy at 90 days and says so in checkpoints.
	cur := open("cur")
	sent = ship(cur, 0)
	for range 600 {
		advance(24 * time.Hour)
		if _, err := cur.Append(audit.KindMuteOn, nil); err != nil {
			t.Fatal(err)
		}
		sent = ship(cur, sent)
	}
	defer cur.Close()
	chains, _ := st.AuditChains(ctx, unit)
	if len(chains) != 2 {
		t.Fatalf("%d chains stored, want 2", len(chains))
	}
	count := func(chain string) int {
		var n int
		if err := st.db.QueryRow("SELECT COUNT(*) FROM audit_records WHERE unit = ? AND chain = ?", unit, chain).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count(chains[1])
	verify := func(chain string) audit.Result {
		lines, err := st.AuditLines(ctx, unit, chain)
		if err != nil {
			t.Fatal(err)
		}
		var recs []audit.Record
		for _, l := range lines {
			r, err := audit.Parse(l)
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, r)
		}
		return audit.Verify(recs, "")
	}
	if res := verify(chains[1]); !res.OK() {
		t.Fatalf("the stored chain does not verify before pruning: %v", res.Problem)
	}

	cutoff := clock().Add(-365 * 24 * time.Hour)
	n, err := st.PruneAudit(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if count(chains[0]) != 0 {
		t.Errorf("the chain the unit left, all of it %s old, is still kept", clock().Sub(cutoff))
	}
	after := count(chains[1])
	res := verify(chains[1])
	if !res.OK() {
		t.Fatalf("the current chain does not verify after pruning: %v", res.Problem)
	}
	if after >= before || res.Pruned == 0 {
		t.Fatalf("nothing of the current chain was pruned (%d → %d records)", before, after)
	}
	// Nothing that arrived after the cutoff went; what is kept past it is
	// only what no checkpoint of the unit's accounted for.
	var oldestKept int64
	lines, _ := st.AuditLines(ctx, unit, chains[1])
	first, _ := audit.Parse(lines[0])
	if err := st.db.QueryRow("SELECT MIN(received_at) FROM audit_records WHERE unit = ? AND chain = ?", unit, chains[1]).Scan(&oldestKept); err != nil {
		t.Fatal(err)
	}
	if time.UnixMilli(oldestKept).After(cutoff) {
		t.Errorf("a record from after the cutoff was deleted (oldest kept %s, cutoff %s)", time.UnixMilli(oldestKept), cutoff)
	}
	if keptPast := cutoff.Sub(time.UnixMilli(oldestKept)); keptPast > 120*24*time.Hour {
		t.Errorf("records %s past retention are still kept", keptPast)
	}
	t.Logf("pruned %d records (%d of the left chain); current chain %d → %d records, from seq %d, %d accounted for by a checkpoint; oldest kept %s before the cutoff",
		n, 101, before, after, first.Seq, res.Pruned, cutoff.Sub(time.UnixMilli(oldestKept)).Round(time.Hour))

	// Pruning again changes nothing; the chain still verifies.
	if n, err := st.PruneAudit(ctx, cutoff); err != nil || n != 0 {
		t.Errorf("a second prune deleted %d (%v)", n, err)
	}
	if res := verify(chains[1]); !res.OK() {
		t.Fatal(res.Problem)
	}
}

func TestRetentionConfig(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("365d")); err != nil || d.Duration != 365*24*time.Hour {
		t.Fatalf("365d: %v %v", d, err)
	}
	if err := d.UnmarshalText([]byte("1.5d")); err == nil || !strings.Contains(err.Error(), "whole number of days") {
		t.Fatalf("1.5d: %v", err)
	}
	c := &Config{Database: "x.db", CADir: "ca", Broker: BrokerConfig{URL: "mqtt://127.0.0.1:1883"}, LiveKit: LiveKitConfig{APIKey: "k", APISecret: "s"}}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	if c.Retention.Audit.Duration != DefaultAuditRetention || c.Retention.Records.Duration != DefaultRecordRetention {
		t.Errorf("defaults: %+v", c.Retention)
	}
	c.Retention.Audit.Duration = time.Hour
	if err := c.check(); err == nil || !strings.Contains(err.Error(), "[retention]") {
		t.Errorf("an hour's retention: %v", err)
	}
}

// The token and join log, and ended consultations, go after [retention]
// records; what is newer stays.
func TestTokenLogPrunedPastRetention(t *testing.T) {
	ctx := context.Background()
	st, err := OpenStore(filepath.Join(t.TempDir(), "fleetd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	old := now.Add(-100 * 24 * time.Hour)
	c1, _, err := st.AddConsultation(ctx, "ku-a", old, old.Add(30*time.Minute), "", old)
	if err != nil {
		t.Fatal(err)
	}
	c2, _, err := st.AddConsultation(ctx, "ku-a", now, now.Add(30*time.Minute), "", now)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Consultation{c1, c2} {
		if err := st.RecordToken(ctx, "ku-a", c.ID, c.Room, c.Start, c.Start.Add(10*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := st.RecordPatientJoin(ctx, c.ID, "patient-x", c.Start, c.Start.Add(10*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := st.PruneRecords(ctx, now.Add(-DefaultRecordRetention))
	if err != nil || n != 3 {
		t.Fatalf("pruned %d (%v), want the old consultation, its token and its join", n, err)
	}
	if _, err := st.Consultation(ctx, c1.ID); err == nil {
		t.Error("the consultation that ended 100 days ago is kept")
	}
	if _, err := st.Consultation(ctx, c2.ID); err != nil {
		t.Errorf("today's consultation went: %v", err)
	}
	if n, _ := st.TokensIssued(ctx, "ku-a"); n != 1 {
		t.Errorf("%d tokens logged, want today's only", n)
	}
}
