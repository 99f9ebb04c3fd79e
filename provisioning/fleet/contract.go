package fleet

import (
	"encoding/json"
	"time"
)

// This file is the unit → fleet contract that fleetctl and dashboards read:
// the retained status and reported documents and the events. Field names and
// event type strings are stable; add fields, never rename or remove them.
//
// Invariant 7: nothing here ever carries a secret, a token, a URL with
// credentials or a person's name. Meetings appear by pseudonymous id only,
// and free-text reasons have every secret-looking config value cut out.

// StatusDoc is the retained document on <prefix>/device/<id>/status. The
// broker's last will replaces it with {"online":false} when the unit drops
// off without saying goodbye.
type StatusDoc struct {
	Online bool `json:"online"`
	// State is the call state: idle, joining, in_call, leaving, fault.
	State string `json:"state,omitempty"`
	// Version is roomd's software version.
	Version string `json:"version,omitempty"`
	// ConfigGeneration counts the unit's config applies and rollbacks; it
	// changes whenever the config the unit runs on changes.
	ConfigGeneration uint64    `json:"config_generation,omitempty"`
	At               time.Time `json:"at,omitzero"`
}

// ReportedDoc is the retained document on <prefix>/device/<id>/reported:
// which signed configs the unit runs on, and what it last refused or undid.
type ReportedDoc struct {
	Device string   `json:"device"`
	Groups []string `json:"groups"`
	// Versions maps a target key ("device:<id>", "group:<name>") to the
	// version applied for it. A config version that was rolled back stays
	// here (the fleet must publish a higher one to try again); LastRollback
	// says so.
	Versions map[string]uint64 `json:"versions"`
	// Generation is the same counter as StatusDoc.ConfigGeneration.
	Generation uint64 `json:"generation"`
	// Pending is set while the unit runs a config it has not yet confirmed
	// by reaching its broker with it.
	Pending bool `json:"pending,omitempty"`
	// Deferred is set while a newer config is stored (and counted in
	// Versions) but waits for the current call to end; the unit still runs
	// the previous one.
	Deferred      bool       `json:"deferred,omitempty"`
	LastRejection *Rejection `json:"last_rejection,omitempty"`
	// LastRollback is the unit's most recent rollback. When its
	// ToGeneration equals Generation the unit runs its last known good
	// config, not the one Versions names.
	LastRollback *Rollback `json:"last_rollback,omitempty"`
	// Identity is the unit's enrolled certificate (absent for a unit whose
	// certificate was installed by hand).
	Identity *IdentityReport `json:"identity,omitempty"`
	// Audit is the unit's audit log (provisioning/audit) as the fleet
	// needs it to find gaps (absent for a unit that keeps none).
	Audit *AuditReport `json:"audit,omitempty"`
	// Update is where the unit's system updates stand (absent for a unit
	// that does not update over the air).
	Update *UpdateReport `json:"update,omitempty"`
	At     time.Time     `json:"at"`
}

// UpdateReport is the unit's system update state: what konsult-update
// wrote in its state file (docs/UPDATES.md) and what roomd holds back.
type UpdateReport struct {
	// Phase is konsult-update's: idle, downloading, installing, installed
	// (waits for its reboot), rebooting.
	Phase         string `json:"phase,omitempty"`
	BootedSlot    string `json:"booted_slot,omitempty"`
	BootedVersion string `json:"booted_version,omitempty"`
	// Slots maps each root slot (A, B) to the version it holds, where known.
	Slots          map[string]string `json:"slots,omitempty"`
	PendingVersion string            `json:"pending_version,omitempty"`
	PendingSlot    string            `json:"pending_slot,omitempty"`
	// Requested is the version of the last update command taken; Deferred
	// is set while it waits for the call to end before its request is
	// written, RebootWaiting while it is installed and its reboot waits
	// for the unit to be idle or for the maintenance window.
	Requested     string `json:"requested,omitempty"`
	Deferred      bool   `json:"deferred,omitempty"`
	RebootWaiting string `json:"reboot_waiting,omitempty"`
	LastFailure   string `json:"last_failure,omitempty"`
	LastFailureAt string `json:"last_failure_at,omitempty"`
	LastGood      string `json:"last_good_version,omitempty"`
	// RolledBack is the last update the unit undid by itself.
	RolledBack *UpdateRollback `json:"rolled_back,omitempty"`
}

