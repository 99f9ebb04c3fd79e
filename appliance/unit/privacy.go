package unit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
)

// PrivacyReport implements localapi.Reporter: the privacy report of the
// unit as it runs now, from its running config, its self-check (run now)
// and its fleet state.
func (u *Unit) PrivacyReport(ctx context.Context) any {
	src := report.Source{Config: u.Running(), Version: u.d.Version, Now: time.Now()}
	src.Checks, src.ChecksAt = u.FleetDoctor(ctx), time.Now()
	if src.Checks == nil {
		src.Checks = []fleet.DoctorCheck{}
	}
	if u.d.Fleet != nil {
		// The fleet part of the status is the agent's local status: the
		// reported document, flattened.
		var rep fleet.ReportedDoc
		if b, err := json.Marshal(u.d.Fleet()); err == nil && json.Unmarshal(b, &rep) == nil {
			src.Unit, src.Generation, src.Pending, src.Deferred, src.Audit = rep.Device, rep.Generation, rep.Pending, rep.Deferred, rep.Audit
			src.Update = updateSummary(rep.Update)
		}
	}
	if path := u.auditFile(); path != "" {
		var head *fleet.AuditReport
		src.Calls, head = pastCalls(path)
		if src.Audit == nil && head != nil {
			// The fleet is off: the log is the only copy, nothing is sent.
			src.Audit, src.AuditLocalOnly = head, true
		}
	}
	return report.Build(src)
}

// updateSummary is the update state in force, in a DPO's words: which
// system runs from which slot, what is installed and waiting, what was
// undone and why. "" for a unit that installs no system updates itself
// (the report says so).
func updateSummary(u *fleet.UpdateReport) string {
	if u == nil || (u.BootedVersion == "" && u.Phase == "" && u.LastFailure == "") {
		return ""
	}
	var parts []string
	if u.BootedVersion != "" {
		s := "signed A/B system updates (RAUC); runs system " + u.BootedVersion
		if u.BootedSlot != "" {
			s += " from slot " + u.BootedSlot
		}
		parts = append(parts, s)
	}
	if u.LastGood != "" && u.LastGood != u.BootedVersion {
		parts = append(parts, "last marked good: "+u.LastGood)
	}
	if u.PendingVersion != "" {
		parts = append(parts, "installed and waiting for its reboot: "+u.PendingVersion)
	}
	if u.Phase != "" && u.Phase != "idle" {
		parts = append(parts, "update "+u.Phase)
	}
	if rb := u.RolledBack; rb != nil && rb.Version != "" {
		parts = append(parts, fmt.Sprintf("rolled back %s by itself: %s", rb.Version, rb.Reason))
	}
	if u.LastFailure != "" {
		parts = append(parts, "last failure: "+u.LastFailure)
	}
	return strings.Join(parts, "; ")
}

// auditFile is the unit's audit log: where the agent (fleet on) or
// agent.Standalone (fleet off) keeps it; "" before any config.
func (u *Unit) auditFile() string {
	cfg := u.Running()
	if cfg == nil {
		return ""
	}
	return filepath.Join(cfg.StateDir(u.d.Simulate), "audit", audit.LogFile)
}

// AuditLog implements localapi.Auditor: the log file as it stands, for
// roomctl audit to verify. Only the unit's socket serves it: the file is
// the unit's (mode 0600), and whoever may use the socket may read it.
func (u *Unit) AuditLog() (localapi.AuditLog, error) {
	path := u.auditFile()
	if path == "" {
		return localapi.AuditLog{}, errors.New("audit log: the unit has not started yet")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return localapi.AuditLog{}, fmt.Errorf("audit log: %w", err)
	}
	l := localapi.AuditLog{File: path, Lines: []string{}}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) != "" {
			l.Lines = append(l.Lines, line)
		}
	}
	return l, nil
}

// pastCalls are the calls the unit's audit log holds, and its newest
// record (nil, nil if it cannot be read: a unit without one, or a line
// being written this instant).
func pastCalls(path string) ([]report.CallRecord, *fleet.AuditReport) {
	recs, err := audit.ReadFile(path)
	if err != nil || len(recs) == 0 {
		return nil, nil
	}
	last := recs[len(recs)-1]
	head := &fleet.AuditReport{Chain: last.Chain, Head: last.Seq, HeadHash: last.Hash()}
	calls := []report.CallRecord{}
	for _, r := range recs {
		if r.Kind == audit.KindCallJoined {
			e := r.Fields["e2ee"]
			if e == "" {
				e = "unknown"
			}
			calls = append(calls, report.CallRecord{At: r.Time, Meeting: r.Fields["meeting"], E2EE: e})
		}
	}
	return calls, head
}
