package agent

import (
	"log/slog"
	"sync"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
)

// Standalone keeps the audit log of a unit whose fleet is off. The agent
// writes the log when there is a fleet; without one nothing else would,
// and a stand-alone unit must still be able to show its DPO what it did.
// It records the same events from the same appliance stream through the
// same recorder, with no MQTT link: the log is the only copy, read by
// roomctl audit verify and the privacy report on the unit.
type Standalone struct {
	log     *audit.Log
	rec     recorder
	redact  *redactor
	version string

	mu     sync.Mutex
	cancel func()        // the appliance subscription, once Begin ran
	stop   chan struct{} // closed by Close: the loop ends
	done   chan struct{} // closed when the loop has ended
}

// OpenStandalone opens the unit's audit log when its fleet is off (fl is
// nil): in the same directory, signed with the same key and bounded by the
// same [audit] as the agent's (OpenAudit), so a unit that joins a fleet
// later goes on with the same chain and the fleet gets its history. With
// the fleet on it returns nil: the agent keeps the log. A nil *Standalone
// does nothing.
func OpenStandalone(fl *Fleet, o FleetOptions) (*Standalone, error) {
	if fl != nil {
		return nil, nil
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	l, err := OpenAudit(o.Local.StateDir(o.Simulate), o.Local.IdentityDir(o.Simulate), nil, o.Local)
	if err != nil {
		return nil, err
	}
	s := &Standalone{log: l, redact: newRedactor(), version: o.Version}
	s.redact.addConfig(o.Local)
	s.rec = recorder{log: l, logger: o.Logger.With("component", "audit")}
	o.Logger.Info("audit log kept on the unit only (fleet off)", "chain", l.Head().Chain, "records", l.Head().Seq)
	return s, nil
}

// Log is the audit log (nil on a nil Standalone).
func (s *Standalone) Log() *audit.Log {
	if s == nil {
		return nil
	}
	return s.log
}

// Begin records roomd's start on the unit's local config, and whether
// that config came up (applied: Fleet.Start's error), then records what
// app reports until Close. u's running config says whether a call is end-
// to-end encrypted when the call itself does not.
func (s *Standalone) Begin(u interface{ Running() *config.Config }, app Appliance, applied error) {
	if s == nil {
		return
	}
	s.rec.fleetEvent(fleet.EventStarted, fleet.Started{Version: s.version})
	if applied != nil {
		s.rec.record(audit.KindConfigRejected, map[string]string{"target": "local", "version": "0", "reason": s.redact.text(applied.Error())})
		return
	}
	s.rec.record(audit.KindConfigApplied, map[string]string{"target": "local", "version": "0", "generation": "0"})
	s.rec.callE2EE = func() string { return report.E2EE(u.Running()) }
	// As deep as the agent's: a burst of presses must not overflow it.
	events, cancel := app.Subscribe(4096)
	stop, done := make(chan struct{}), make(chan struct{})
	s.mu.Lock()
	s.cancel, s.stop, s.done = cancel, stop, done
	s.mu.Unlock()
	go s.loop(events, stop, done)
}

// loop records each event until stop, then what is already buffered (the
// call the closing unit left), and closes done.
func (s *Standalone) loop(events <-chan appliance.Event, stop, done chan struct{}) {
	defer close(done)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			s.handle(ev)
		case <-stop:
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						return
					}
					s.handle(ev)
				default:
					return
				}
			}
		}
	}
}

func (s *Standalone) handle(ev appliance.Event) {
	s.rec.appliance(ev)
	if typ, data, ok := fleetEventOf(ev, s.redact.text); ok {
		s.rec.fleetEvent(typ, data)
	}
}

// Close stops recording and closes the log. Call it once the unit is
// closed, so its last events (leaving the call, the factory reset) are in.
func (s *Standalone) Close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	cancel, stop, done := s.cancel, s.stop, s.done
	s.cancel = nil
	s.mu.Unlock()
	if cancel != nil {
		close(stop)
		<-done
		cancel()
	}
	s.log.Close()
}
