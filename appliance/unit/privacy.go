package unit

import (
	"context"
	"encoding/json"
	"time"

	"github.com/konsult/konsult/appliance/report"
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
	return report.Build(src)
}
