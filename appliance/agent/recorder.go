package agent

import (
	"log/slog"
	"strconv"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
)

// recorder writes the unit's audit log from the facts the unit produces:
// the fleet events (what the agent decides, what the appliance reports in
// them) and the appliance's own events (privacy, mute, the factory reset).
// The agent has one; with the fleet off, Standalone has one and nothing
// else, so a unit keeps the same record with or without a fleet.
// Its methods run on one goroutine (the agent's Run, the Standalone's
// loop); record alone is safe from any.
type recorder struct {
	log    *audit.Log // nil: no audit log, every method a no-op
	logger *slog.Logger
	// callE2EE is what the config promises of a call's encryption (nil:
	// unknown), for a call that says nothing itself.
	callE2EE func() string
	e2ee     string // what the call being recorded said of its encryption
}

// record appends to the audit log; a failure is logged, never fatal.
func (r *recorder) record(kind string, fields map[string]string) {
	if r.log == nil {
		return
	}
	if _, err := r.log.Append(kind, fields); err != nil {
		r.logger.Error("audit record not written", "kind", kind, "err", err)
	}
}

// fleetEvent records what a fleet event says, for the kinds the audit
// log keeps.
func (r *recorder) fleetEvent(typ string, data any) {
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	switch d := data.(type) {
	case fleet.Started:
		r.record(audit.KindStarted, map[string]string{"version": d.Version, "generation": u(d.Generation)})
	case fleet.ConfigApplied:
		if typ == fleet.EventConfigApplied {
			r.record(audit.KindConfigApplied, map[string]string{"target": d.Target, "version": u(d.Version), "generation": u(d.Generation)})
		}
	case *fleet.Rejection:
		r.record(audit.KindConfigRejected, map[string]string{"target": d.Target, "version": u(d.Version), "reason": d.Reason})
	case fleet.Rejection:
		r.record(audit.KindConfigRejected, map[string]string{"target": d.Target, "version": u(d.Version), "reason": d.Reason})
	case fleet.Rollback:
		r.record(audit.KindConfigRolledBack, map[string]string{"from_generation": u(d.FromGeneration), "to_generation": u(d.ToGeneration), "reason": d.Reason})
	case *fleet.Rollback:
		r.record(audit.KindConfigRolledBack, map[string]string{"from_generation": u(d.FromGeneration), "to_generation": u(d.ToGeneration), "reason": d.Reason})
	case fleet.CommandResult:
		res := "done"
		if typ == fleet.EventCommandRefused {
			res = "refused"
		}
		r.record(audit.KindCommand, map[string]string{"name": d.Name, "result": res, "reason": d.Reason})
	case fleet.Call:
		if typ == fleet.EventCallJoined {
			r.record(audit.KindCallJoined, map[string]string{"meeting": d.Meeting, "e2ee": r.callEncryption()})
		} else {
			r.record(audit.KindCallLeft, map[string]string{"meeting": d.Meeting, "e2ee": r.callEncryption(), "reason": d.Reason})
		}
	case fleet.Fault:
		if typ == fleet.EventFaultCleared {
			r.record(audit.KindFaultCleared, map[string]string{"source": d.Source})
		} else {
			r.record(audit.KindFault, map[string]string{"source": d.Source, "reason": d.Reason})
		}
	}
}

// callEncryption is whether the call just joined or left is end-to-end
// encrypted: what the call said (its event's E2EE), else what the config
// promises: "true", "false", "per_consultation" or "unknown".
func (r *recorder) callEncryption() string {
	if r.e2ee != "" {
		return r.e2ee
	}
	if r.callE2EE == nil {
		return "unknown"
	}
	return r.callE2EE()
}

// appliance records what the fleet events do not carry: privacy and mute
// turning on and off (the appliance's privacy and mute events, one per
// change), and a factory reset about to wipe the unit. Call it before
// the fleet event the same appliance event makes (fleetEventOf): a call's
// event carries its encryption for the call record.
func (r *recorder) appliance(ev appliance.Event) {
	if ev.Type == "call" {
		r.e2ee = ""
		if ev.E2EE != nil {
			r.e2ee = strconv.FormatBool(*ev.E2EE)
		}
	}
	switch {
	case ev.Type == "factory_reset" && ev.Detail == "wiping":
		r.record(audit.KindFactoryReset, nil)
	case ev.Type == "privacy":
		r.record(map[bool]string{true: audit.KindPrivacyOn, false: audit.KindPrivacyOff}[ev.Detail == "on"], nil)
	case ev.Type == "mute":
		r.record(map[bool]string{true: audit.KindMuteOn, false: audit.KindMuteOff}[ev.Detail == "on"], nil)
	}
}

// fleetEventOf is the fleet event an appliance event makes, apart from
// "state" (the agent's own business: status, deferred configs): calls,
// faults and buttons. t cuts secrets out of free text. ok is false for an
// event the fleet is not told of.
func fleetEventOf(ev appliance.Event, t func(string) string) (typ string, data any, ok bool) {
	switch ev.Type {
	case "call":
		switch ev.Detail {
		case "joined":
			return fleet.EventCallJoined, fleet.Call{Meeting: ev.Meeting}, true
		case "left":
			return fleet.EventCallLeft, fleet.Call{Meeting: ev.Meeting, Reason: t(ev.Reason)}, true
		case "leave":
			return fleet.EventFault, fleet.Fault{Source: "call", Reason: t(ev.Reason)}, true
		}
	case "fault":
		switch ev.Detail {
		case "shutter":
			return fleet.EventShutterFault, fleet.Fault{Source: "shutter", Reason: t(ev.Reason)}, true
		case "camera":
			return fleet.EventCameraLost, fleet.Fault{Source: "camera", Reason: t(ev.Reason)}, true
		default:
			return fleet.EventFault, fleet.Fault{Source: ev.Detail, Reason: t(ev.Reason)}, true
		}
	case "fault_cleared":
		return fleet.EventFaultCleared, fleet.Fault{Source: ev.Detail, Reason: t(ev.Reason)}, true
	case "button":
		which, kind, _ := cutLast(ev.Detail, ":")
		return fleet.EventButton, fleet.Button{Which: which, Kind: kind}, true
	}
	return "", nil, false
}