// UpdateRollback is the data of EventUpdateRolledBack and
// UpdateReport.RolledBack.
type UpdateRollback struct {
	Version string `json:"version"`
	Slot    string `json:"slot,omitempty"` // the slot that failed
	Reason  string `json:"reason"`
	At      string `json:"at,omitempty"` // as konsult-update wrote it (RFC 3339, UTC)
}

// UpdateEvent is the data of EventUpdateRequested and EventUpdateInstalled.
type UpdateEvent struct {
	Version string `json:"version"`
	Slot    string `json:"slot,omitempty"`
	Reboot  string `json:"reboot,omitempty"` // now, window
	// Deferred (requested only): the request waited for a call to end.
	Deferred bool `json:"deferred,omitempty"`
}

// AuditReport is the high-water mark of the unit's audit log.
type AuditReport struct {
	Chain string `json:"chain"`
	// Sent is the highest seq handed to the fleet link (queued or
	// delivered); Head the highest written, and HeadHash its hash.
	Sent     uint64 `json:"sent"`
	Head     uint64 `json:"head"`
	HeadHash string `json:"head_hash"`
}

// IdentityReport is the unit's certificate as the fleet needs to know it.
type IdentityReport struct {
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	// RenewalCSR (PEM) is set while the certificate is due for renewal:
	// fleetctl renew signs it and sends it back with the certificate
	// command. The key stays the same, and so does the device id.
	RenewalCSR string `json:"renewal_csr,omitempty"`
	// LastRenewalError is why the last certificate sent was not installed.
	LastRenewalError string `json:"last_renewal_error,omitempty"`
}

// Rejection is a config the unit refused whole (invariant 8). It is both
// the data of EventConfigRejected and ReportedDoc.LastRejection.
type Rejection struct {
	// Target is the target key of the topic the config came on
	// ("device:<id>" or "group:<name>").
	Target string `json:"target"`
	// Version is the config's version if it could be read (0 if not, e.g.
	// for a malformed envelope).
	Version uint64 `json:"version,omitempty"`
	// Reason is one of provisioning/fleet's Reason strings: malformed,
	// unknown_key, bad_signature, wrong_kind, wrong_target, expired,
	// not_yet_valid, stale_version, schema; or "apply" when the unit could
	// not store it.
	Reason string `json:"reason"`
	// Message says what was wrong and how to fix it, without values.
	Message string    `json:"message"`
	At      time.Time `json:"at,omitzero"`
}

// Rollback is the unit returning to its last known good config by itself.
// It is both the data of EventConfigRolledBack and ReportedDoc.LastRollback.
type Rollback struct {
	FromGeneration uint64 `json:"from_generation"`
	ToGeneration   uint64 `json:"to_generation"`
	Reason         string `json:"reason"`
	// Versions are the target versions of the config that was undone.
	Versions map[string]uint64 `json:"versions,omitempty"`
	At       time.Time         `json:"at,omitzero"`
}

