package unit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/hal/button"
	"github.com/konsult/konsult/hal/led"
	"github.com/konsult/konsult/hal/shutter"
	"github.com/konsult/konsult/hal/sim"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
	"github.com/konsult/konsult/media/simconf"
)

// parts is one opening of the unit under one config: the pins and what
// drives them, the gate, the conference connector and the machine that
// decides over them. A config change replaces all of it.
type parts struct {
	cfg     *config.Config
	log     *slog.Logger
	profile board.Profile
	pins    board.Pins
	buttons []*button.Button
	led     *led.LED
	shutter *shutter.Shutter
	gate    *gate.Gate
	machine *appliance.Machine

	simBoard *sim.Board          // nil on hardware
	simConf  *simconf.Conference // the local simulated conference, when no server is configured
	call     callParts           // what the unit has for its calls
	screen   *screenHooks        // nil without a screen
	audio    audioParts          // the microphone's processing, the simulated room
	// tokens is the conference's TokenSource when the unit's tokens come
	// from fleetd (consult.go); fleetUnit says the unit is enrolled.
	tokens    func(context.Context) (string, error)
	takeKey   func() (joinKey, error) // the fleet's end-to-end key of the join's token
	fleetUnit bool
	e2ee      e2eeParts // the end-to-end keys (e2ee.go)

	wg sync.WaitGroup // button pumps
}

// callParts is what the unit has for its calls beside the machine: the
// connector a config selects and its handles for status and doctor. The
// screen's hooks are parts.screen (screen.go).
type callParts struct {
	lk    connector             // connector "livekit" or "livekit-whip"
	lkrtc *livekit.RTCConnector // connector "livekit": the far end's side too
}

// connector is what the status and doctor need of either LiveKit connector.
type connector interface {
	Counters() *capture.Counters
	LoseDevice(gate.Kind, error) error
	Encoders() []encoder.Choice
}

// open opens the board, media and conference under cfg.
func (u *Unit) open(cfg *config.Config) (*parts, error) {
	profile, err := board.Lookup(cfg.Unit.Board)
	if err != nil {
		return nil, fmt.Errorf("config unit.board: %w", err)
	}
	overrides := make(map[board.Role]string, len(cfg.Pins))
	for k, v := range cfg.Pins {
		overrides[board.Role(k)] = v
	}
	if profile, err = profile.With(overrides); err != nil {
		return nil, fmt.Errorf("config [pins]: %w", err)
	}
	if miss := profile.Missing(); len(miss) > 0 {
		return nil, fmt.Errorf("config [pins]: role %s has no pin: set it under [pins], e.g. %s = \"GPIO17\"", miss[0], miss[0])
	}
	p := &parts{cfg: cfg, log: u.d.Log, profile: profile, gate: gate.New(), screen: u.screen()}
	p.tokens, p.fleetUnit = u.fleetTokens(cfg.Conference.APISecret, cfg.Conference.Token), u.d.Identity != nil
	if p.tokens != nil {
		p.takeKey = u.consult.takeKey
	}

	var byName func(string) gpio.PinIO
	if u.d.Simulate {
		p.simBoard = sim.New(sim.Config{
			Actuator:     wired(profile.Pins[board.Shutter]),
			OpenSensor:   wired(profile.Pins[board.ShutterOpen]),
			ClosedSensor: wired(profile.Pins[board.ShutterClosed]),
			Travel:       cfg.Sim.Travel.Duration,
			Lines:        simLines(),
		})
		byName = p.simBoard.ByName
	} else {
		if u.d.GPIO == nil {
			return nil, errors.New("no GPIO on this unit")
		}
		if byName, err = u.d.GPIO(); err != nil {
			return nil, err
		}
	}
	if p.pins, err = board.Open(profile, byName); err != nil {
		p.halt()
		return nil, fmt.Errorf("board %s: %w", profile.Name, err)
	}
	if cfg.Shutter.RequireSensors && (p.pins.OpenSensor == nil || p.pins.ClosedSensor == nil) {
		p.halt()
		return nil, errors.New("config: the shutter has no open and closed sensors, so roomd cannot confirm it is closed: wire them and set pins shutter_open and shutter_closed, or set shutter.require_sensors = false to accept an unconfirmed shutter")
	}
	if err := p.openHAL(); err != nil {
		p.halt()
		return nil, err
	}
	conf, err := p.conference(u.d.Simulate)
	if err != nil {
		p.halt()
		return nil, err
	}
	var onReset func()
	if u.d.Reset != nil {
		onReset = u.requestReset
	}
	p.machine = appliance.New(appliance.Config{
		Gate:          p.gate,
		Shutter:       p.shutter,
		ShutterFaults: p.shutter.Faults(),
		LED:           p.led,
		Conference:    conf,
		JoinTimeout:   cfg.Call.JoinTimeout.Duration,
		LeaveTimeout:  cfg.Call.LeaveTimeout.Duration,
		MaxCallLength: cfg.Call.MaxLength.Duration,
		AloneGrace:    cfg.Call.LeaveWhenAlone.Duration,
		ResetHold:     resetHold(cfg, onReset),
		FactoryReset:  onReset,
		CallLock:      u.d.CallLock,
		Logger:        u.d.Log,
	})
	return p, nil
}

