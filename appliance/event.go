package appliance

import (
	"time"

	"github.com/konsult/konsult/media/gate"
)

// Event is one thing the unit reports: to the local API's event stream, to
// the log and (later) to the fleet. Invariant 7: an event never carries a
// secret or a person's name; meetings appear by pseudonymous id only.
type Event struct {
	Seq     uint64      `json:"seq"`
	At      time.Time   `json:"at"`
	Type    string      `json:"type"` // hello, state, gate, led, shutter, call, participant, fault, fault_cleared, button, action, action_ignored, privacy, mute, factory_reset (README "Local API")
	State   State       `json:"state,omitempty"`
	Gate    *gate.State `json:"gate,omitempty"`
	LED     string      `json:"led,omitempty"`
	Detail  string      `json:"detail,omitempty"`
	Reason  string      `json:"reason,omitempty"`
	Meeting string      `json:"meeting,omitempty"` // pseudonymous meeting id
	// Participant is a far-end participant's per-call pseudonym, never a
	// name or identity (type participant).
	Participant string `json:"participant,omitempty"`
	// E2EE says whether the call was encrypted end to end (type call,
	// detail joined and left): the privacy report's per-call record.
	E2EE *bool `json:"e2ee,omitempty"`
	// DecryptFailures is how many far-end frames of an end-to-end
	// encrypted call were dropped because they did not decrypt (type call,
	// detail left): a far end with the wrong key shows here, per call.
	DecryptFailures *uint64 `json:"e2ee_decrypt_failures,omitempty"`
}