// Event types on <prefix>/device/<id>/events. Each event is a link.Event:
// {"id","type","at","data"}; the data types are below each constant.
const (
	// EventStarted: roomd came up. Data: Started.
	EventStarted = "started"
	// EventConfigApplied: a config was verified, stored and handed to roomd.
	// Data: ConfigApplied.
	EventConfigApplied = "config_applied"
	// EventConfigDeferred: a config was verified and stored but waits for
	// the current call to end (it is not urgent). EventConfigApplied
	// follows. Data: ConfigApplied.
	EventConfigDeferred = "config_deferred"
	// EventConfigRejected: a config was refused whole. Data: Rejection.
	EventConfigRejected = "config_rejected"
	// EventConfigRolledBack: the unit undid a config by itself (it lost its
	// broker with it, or roomd could not run it). Data: Rollback.
	EventConfigRolledBack = "config_rolled_back"
	// EventCommandDone: a command was verified and carried out (for join and
	// leave: requested; call_joined / call_left follow). Data: CommandResult.
	EventCommandDone = "command_done"
	// EventCommandRefused: a command was refused. Data: CommandResult.
	EventCommandRefused = "command_refused"
	// EventCallJoined and EventCallLeft: Data: Call.
	EventCallJoined = "call_joined"
	EventCallLeft   = "call_left"
	// EventShutterFault: the privacy shutter did not do what it was told.
	// Data: Fault.
	EventShutterFault = "shutter_fault"
	// EventCameraLost: the camera disappeared. Data: Fault.
	EventCameraLost = "camera_lost"
	// EventFault: any other fault (microphone lost, a call that failed).
	// Data: Fault.
	EventFault = "fault"
	// EventFaultCleared: a fault went away. Data: Fault.
	EventFaultCleared = "fault_cleared"
	// EventButton: a button on the unit. Data: Button.
	EventButton = "button"
	// EventState: the call state changed. Data: State.
	EventState = "state"
	// EventUpdateRequested: the unit handed a verified update command to
	// its root update helper (at once when idle, after the call when it
	// came during one). Data: UpdateEvent.
	EventUpdateRequested = "update_requested"
	// EventUpdateInstalled: the unit came up on an updated slot and marked
	// it good. Data: UpdateEvent.
	EventUpdateInstalled = "update_installed"
	// EventUpdateRolledBack: an update did not come up healthy and the
	// unit is back on its previous slot. Data: UpdateRollback.
	EventUpdateRolledBack = "update_rolled_back"
)

// Started is the data of EventStarted: which config the unit came up on.
type Started struct {
	Generation uint64            `json:"generation"`
	Versions   map[string]uint64 `json:"versions,omitempty"`
	// Pending: the unit came up on a config it had applied but not yet
	// confirmed (it stopped or crashed in between); it confirms it once the
	// broker is reached, or rolls back.
	Pending bool `json:"pending"`
	// RolledBack: at startup the unit went back to its last known good
	// config (see Rollback in the reported document).
	RolledBack bool   `json:"rolled_back"`
	Version    string `json:"version,omitempty"` // roomd's software version
}

// ConfigApplied is the data of EventConfigApplied and EventConfigDeferred.
type ConfigApplied struct {
	Target     string `json:"target"` // target key
	Version    uint64 `json:"version"`
	Generation uint64 `json:"generation"`
	Urgent     bool   `json:"urgent,omitempty"`
}

// CommandResult is the data of EventCommandDone and EventCommandRefused.
type CommandResult struct {
	// Name is the command (join, leave, identify, reboot, report-now), if it
	// could be read; Nonce its nonce, so a sender can match the result.
	Name  string `json:"name,omitempty"`
	Nonce string `json:"nonce,omitempty"`
	// Reason (refused only) is a provisioning/fleet Reason string, or
	// "failed" when a verified command could not be carried out.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Checks (doctor only) are the unit's self-check, as roomctl doctor
	// shows them, with any secret cut out.
	Checks []DoctorCheck `json:"checks,omitempty"`
	// Report (privacy-report only) is the unit's privacy report, JSON
	// (appliance/report's Report).
	Report json.RawMessage `json:"report,omitempty"`
}

// DoctorCheck is one line of a unit's self-check: a part of the unit, whether
// it works, what was found and, when it does not, what to do.
type DoctorCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	Fix    string `json:"fix,omitempty"`
}

// Call is the data of EventCallJoined and EventCallLeft.
type Call struct {
	Meeting string `json:"meeting,omitempty"` // pseudonymous meeting id
	Reason  string `json:"reason,omitempty"`  // why the call ended
}

// Fault is the data of the fault events.
type Fault struct {
	// Source is what failed: shutter, camera, microphone, call.
	Source string `json:"source"`
	Reason string `json:"reason,omitempty"`
}

// Button is the data of EventButton.
type Button struct {
	Which string `json:"which"` // join, leave, privacy, mute
	Kind  string `json:"kind"`  // down, up, short, long
}

// State is the data of EventState.
type State struct {
	State string `json:"state"`
}
