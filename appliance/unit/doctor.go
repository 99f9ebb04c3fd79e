package unit

import (
	"context"
	"fmt"
	"strings"

	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/livekit"
)

// Doctor is roomctl doctor: the wiring (hal/board), the unit's faults, and
// the conference connection (media/livekit, media/capture). Each failure
// names what to fix.
func (p *parts) Doctor(ctx context.Context) []localapi.Check {
	st := p.machine.Status()
	out := doctorChecks(p.profile.WiringChecks(p.pins, st.Shutter, p.led.HasPWM(), st.LED))
	if len(st.Faults) > 0 {
		out = append(out, localapi.Check{Name: "faults", OK: false, Detail: strings.Join(st.Faults, "; "),
			Fix: "the unit stays in fault (LED fast red blink) until the cause is gone"})
	}
	out = append(out, p.secretCheck()...)
	switch {
	case p.call.lk != nil:
		how := "LiveKit over WHIP (send only)"
		if p.call.lkrtc != nil {
			how = "LiveKit (two-way, its own signalling)"
		}
		out = append(out, localapi.Check{Name: "conference", OK: true, Detail: how + " at " + p.cfg.Conference.URL + ", room " + p.cfg.Conference.Room})
		out = append(out, doctorChecks(livekit.HostChecks(p.cfg.Conference.URL, p.cfg.Conference.AllowedHosts, p.cfg.Conference.AllowPrivateICE))...)
		for _, ch := range p.call.lk.Encoders() {
			out = append(out, localapi.Check{Name: "encoder " + string(ch.Kind), OK: ch.Chosen != nil, Detail: ch.Explain()})
		}
		out = append(out, doctorChecks(capture.DeviceChecks(p.simBoard != nil, p.cfg.Conference.Camera, p.cfg.Conference.Microphone))...)
		out = append(out, p.audioCheck())
	case p.simConf != nil:
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

// audioCheck says whether the room's echo is cancelled, and how well it was
// over the last call: a loudspeaker beside the microphone needs it.
func (p *parts) audioCheck() localapi.Check {
	st := p.audio.stats()
	if st == nil || !st.EchoCancel {
		return localapi.Check{Name: "echo cancellation", OK: false, Detail: "off: the far end hears its own voice back from the unit's loudspeaker",
			Fix: "set [audio] aec = true"}
	}
	detail := "on (SpeexDSP)"
	if st.ERLEKnown {
		detail += fmt.Sprintf("; %.1f dB of echo removed over the last call", st.ERLE)
	} else {
		detail += "; not measured yet (the far end has not spoken)"
	}
	if st.DelayMs >= 0 {
		detail += fmt.Sprintf("; echo delay %d ms", st.DelayMs)
	}
	return localapi.Check{Name: "echo cancellation", OK: true, Detail: detail}
}