// conference is the connector the config selects: LiveKit two-way
// ("livekit"), LiveKit over WHIP ("livekit-whip"), any WHIP server
// ("whip", e.g. MediaMTX: url is the endpoint), the local simulated
// conference in --sim without a server, or none (JOIN is refused).
func (p *parts) conference(simulate bool) (appliance.Conference, error) {
	cfg := p.cfg
	switch c := cfg.Conference; {
	case c.Connector == "livekit-whip" || c.Connector == "livekit" || c.Connector == "whip":
		if simulate {
			c.Camera, c.Microphone, c.Speaker = capture.TestDevice, capture.TestDevice, playout.DeviceNull
		}
		lc := livekit.Config{
			URL: c.URL, Room: c.Room, Identity: c.Identity,
			APIKey: c.APIKey, APISecret: c.APISecret, Token: c.Token, AllowedHosts: c.AllowedHosts,
			AllowPrivateICE: c.AllowPrivateICE,
		}
		if c.Connector == "whip" {
			// Any RFC 9725 server: url is its endpoint, token (if any) the
			// bearer token; room and identity are LiveKit's notions.
			lc.PlainWHIP, lc.APIKey, lc.APISecret = true, "", ""
			lc.Room, lc.Identity = "whip", "unit"
		} else if p.tokens != nil {
			lc.TokenSource = p.tokens
			if lc.Room == "" {
				lc.Room = "fleet" // fleetd's token names the room
			}
			p.e2ee.take = p.takeKey
		}
		if c.E2EEKeyFile != "" {
			material, err := config.LoadE2EEKey(c.E2EEKeyFile)
			if err != nil {
				return nil, err
			}
			if p.e2ee.file, err = newJoinKey(material); err != nil {
				return nil, fmt.Errorf("conference.e2ee_key_file: %w", err)
			}
		}
		lc.E2EESource = p.e2ee.source
		lm := livekit.Media{
			Width: c.Width, Height: c.Height, FPS: c.FPS, VideoCodec: c.VideoCodec,
			VideoBitRate: c.VideoBitrateKbps * 1000, AudioBitRate: c.AudioBitrateKbps * 1000,
			Stamp:  simulate && cfg.Sim.Stamp, // a real unit never draws on the picture
			Camera: c.Camera, Microphone: c.Microphone,
			// A camera that codes H.264 itself is sent without re-encoding
			// when it offers the configured size (the encoder choice says).
			PassThrough: encoder.PassThroughConfig{Mode: c.VideoPassthrough, Camera: c.Camera, Width: c.Width, Height: c.Height, FPS: c.FPS},
		}
		p.screen.media(p, &lm)
		audio, err := p.openAudio(simulate)
		if err != nil {
			return nil, err
		}
		p.audio = audio
		p.audio.media(&lm)
		if c.Connector == "livekit" {
			opt := livekit.RTCOptions{Speaker: c.Speaker, ForceRelay: c.ForceRelay}
			p.screen.rtc(&opt)
			p.audio.rtc(&opt)
			for _, s := range c.ICEServers {
				opt.ICEServers = append(opt.ICEServers, webrtc.ICEServer{URLs: s.URLs, Username: s.Username, Credential: s.Credential})
			}
			rtc, err := livekit.NewRTC(lc, lm, opt, p.gate, p.log)
			if err != nil {
				return nil, fmt.Errorf("config [conference]: %w", err)
			}
			p.call = callParts{lk: rtc, lkrtc: rtc}
			return p.screen.join(rtc, &p.e2ee), nil
		}
		w, err := livekit.NewWHIP(lc, lm, p.gate, p.log)
		if err != nil {
			return nil, fmt.Errorf("config [conference]: %w", err)
		}
		p.call = callParts{lk: w}
		return appliance.JoinWith(w.Join), nil
	case simulate:
		p.simConf = simconf.New(simconf.Config{Gate: p.gate, JoinDelay: cfg.Sim.JoinDelay.Duration})
		return appliance.JoinWith(p.simConf.Join), nil
	}
	return noConference{}, nil
}

