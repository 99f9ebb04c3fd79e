package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/hal/sim"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
	"github.com/konsult/konsult/media/simconf"
	"github.com/konsult/konsult/provisioning/network"
)

// status is what GET /v1/status returns.
type status struct {
	appliance.Status
	Version string     `json:"version"`
	Board   string     `json:"board"`
	Pins    []pinState `json:"pins"`
	Sim     *simStatus `json:"sim,omitempty"`
	Media   *mediaOut  `json:"media,omitempty"`
	// Remote is the far end as the unit plays and shows it (connector
	// "livekit", during a call).
	Remote *playout.Stats `json:"remote,omitempty"`
	// Fleet is the unit's view of its fleet; absent when the fleet is off.
	Fleet *fleetStatus `json:"fleet,omitempty"`
	// Network is the [network] section in force, secrets redacted.
	Network *network.Config `json:"network,omitempty"`
}

// mediaOut is what the conference connector handed to its encoders.
type mediaOut struct {
	VideoFrames uint64 `json:"video_frames"`
	Slates      uint64 `json:"slates"`
	AudioChunks uint64 `json:"audio_chunks"`
	Silences    uint64 `json:"silences"`
	LastIsSlate bool   `json:"last_is_slate"`
}

type pinState struct {
	Role   string `json:"role"`
	Line   string `json:"line"`
	Header int    `json:"header,omitempty"`
	Level  string `json:"level"`
}

type simStatus struct {
	Shutter sim.ShutterState `json:"shutter"`
	Faults  []string         `json:"faults"`
	Media   simconf.Stats    `json:"media"`
}

func (u *unit) Status() any { return u.status() }

func (u *unit) status() status {
	s := status{Status: u.machine.Status(), Version: Version, Board: u.boardName()}
	if u.cfg.Network.Managed() {
		n := u.cfg.Network.Redacted()
		s.Network = &n
	}
	for _, r := range board.Roles() {
		line := u.profile.Pins[r]
		if line == "" {
			continue
		}
		ps := pinState{Role: string(r), Line: line, Header: u.profile.Header[line], Level: "?"}
		if p := u.pinFor(r); p != nil {
			ps.Level = p.Read().String()
		}
		s.Pins = append(s.Pins, ps)
	}
	if u.lk != nil {
		if n := u.lk.Counters(); n != nil {
			s.Media = &mediaOut{VideoFrames: n.VideoFrames.Load(), Slates: n.Slates.Load(),
				AudioChunks: n.AudioChunks.Load(), Silences: n.Silences.Load(), LastIsSlate: n.LastIsSlate.Load()}
		}
	}
	if u.lkrtc != nil {
		if call := u.lkrtc.Current(); call != nil {
			st := call.Playout().Stats()
			s.Remote = &st
		}
	}
	if u.simBoard != nil {
		ss := &simStatus{Shutter: u.simBoard.Shutter(), Faults: []string{}}
		if u.simConf != nil {
			ss.Media = u.simConf.Stats()
		}
		for f, on := range u.simBoard.Faults() {
			if on {
				ss.Faults = append(ss.Faults, string(f))
			}
		}
		sort.Strings(ss.Faults)
		s.Sim = ss
	}
	return s
}

func (u *unit) pinFor(r board.Role) gpio.PinIO {
	switch r {
	case board.Shutter:
		return u.pins.Actuator
	case board.ShutterOpen:
		return u.pins.OpenSensor
	case board.ShutterClosed:
		return u.pins.ClosedSensor
	case board.LED, board.LEDRed, board.LEDGreen, board.LEDBlue:
		var p gpio.PinOut
		switch r {
		case board.LED:
			p = u.pins.LED.Single
		case board.LEDRed:
			p = u.pins.LED.R
		case board.LEDGreen:
			p = u.pins.LED.G
		case board.LEDBlue:
			p = u.pins.LED.B
		}
		if io, ok := p.(gpio.PinIO); ok {
			return io
		}
		return nil
	}
	return u.pins.Buttons[r]
}

func (u *unit) Subscribe(buf int) (<-chan appliance.Event, func()) { return u.machine.Subscribe(buf) }

func (u *unit) Do(ctx context.Context, a appliance.Action, source string) error {
	return u.machine.Do(ctx, a, source)
}

func (u *unit) Sim() localapi.Sim {
	if u.simBoard == nil {
		return nil
	}
	return simControls{u}
}

type simControls struct{ u *unit }

