package agent

import (
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
)

// LocalStatus is the fleet part of the unit's local status (roomctl
// status): what the unit last reported, whether it is connected, and where
// its enrolment stands.
type LocalStatus struct {
	fleet.ReportedDoc
	Connected bool   `json:"connected"`
	Broker    string `json:"broker"`
	// DemoKey is the demo fleet's signing key in --sim, for fleetctl.
	DemoKey string `json:"demo_key,omitempty"`
	// Enrolment is the unit's own identity and where its enrolment stands
	// (units that enrol themselves).
	Enrolment *enrol.UnitStatus `json:"enrolment,omitempty"`
}
