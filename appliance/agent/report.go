package agent

import (
	"slices"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// RefreshReported republishes the reported document (the identity asks
// for a renewal). Safe from any goroutine.
func (a *Agent) RefreshReported() {
	select {
	case a.refresh <- struct{}{}:
	default:
	}
}

func (a *Agent) onApplianceEvent(ev appliance.Event) {
	t := a.redact.text
	a.rec.appliance(ev)
	switch ev.Type {
	case "state":
		a.publish(fleet.EventState, fleet.State{State: string(ev.State)})
		a.publishStatus()
		if a.deferred != nil && !a.busy() {
			eff, done := a.deferred, a.deferredFor
			a.activate(eff, done)
		}
		if !a.busy() {
			a.checkUpdate() // a deferred update, or a reboot that waited for the call
		}
	default:
		if typ, data, ok := fleetEventOf(ev, t); ok {
			a.publish(typ, data)
		}
	}
}

func cutLast(s, sep string) (string, string, bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

// publish queues an event; it reports whether it was queued.
func (a *Agent) publish(typ string, data any) bool {
	a.rec.fleetEvent(typ, data)
	if _, err := a.link.PublishEvent(link.Event{Type: typ, Data: data}); err != nil {
		a.log.Warn("fleet event not queued", "type", typ, "err", err)
		return false
	}
	return true
}

func (a *Agent) statusNow() link.Status {
	st := link.Status{Version: a.opts.Version, ConfigGeneration: a.store.Generation(), At: time.Now().UTC()}
	if a.opts.Appliance != nil {
		st.State = string(a.opts.Appliance.Status().State)
	}
	return st
}

func (a *Agent) publishStatus() {
	if err := a.link.PublishStatus(a.statusNow()); err != nil {
		a.log.Warn("fleet status not published", "err", err)
	}
}

func (a *Agent) publishReported() {
	if err := a.link.PublishReported(a.Reported()); err != nil {
		a.log.Warn("fleet reported state not published", "err", err)
	}
}

func (a *Agent) publishState() {
	a.publishStatus()
	a.publishReported()
}

// Reported is the unit's reported document as of now. Safe to call from
// any goroutine (roomd's local status shows it).
func (a *Agent) Reported() fleet.ReportedDoc {
	cur := a.store.Current()
	_, pending := a.store.Pending()
	d := fleet.ReportedDoc{
		Device:     a.id.Device,
		Groups:     slices.Clone(a.id.Groups),
		Versions:   cur.Versions,
		Generation: a.store.Generation(),
		Pending:    pending,
		At:         time.Now().UTC(),
	}
	if d.Groups == nil {
		d.Groups = []string{}
	}
	if d.Versions == nil {
		d.Versions = map[string]uint64{}
	}
	if a.opts.Identity != nil {
		d.Identity = a.opts.Identity.Report()
	}
	d.Audit = a.auditReport()
	d.Update = a.updateReport()
	a.mu.Lock()
	d.Deferred = a.isDeferred
	if a.lastRejection != nil {
		r := *a.lastRejection
		d.LastRejection = &r
	}
	if a.lastRollback != nil {
		r := *a.lastRollback
		d.LastRollback = &r
	}
	a.mu.Unlock()
	return d
}