func resetHold(cfg *config.Config, onReset func()) time.Duration {
	if onReset == nil {
		return 0
	}
	return cfg.Buttons.FactoryResetHold.Duration
}

// simLines is the simulated board's header: the Raspberry Pi's GPIO0–GPIO27,
// and nothing else, so a misspelt pin fails in --sim as it would on the unit.
func simLines() []string {
	lines := make([]string, 0, 28)
	for i := 0; i <= 27; i++ {
		lines = append(lines, fmt.Sprintf("GPIO%d", i))
	}
	return lines
}

// wired maps an unset role to the simulated board's "not wired".
func wired(line string) string {
	if line == "" {
		return sim.NotWired
	}
	return line
}

func (p *parts) openHAL() error {
	var err error
	for _, role := range board.ButtonRoles() {
		pin, ok := p.pins.Buttons[role]
		if !ok || pin == nil {
			continue
		}
		b, err := button.New(pin, button.Config{
			Name:      string(role),
			Debounce:  p.cfg.Buttons.Debounce.Duration,
			LongPress: p.cfg.Buttons.LongPress.Duration,
		})
		if err != nil {
			return fmt.Errorf("button %s on %s: %w", role, pin.Name(), err)
		}
		p.buttons = append(p.buttons, b)
	}
	if p.led, err = led.New(p.pins.LED); err != nil {
		return fmt.Errorf("LED: %w", err)
	}
	sc := shutter.Config{Actuator: p.pins.Actuator, Timeout: p.cfg.Shutter.Timeout.Duration}
	if p.pins.OpenSensor != nil {
		sc.OpenSensor = p.pins.OpenSensor
	}
	if p.pins.ClosedSensor != nil {
		sc.ClosedSensor = p.pins.ClosedSensor
	}
	if p.shutter, err = shutter.New(sc); err != nil {
		return fmt.Errorf("shutter: %w", err)
	}
	return nil
}

func (p *parts) pumpButtons(ctx context.Context) {
	for _, b := range p.buttons {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for ev := range b.Events() {
				if err := p.machine.Button(ctx, ev); err != nil {
					return
				}
			}
		}()
	}
}

// halt releases every pin: buttons stop, LED off, shutter actuator released
// (closed by the wiring).
func (p *parts) halt() {
	for _, b := range p.buttons {
		_ = b.Halt()
	}
	p.wg.Wait()
	if p.led != nil {
		_ = p.led.Halt()
	}
	if p.shutter != nil {
		_ = p.shutter.Halt()
	}
	if p.simBoard != nil {
		_ = p.simBoard.Halt()
	}
	p.audio.close()
}

func (p *parts) boardName() string {
	if p.simBoard != nil {
		return "sim(" + p.profile.Name + ")"
	}
	return p.profile.Name
}

// noConference is the connector until one is configured: JOIN is refused
// with the reason instead of pretending.
type noConference struct{}

func (noConference) Join(context.Context) (appliance.Call, error) {
	return nil, errors.New("no conference server is configured: add a [conference] section to the config, or run roomd --sim for the local simulated conference")
}
