package unit

import (
	"context"
	"encoding/json"
	"path/filepath"
	"time"

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
		}
	}
	if cfg := src.Config; cfg != nil {
		src.Calls = pastCalls(filepath.Join(cfg.StateDir(false), "audit", audit.LogFile))
	}
	return report.Build(src)
}

// pastCalls are the calls the unit's audit log holds (nil if it cannot be
// read: a unit without one, or a line being written this instant).
func pastCalls(path string) []report.CallRecord {
	recs, err := audit.ReadFile(path)
	if err != nil {
		return nil
	}
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
	return calls
}
