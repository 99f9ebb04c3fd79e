package unit

import (
	"context"
	"sort"

	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/hal/sim"
	"github.com/konsult/konsult/media/audioproc"
	"github.com/konsult/konsult/media/playout"
	"github.com/konsult/konsult/media/simconf"
	"github.com/konsult/konsult/provisioning/network"

	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/provisioning/fleet"
)

// Status is GET /v1/status: the machine, the pins, the media and, when
// the fleet is on, the fleet's view of the unit.
func (u *Unit) Status() any {
	p := u.parts()
	if p == nil {
		return Status{}
	}
	s := p.status(u.d.Version)
	s.Display = u.d.DisplayURL
	if u.d.Fleet != nil {
		s.Fleet = u.d.Fleet()
	}
	s.Consultation = u.consultStatus()
	return s
}

// MachineStatus is the machine's status (Idle while the parts are swapped).
func (u *Unit) MachineStatus() appliance.Status { return u.Appliance().Status() }

// Sim returns the simulated board's controls, or nil on real hardware.
func (u *Unit) Sim() localapi.Sim {
	p := u.parts()
	if p == nil {
		return nil
	}
	return p.Sim()
}

// Doctor is roomctl doctor on whichever parts are running.
func (u *Unit) Doctor(ctx context.Context) []localapi.Check {
	p := u.parts()
	if p == nil {
		return []localapi.Check{{Name: "unit", Detail: "a config change is being applied", Fix: "run doctor again in a moment"}}
	}
	return p.Doctor(ctx)
}

// FleetDoctor is the doctor command's checks, in the fleet's wire shape.
func (u *Unit) FleetDoctor(ctx context.Context) []fleet.DoctorCheck {
	var out []fleet.DoctorCheck
	for _, c := range u.Doctor(ctx) {
		out = append(out, fleet.DoctorCheck(c))
	}
	return out
}

// Status is what GET /v1/status returns.
type Status struct {
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
	Fleet any `json:"fleet,omitempty"`
	// Network is the [network] section in force, secrets redacted.
	Network *network.Config `json:"network,omitempty"`
	// Display is the address of the unit's own screen page, never its
	// secret; absent without a screen.
	Display string `json:"display,omitempty"`
	// Audio is the microphone's processing: which stages run, and the echo
	// canceller's measured ERLE over the last call; absent with all off.
	Audio *audioproc.Stats `json:"audio,omitempty"`
	// Consultation is the next booked consultation of a fleet unit whose
	// tokens come from fleetd (ids and times only); Due says JOIN enters
	// it now.
	Consultation *consultStatus `json:"consultation,omitempty"`
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

func (p *parts) status(version string) Status {
	s := Status{Status: p.machine.Status(), Version: version, Board: p.boardName()}
	if p.cfg.Network.Managed() {
		n := p.cfg.Network.Redacted()
		s.Network = &n
	}
	for _, r := range board.Roles() {
		line := p.profile.Pins[r]
		if line == "" {
			continue
		}
		ps := pinState{Role: string(r), Line: line, Header: p.profile.Header[line], Level: "?"}
		if p := p.pinFor(r); p != nil {
			ps.Level = p.Read().String()
		}
		s.Pins = append(s.Pins, ps)
	}
	if p.call.lk != nil {
		if n := p.call.lk.Counters(); n != nil {
			s.Media = &mediaOut{VideoFrames: n.VideoFrames.Load(), Slates: n.Slates.Load(),
				AudioChunks: n.AudioChunks.Load(), Silences: n.Silences.Load(), LastIsSlate: n.LastIsSlate.Load()}
		}
	}
	s.Audio = p.audio.stats()
	if p.call.lkrtc != nil {
		if call := p.call.lkrtc.Current(); call != nil {
			st := call.Playout().Stats()
			s.Remote = &st
		}
	}
	if p.simBoard != nil {
		ss := &simStatus{Shutter: p.simBoard.Shutter(), Faults: []string{}}
		if p.simConf != nil {
			ss.Media = p.simConf.Stats()
		}
		for f, on := range p.simBoard.Faults() {
			if on {
				ss.Faults = append(ss.Faults, string(f))
			}
		}
		sort.Strings(ss.Faults)
		s.Sim = ss
	}
	return s
}

func (p *parts) pinFor(r board.Role) gpio.PinIO {
	switch r {
	case board.Shutter:
		return p.pins.Actuator
	case board.ShutterOpen:
		return p.pins.OpenSensor
	case board.ShutterClosed:
		return p.pins.ClosedSensor
	case board.LED, board.LEDRed, board.LEDGreen, board.LEDBlue:
		var out gpio.PinOut
		switch r {
		case board.LED:
			out = p.pins.LED.Single
		case board.LEDRed:
			out = p.pins.LED.R
		case board.LEDGreen:
			out = p.pins.LED.G
		case board.LEDBlue:
			out = p.pins.LED.B
		}
		if io, ok := out.(gpio.PinIO); ok {
			return io
		}
		return nil
	}
	return p.pins.Buttons[r]
}
