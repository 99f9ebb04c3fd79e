package config

import (
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/konsult/konsult/provisioning/fleet"
)

// Scope says who may set a key.
type Scope int

const (
	// Live keys may come from the fleet: roomd applies a change without a
	// restart (the unit is re-opened on it, the log level is set in place,
	// the fleet link reconnects).
	Live Scope = iota + 1
	// LocalOnly keys come from the unit's own file alone: roomd reads them
	// once at start, or they are the unit's identity and trust, or who may
	// drive it locally. A fleet config that sets one is refused whole
	// (schema) rather than reported applied and silently not acting.
	LocalOnly
)

// scopes classifies every key of the schema (issue 18 item 5); a section
// name classifies the whole section. TestEveryKeyHasAScope walks Config so
// a new key cannot be left out. The order is the order refusals are
// checked in.
//
//	key                     scope      why
//	unit.board              live       the unit is re-opened on it (holder.unitPart)
//	unit.network_dir        local      read at start (netApplier)
//	unit.network_apply      local      read at start (netApplier)
//	[network]               live       netApplier applies it on every change
//	[pins]                  live       unit re-opened
//	[buttons] [shutter]     live       unit re-opened
//	[call] [conference]     live       unit re-opened
//	[api]                   local      listeners open at start; and who may drive the unit is its own business
//	log.level               live       set in place (holder.setLevel)
//	log.format              local      the logger is made once at start
//	[sim] [sim.echo]        live       unit re-opened
//	[audio]                 live       unit re-opened (the next call's processor)
//	[privacy]               live       only the privacy report reads it, from the running config
//	[audit]                 local      the audit log is opened once at start
//	fleet.broker, ca_file,
//	  cert_file, key_file,
//	  confirm_timeout       live       the agent reconnects on the new connection (ConnectionFor);
//	                                   an enrolled unit refuses the three files (agent refuseEnrolledTLS)
//	fleet.schedule_keys     live       fleetd's schedule key, authorised by the fleet key's signature on the config;
//	                                   the unit reads it from the running config at each schedule
//	fleet.enabled           local      whether there is a fleet at all is decided at start
//	fleet.device_id, groups,
//	  fleet_key, state_dir  local      the unit's identity and trust
//	fleet.identity_dir,
//	  enrol_*, claim_*      local      enrolment: the unit's own identity, read at start
//	fleet.renew_before      local      read at start by the enrolled identity
//	update.dir              local      where the root helper konsult-update reads requests: the unit's own layout
//	update.reboot_window    live       the agent reads it from the running config when an update waits to reboot
var scopes = []struct {
	key   string
	scope Scope
}{
	{"fleet.enabled", LocalOnly},
	{"fleet.device_id", LocalOnly},
	{"fleet.groups", LocalOnly},
	{"fleet.fleet_key", LocalOnly},
	{"fleet.state_dir", LocalOnly},
	{"fleet.identity_dir", LocalOnly},
	{"fleet.enrol_cert", LocalOnly},
	{"fleet.enrol_key", LocalOnly},
	{"fleet.enrol_broker", LocalOnly},
	{"fleet.claim_code", LocalOnly},
	{"fleet.claim_file", LocalOnly},
	{"fleet.renew_before", LocalOnly},
	{"fleet.broker", Live},
	{"fleet.ca_file", Live},
	{"fleet.cert_file", Live},
	{"fleet.key_file", Live},
	{"fleet.confirm_timeout", Live},
	// Authorised by the fleet key's signature on the config that sets it;
	// the unit reads it from the running config at each schedule.
	{"fleet.schedule_keys", Live},
	{"unit.network_dir", LocalOnly},
	{"unit.network_apply", LocalOnly},
	{"unit.board", Live},
	// Who may drive the unit locally is the unit's own business: a fleet
	// config that opened loopback HTTP would hand every local user and
	// browser on the machine the API, and one that moved the socket could
	// point it at a folder others control.
	{"api", LocalOnly},
	// The screen's listener and URL file are opened once at start, and the
	// page's room name and language are read then too.
	{"display", LocalOnly},
	{"log.format", LocalOnly},
	{"log.level", Live},
	{"network", Live},
	{"pins", Live},
	{"buttons", Live},
	{"shutter", Live},
	{"call", Live},
	{"conference", Live},
	{"sim", Live},
	{"audio", Live},
	// The report reads the running config; the audit log is opened at start.
	{"privacy", Live},
	{"audit", LocalOnly},
	{"update.dir", LocalOnly},
	{"update.reboot_window", Live},
}

// ScopeOf is key's scope ("fleet.broker", or a section classified whole,
// "api"); 0 for a key the schema does not have.
func ScopeOf(key string) Scope {
	for _, s := range scopes {
		if s.key == key {
			return s.scope
		}
	}
	if sec, _, ok := strings.Cut(key, "."); ok {
		for _, s := range scopes {
			if s.key == sec {
				return s.scope
			}
		}
	}
	return 0
}

// LocalOnlyKeys are the keys and sections (in brackets) a fleet config may
// not set, for documentation and tools.
func LocalOnlyKeys() []string {
	var out []string
	for _, s := range scopes {
		if s.scope == LocalOnly {
			out = append(out, displayName(s.key))
		}
	}
	return out
}

func displayName(key string) string {
	if !strings.Contains(key, ".") {
		return "[" + key + "]"
	}
	return key
}

// refuseLocalOnly refuses a fleet config (decoded into md) that sets a
// local-only key, naming the first one.
func refuseLocalOnly(md toml.MetaData) error {
	for _, s := range scopes {
		if s.scope == LocalOnly && md.IsDefined(strings.Split(s.key, ".")...) {
			return fmt.Errorf("%s can only be set in the unit's own config file, not by the fleet: remove it from the fleet config", displayName(s.key))
		}
	}
	return nil
}

// fleetUnit is the local config CheckFleet lays a fleet config over: the
// built-in defaults plus what every unit that follows a fleet sets in its
// own file (its broker, identity and pinned key), so the fleet-settable
// keys are judged as on such a unit.
var fleetUnit = Local{path: "(a unit on the fleet)", text: `[fleet]
broker = "mqtts://broker.invalid:8883"
device_id = "unit"
fleet_key = "fleet.pub"
`}

// CheckFleet refuses, before it is signed, a fleet config the unit would
// refuse on its own: not TOML, an unknown key, a value out of range, a pin
// conflict, a local-only key. The error is the *fleet.Error the unit would
// report (Reason schema, the same message). It judges this config alone
// over the built-in defaults: on a unit it is merged with the unit's other
// group or device configs and its own file first, which can refuse (or
// fix) what this config cannot show alone.
func CheckFleet(text []byte) error {
	// The order and wording are the unit's: fleet.Verifier.VerifyConfig
	// parses the TOML, then the agent merges the layers and validates the
	// result with Local.Effective.
	if _, err := fleet.ParseTOML(text); err != nil {
		return &fleet.Error{Reason: fleet.ReasonSchema, Msg: err.Error() + ": fix the file and sign a new version"}
	}
	id := fleet.Identity{Device: "unit"}
	eff, err := fleet.Effective(id, map[string][]byte{fleet.Target{Device: id.Device}.Key(): text})
	if err != nil {
		return &fleet.Error{Reason: fleet.ReasonSchema, Msg: err.Error() + ": fix it and sign a new version"}
	}
	if _, err := fleetUnit.Effective(eff); err != nil {
		msg := fleet.RedactValues(err.Error(), eff)
		return &fleet.Error{Reason: fleet.ReasonSchema, Msg: "config refused by the unit's schema: " + msg + ": fix it and sign a new version"}
	}
	return nil
}
