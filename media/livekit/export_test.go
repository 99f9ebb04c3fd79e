package livekit

import (
	"errors"

	lkp "github.com/livekit/protocol/livekit"
)

// SimulateNodeFailure asks the server, over the call's signalling, to drop
// the unit's participant as a failed node would (LiveKit's own
// SimulateScenario, which livekit-client's tests use): the server closes the
// participant and its WebSocket without a word, and answers the unit's
// resume with LeaveRequest{action: RECONNECT, reason: STATE_MISMATCH}.
// For tests only.
func (c *RTCCall) SimulateNodeFailure() error {
	c.mu.Lock()
	sig := c.sig
	c.mu.Unlock()
	if sig == nil {
		return errors.New("no signalling connection")
	}
	return sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Simulate{Simulate: &lkp.SimulateScenario{
		Scenario: &lkp.SimulateScenario_NodeFailure{NodeFailure: true},
	}}})
}