func (s simControls) Press(ctx context.Context, button string, hold time.Duration) error {
	line := s.u.profile.Pins[board.Role(button)]
	isButton := false
	for _, r := range board.ButtonRoles() {
		isButton = isButton || string(r) == button
	}
	if !isButton || line == "" {
		return fmt.Errorf("no button %q on this unit: use one of %s", button, strings.Join(s.u.buttonNames(), ", "))
	}
	return s.u.simBoard.Press(ctx, line, hold)
}

// Conference-side faults the simulated unit can take besides the board's.
const (
	faultJoinFails  = "join_fails"  // the next JOIN is refused by the "server"
	faultCallDrop   = "call_drop"   // the "server" ends the current call
	faultCameraLost = "camera_lost" // the camera disappears (on) or comes back (off)
)

func (s simControls) SetFault(fault string, on bool) error {
	u := s.u
	if u.simConf == nil && (fault == faultJoinFails || fault == faultCallDrop) {
		return fmt.Errorf("%s needs the simulated conference; this unit uses a real server (stop the server to test that)", fault)
	}
	switch fault {
	case faultJoinFails:
		if on {
			u.simConf.FailNextJoin(fmt.Errorf("401 token rejected (injected fault)"))
		} else {
			u.simConf.FailNextJoin(nil)
		}
		return nil
	case faultCallDrop:
		if on && !u.simConf.Drop(fmt.Errorf("the conference server went away (injected fault)")) {
			return fmt.Errorf("call_drop: there is no call to drop")
		}
		return nil
	case faultCameraLost:
		if u.lk != nil { // through the real capture pipeline, as an unplugged camera
			if !on {
				return nil // the next call opens the camera afresh
			}
			return u.lk.LoseDevice(gate.Video, errors.New("camera disconnected (injected fault): check its cable"))
		}
		return u.machine.DeviceLost(context.Background(), "camera", "camera disconnected (injected fault): check its cable", !on)
	}
	err := u.simBoard.SetFault(sim.Fault(fault), on)
	if err != nil {
		return fmt.Errorf("%w; the simulated conference also takes %s, %s, %s", err, faultJoinFails, faultCallDrop, faultCameraLost)
	}
	return nil
}

func (u *unit) buttonNames() []string {
	var out []string
	for _, r := range board.ButtonRoles() {
		if u.profile.Pins[r] != "" {
			out = append(out, string(r))
		}
	}
	return out
}

// Doctor is roomctl doctor: the wiring (hal/board), the unit's faults, and
// the conference connection (media/livekit, media/capture). Each failure
// names what to fix.
func (u *unit) Doctor(ctx context.Context) []localapi.Check {
	st := u.machine.Status()
	out := doctorChecks(u.profile.WiringChecks(u.pins, st.Shutter, u.led.HasPWM(), st.LED))
	if len(st.Faults) > 0 {
		out = append(out, localapi.Check{Name: "faults", OK: false, Detail: strings.Join(st.Faults, "; "),
			Fix: "the unit stays in fault (LED fast red blink) until the cause is gone"})
	}
	switch {
	case u.lk != nil:
		how := "LiveKit over WHIP (send only)"
		if u.lkrtc != nil {
			how = "LiveKit (two-way, its own signalling)"
		}
		out = append(out, localapi.Check{Name: "conference", OK: true, Detail: how + " at " + u.cfg.Conference.URL + ", room " + u.cfg.Conference.Room})
		out = append(out, doctorChecks(livekit.HostChecks(u.cfg.Conference.URL, u.cfg.Conference.AllowedHosts, u.cfg.Conference.AllowPrivateICE))...)
		for _, ch := range u.lk.Encoders() {
			out = append(out, localapi.Check{Name: "encoder " + string(ch.Kind), OK: ch.Chosen != nil, Detail: ch.Explain()})
		}
		out = append(out, doctorChecks(capture.DeviceChecks(u.simBoard != nil, u.cfg.Conference.Camera, u.cfg.Conference.Microphone))...)
	case u.simConf != nil:
		out = append(out, localapi.Check{Name: "conference", OK: true, Detail: "simulated local conference (no server configured; nothing leaves the machine)"})
	default:
		out = append(out, localapi.Check{Name: "conference", OK: false, Detail: "no conference server configured", Fix: "add a [conference] section to the config"})
	}
	return out
}

// doctorChecks maps a lower layer's checks (media/livekit, media/capture)
// to the local API's.
func doctorChecks[C ~struct {
	Name   string
	OK     bool
	Detail string
	Fix    string
}](cs []C) []localapi.Check {
	out := make([]localapi.Check, len(cs))
	for i, c := range cs {
		out[i] = localapi.Check(c)
	}
	return out
}
