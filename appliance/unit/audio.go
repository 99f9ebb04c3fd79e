package unit

import (
	"fmt"

	"github.com/konsult/konsult/media/audioproc"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// audioParts is one opening's sound processing: the microphone's echo
// canceller, noise suppressor and gain control ([audio]) and, in --sim,
// the simulated room that plays the speaker back into the microphone
// ([sim.echo]). It lives as long as the opening, across its calls, so the
// canceller keeps what it learnt of the room.
type audioParts struct {
	proc *audioproc.Processor // nil: every stage off
	room *audioproc.EchoPath  // nil: no simulated echo
}

func (p *parts) openAudio(simulate bool) (audioParts, error) {
	cfg := p.cfg
	var a audioParts
	pc := audioproc.Config{EchoCancel: cfg.Audio.AEC, NoiseSuppress: cfg.Audio.NS, GainControl: cfg.Audio.AGC, Rate: playout.SampleRate, Log: p.log}
	if pc.Enabled() {
		proc, err := audioproc.New(pc)
		if err != nil {
			return a, fmt.Errorf("config [audio]: %w", err)
		}
		a.proc = proc
	}
	if e := cfg.Sim.Echo; simulate && e.Enabled {
		room, err := audioproc.NewEchoPath(audioproc.EchoConfig{Delay: e.Delay.Duration, AttenuationDB: e.AttenuationDB, Reverb: e.Reverb.Duration}, playout.SampleRate)
		if err != nil {
			a.close()
			return audioParts{}, fmt.Errorf("config [sim.echo]: %w", err)
		}
		a.room = room
	}
	return a, nil
}

// media hands the microphone's side to a connector's media settings;
// rtc the speaker's side (the exact mix sent to the speaker).
func (a audioParts) media(lm *livekit.Media) {
	if a.proc != nil {
		lm.Processor = a.proc
	}
	if a.room != nil {
		lm.Room = a.room
	}
}

func (a audioParts) rtc(opt *livekit.RTCOptions) {
	if a.proc != nil || a.room != nil {
		opt.OnMix = audioproc.Tap(a.proc, a.room)
	}
}

// stats is the processor's view for the status; nil without one.
func (a audioParts) stats() *audioproc.Stats {
	if a.proc == nil {
		return nil
	}
	s := a.proc.Stats()
	return &s
}

func (a audioParts) close() {
	if a.proc != nil {
		a.proc.Close()
	}
}
