package unit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/hal/sim"
	"github.com/konsult/konsult/media/gate"
)

func (p *parts) Sim() localapi.Sim {
	if p.simBoard == nil {
		return nil
	}
	return simControls{p}
}

type simControls struct{ p *parts }

func (s simControls) Press(ctx context.Context, button string, hold time.Duration) error {
	line := s.p.profile.Pins[board.Role(button)]
	isButton := false
	for _, r := range board.ButtonRoles() {
		isButton = isButton || string(r) == button
	}
	if !isButton || line == "" {
		return fmt.Errorf("no button %q on this unit: use one of %s", button, strings.Join(s.p.buttonNames(), ", "))
	}
	return s.p.simBoard.Press(ctx, line, hold)
}

// Conference-side faults the simulated unit can take besides the board's.
const (
	faultJoinFails  = "join_fails"  // the next JOIN is refused by the "server"
	faultCallDrop   = "call_drop"   // the "server" ends the current call
	faultCameraLost = "camera_lost" // the camera disappears (on) or comes back (off)
)

func (s simControls) SetFault(fault string, on bool) error {
	p := s.p
	if p.simConf == nil && (fault == faultJoinFails || fault == faultCallDrop) {
		return fmt.Errorf("%s needs the simulated conference; this unit uses a real server (stop the server to test that)", fault)
	}
	switch fault {
	case faultJoinFails:
		if on {
			p.simConf.FailNextJoin(fmt.Errorf("401 token rejected (injected fault)"))
		} else {
			p.simConf.FailNextJoin(nil)
		}
		return nil
	case faultCallDrop:
		if on && !p.simConf.Drop(fmt.Errorf("the conference server went away (injected fault)")) {
			return fmt.Errorf("call_drop: there is no call to drop")
		}
		return nil
	case faultCameraLost:
		if p.call.lk != nil { // through the real capture pipeline, as an unplugged camera
			if !on {
				return nil // the next call opens the camera afresh
			}
			return p.call.lk.LoseDevice(gate.Video, errors.New("camera disconnected (injected fault): check its cable"))
		}
		return p.machine.DeviceLost(context.Background(), "camera", "camera disconnected (injected fault): check its cable", !on)
	}
	err := p.simBoard.SetFault(sim.Fault(fault), on)
	if err != nil {
		return fmt.Errorf("%w; the simulated conference also takes %s, %s, %s", err, faultJoinFails, faultCallDrop, faultCameraLost)
	}
	return nil
}

func (p *parts) buttonNames() []string {
	var out []string
	for _, r := range board.ButtonRoles() {
		if p.profile.Pins[r] != "" {
			out = append(out, string(r))
		}
	}
	return out
}
