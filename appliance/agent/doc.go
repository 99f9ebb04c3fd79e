// Package agent is the unit's fleet agent: the one place that decides what
// the fleet may do to the unit. Its Agent owns the MQTT link, the config store, the signature
// verifier and the command replay guard: it verifies each signed config and
// command, applies configs atomically (waiting for a call to end unless the
// config is urgent), rolls back a config that loses the broker, carries out
// commands through the appliance, and reports status, reported state and
// events in the shapes of provisioning/fleet's contract.go (the wire types
// live with the protocol), which fleetctl reads.
//
// Fleet (fleet.go) sits in front of the Agent: it fixes who the unit is
// to its fleet from the unit's own config (device id, groups, an enrolled
// identity, the pinned fleet keys, --sim's demo broker) and starts the
// Agent once the unit has its identity, enrolling it first if it must.
//
// The direction of imports: cmd/roomd → appliance/agent → appliance,
// appliance/config and provisioning/*; nothing here imports cmd/ or
// appliance/unit (the Unit it configures implements agent.Unit).
package agent
