package unit

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/identity"
)

// The privacy report says which past calls were end-to-end encrypted, read
// from the unit's own audit log: a count, each recent call, and a flag on
// one that was not.
func TestPrivacyReportListsPastCallsFromTheAuditLog(t *testing.T) {
	dir := t.TempDir()
	k, _, err := identity.LoadOrCreateKey(filepath.Join(dir, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(audit.Options{Dir: filepath.Join(dir, "audit"), Signer: k.Signer()})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ meeting, e2ee string }{{"m-1", "true"}, {"m-2", "false"}, {"m-3", "true"}} {
		if _, err := l.Append(audit.KindCallJoined, map[string]string{"meeting": c.meeting, "e2ee": c.e2ee}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(audit.KindCallLeft, map[string]string{"meeting": c.meeting, "e2ee": c.e2ee, "reason": "leave"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	calls, head := pastCalls(filepath.Join(dir, "audit", audit.LogFile))
	if head == nil || head.Head != 7 {
		t.Fatalf("the log's head: %+v, want record 7 (chain start, 3 calls joined and left)", head)
	}
	if len(calls) != 3 || calls[1].Meeting != "m-2" || calls[1].E2EE != "false" {
		t.Fatalf("calls from the audit log: %+v", calls)
	}
	c, err := config.Local{}.Effective(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := report.Build(report.Source{Config: c, Calls: calls, Now: time.Now(), JournaldFiles: []string{filepath.Join(dir, "none.conf")}})
	md := r.Markdown()
	for _, want := range []string{"3 in the audit log: 2 end-to-end encrypted, 1 encrypted hop by hop only", "meeting m-2: not end-to-end encrypted", "meeting m-3: end-to-end encrypted"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if calls, head := pastCalls(filepath.Join(dir, "nothing", audit.LogFile)); calls != nil || head != nil {
		t.Error("a unit without an audit log reports calls")
	}
}

// The report's update state is the one the unit reports, not "installs no
// updates" on a unit that does (the report said that on every unit).
func TestPrivacyReportStatesTheUpdateState(t *testing.T) {
	c, err := config.Local{}.Effective(nil)
	if err != nil {
		t.Fatal(err)
	}
	rep := fleet.ReportedDoc{Device: "ku-a", Update: &fleet.UpdateReport{Phase: "idle", BootedSlot: "B", BootedVersion: "2026.1203.1",
		LastGood: "2026.1203.1", RolledBack: &fleet.UpdateRollback{Version: "2026.1204.1", Reason: "roomd is not running"}}}
	u := &Unit{cfg: c, d: Deps{Version: "1.2.3", Fleet: func() any { return rep }}}
	u.d.Log = slog.New(slog.DiscardHandler)
	md := u.PrivacyReport(t.Context()).(report.Report).Markdown()
	for _, want := range []string{"runs system 2026.1203.1 from slot B", "rolled back 2026.1204.1 by itself: roomd is not running"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "installs no updates") {
		t.Errorf("a unit with A/B updates is reported as installing none")
	}
	if updateSummary(nil) != "" {
		t.Error("a unit without updates gets an update state")
	}
}
