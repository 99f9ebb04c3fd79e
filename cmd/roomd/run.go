package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/host/v3"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/hal/button"
	"github.com/konsult/konsult/hal/led"
	"github.com/konsult/konsult/hal/shutter"
	"github.com/konsult/konsult/hal/sim"
	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
	"github.com/konsult/konsult/media/simconf"
	"github.com/konsult/konsult/provisioning/network"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "dev"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	for {
		err := runOnce(ctx, args, stdout, stderr)
		if errors.Is(err, errFactoryReset) && slices.Contains(args, "--sim") && ctx.Err() == nil && os.Getenv("NOTIFY_SOCKET") == "" {
			// A simulated unit has no service manager to start it again.
			// Under systemd (the image's boot test runs --sim) it has: it
			// was told STOPPING=1, and would kill a roomd that carried on.
			fmt.Fprintln(stdout, "roomd: factory reset done; starting again as a new unit")
			continue
		}
		return err
	}
}

func runOnce(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	start := time.Now()
	fs := flag.NewFlagSet("roomd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (TOML); built-in defaults when empty")
	simulate := fs.Bool("sim", false, "run on the simulated board and the local simulated conference")
	socket := fs.String("socket", "", "override api.socket")
	httpAddr := fs.String("http", "", "override api.http: also serve the local API on this loopback address, e.g. 127.0.0.1:8787 (\"off\" to disable; off by default)")
	printDefaults := fs.Bool("print-default-config", false, "print the built-in config and exit")
	takeClaim := fs.String("take-claim", "", "as root (konsult-claim.service): move the claim code from this file (the boot partition's konsult-claim.txt) into the unit's identity directory, then exit")
	applyNet := fs.String("apply-network", "", "as root (konsult-network.service): hand the profiles roomd rendered in this directory to NetworkManager, then exit")
	nmDir := fs.String("nm-dir", network.DefaultDir, "with --apply-network: NetworkManager's keyfile directory")
	nmcli := fs.String("nmcli", "nmcli", "with --apply-network: the nmcli to run (\"\" = write the keyfiles only)")
	netUID := fs.Int("network-uid", -1, "with --apply-network: the uid that must own the folder's files (default: the folder's owner, roomd's user)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: roomd [--sim] [--config FILE]\n\nThe Konsult room unit daemon. Flags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: roomd takes flags only (see roomd --help)", fs.Arg(0))
	}
	if *printDefaults {
		_, err := io.WriteString(stdout, defaultConfig)
		return err
	}
	if *applyNet != "" {
		return applyNetworkHelper(ctx, *applyNet, *nmDir, *nmcli, *netUID)
	}
	if *takeClaim != "" {
		c, err := readLocal(*configPath)
		if err != nil {
			return err
		}
		cfg, err := c.Effective(nil)
		if err != nil {
			return err
		}
		return takeClaimCode(*takeClaim, identityDir(cfg.Fleet, false, ""), stdout)
	}
	local, err := readLocal(*configPath)
	if err != nil {
		return err
	}
	// The flags win over every config, the fleet's included.
	override := func(c *Config) *Config {
		if *socket != "" {
			c.API.Socket = *socket
		}
		if *httpAddr == "off" {
			c.API.HTTP = ""
		} else if *httpAddr != "" {
			c.API.HTTP = *httpAddr
		}
		if c.API.Socket == "" {
			c.API.Socket = localapi.DefaultSocket()
		}
		return c
	}
	effective := func(fleetTOML []byte) (*Config, error) {
		c, err := local.Effective(fleetTOML)
		if err != nil {
			return nil, err
		}
		return override(c), nil
	}
	cfg, err := effective(nil)
	if err != nil {
		return err
	}
	// Before the fleet setup below writes keys beside the socket.
	if err := localapi.PrepareSocketDir(cfg.API.Socket); err != nil {
		return fmt.Errorf("local API: %w", err)
	}
	level := new(slog.LevelVar)
	log := newLogger(cfg, stderr, level)

	h := newHolder(log, level, *simulate)
	fl, err := setupFleet(cfg, *simulate, log, stdout)
	if err != nil {
		return err
	}
	h.net = &netApplier{dir: networkDir(cfg, *simulate), helper: cfg.Unit.NetworkApply == "helper" || cfg.Unit.NetworkApply == "" && !*simulate,
		identity: func(c *Config) network.Identity { return unitIdentity(fl.provisioningOrNil(), c) }}
	defer fl.close()
	// A factory reset (buttons held, or roomctl factory-reset) stops roomd;
	// the wipe happens once everything is closed, so nothing writes the
	// state back.
	resetC := make(chan struct{}, 1)
	h.onReset = func() {
		select {
		case resetC <- struct{}{}:
		default:
		}
	}
	startCfg := cfg
	restart := make(chan struct{}, 1)
	var agentP atomic.Pointer[agent.Agent]
	if fl != nil {
		if fl.prov != nil {
			fl.prov.wipe = []string{fl.stateDir}
			fl.prov.SetFault(func(detail string, cleared bool) {
				if m, err := h.machine(); err == nil {
					fctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					_ = m.DeviceLost(fctx, "identity", detail, cleared)
				}
			})
			h.provisioning = fl.prov
		}
		if fl.needsEnrolment() {
			// The unit works on its own config while it waits for the fleet.
			if err := h.apply(cfg); err != nil {
				return err
			}
		} else {
			agent, err := fl.newAgent(cfg, effective, h, *simulate, restart)
			if err != nil {
				return err
			}
			agentP.Store(agent)
		}
		h.fleet = func() *fleetStatus {
			st := &fleetStatus{DemoKey: fl.demoKey}
			if a := agentP.Load(); a != nil {
				st.ReportedDoc, st.Connected = a.Reported(), a.Connected()
			}
			if fl.prov != nil {
				st.Enrolment = fl.prov.statusView()
			}
			if c, err := fl.connection(h.config()); err == nil {
				st.Broker = c.Link.Broker
			}
			return st
		}
	} else if err := h.apply(cfg); err != nil {
		return err
	}
	defer h.close()
	// The API runs on the config roomd started with (api changes take
	// effect at the next start).
	cfg = h.config()

	var listeners []net.Listener
	ul, err := localapi.ListenUnix(cfg.API.Socket)
	if err != nil {
		return fmt.Errorf("local API: %w", err)
	}
	listeners = append(listeners, ul)
	if cfg.API.HTTP != "" {
		hl, err := localapi.ListenLoopback(cfg.API.HTTP)
		if err != nil {
			ul.Close()
			return fmt.Errorf("local API (api.http): %w", err)
		}
		listeners = append(listeners, hl)
	}
	// localapi decides what each listener serves: the whole API on the
	// socket, the browser-proof part on loopback HTTP.
	srv := localapi.NewServer(h, log)
	for _, l := range listeners {
		go func() { _ = srv.Serve(l) }()
	}

	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	if fl != nil {
		go func() {
			if fl.needsEnrolment() {
				if err := fl.prov.enrol(agentCtx, Version); err != nil {
					agentDone <- err
					return
				}
				err := fl.adoptIdentity(startCfg)
				var a *agent.Agent
				if err == nil {
					a, err = fl.newAgent(startCfg, effective, h, *simulate, restart)
				}
				if err != nil {
					agentDone <- err
					return
				}
				agentP.Store(a)
			}
			a := agentP.Load()
			if fl.prov != nil {
				fl.prov.SetRefresh(a.RefreshReported)
				go fl.prov.watch(agentCtx, a.Connected, time.Minute)
			}
			agentDone <- a.Run(agentCtx)
		}()
	} else {
		close(agentDone)
	}

	addrs := make([]string, len(listeners))
	for i, l := range listeners {
		addrs[i] = l.Addr().String()
	}
	u := h.unit()
	log.Info("ready", "version", Version, "board", u.boardName(), "sim", *simulate,
		"api", strings.Join(addrs, ","), "fleet", fl != nil, "startup", time.Since(start).Round(time.Microsecond).String())
	fmt.Fprintf(stdout, "roomd ready: board=%s api=%s\n", u.boardName(), strings.Join(addrs, " "))
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("could not tell systemd that roomd is ready", "err", err)
	}
	if p := watchdogPeriod(); p > 0 {
		go feedWatchdog(ctx, p, h.alive, sdNotify, log)
	}

	// A factory reset (buttons or API) must end roomd in every
	// configuration: with the fleet off (agentDone is closed at once) and
	// after the agent has stopped, too. So the agent's end only stops
	// watching the agent; the loop still waits for a reset, a restart or a
	// signal.
	var result error
	agentC, agentEnded := (<-chan error)(agentDone), fl == nil
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-restart:
			log.Warn("restarting: the fleet asked for it")
			result = errRestart
			break wait
		case <-resetC:
			log.Warn("factory reset: wiping the unit's identity and fleet state, then starting as a new unit")
			result = errFactoryReset
			break wait
		case err := <-agentC:
			agentC, agentEnded = nil, true
			if err != nil {
				log.Error("fleet agent stopped; the unit keeps running without its fleet", "err", err)
			}
		}
	}
	log.Info("stopping: closing the shutter and leaving any call")
	_ = sdNotify("STOPPING=1")
	stopAgent()
	if !agentEnded {
		if err := <-agentDone; err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("fleet agent", "err", err)
		}
	}
	u = h.unit()
	runErr := h.close()
	var st appliance.Status
	if u != nil {
		st = u.machine.Status()
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	attrs := []any{"shutter", st.Shutter, "led", st.LED, "gate_video", st.Gate.Video, "gate_audio", st.Gate.Audio}
	if u != nil && u.simBoard != nil {
		sh := u.simBoard.Shutter()
		attrs = append(attrs, "sim_shutter", sh.Position, "sim_actuator", sh.Actuator.String())
	}
	log.Info("stopped", attrs...)
	if runErr != nil {
		return runErr
	}
	if errors.Is(result, errFactoryReset) {
		if err := factoryWipe(fl, startCfg, *simulate); err != nil {
			return fmt.Errorf("factory reset: %w", err)
		}
		log.Info("factory reset: wiped")
	}
	return result
}

// factoryWipe removes what makes the unit someone's: its identity (key
// first), the fleet's configs, nonces and queued events. The local config
// file under /etc and the journal are the installer's and the system's;
// README.md "Factory reset" says what stays.
func factoryWipe(fl *fleetSetup, local *Config, simulate bool) error {
	idDir := identityDir(local.Fleet, simulate, local.API.Socket)
	var err error
	if fl != nil && fl.prov != nil {
		err = fl.prov.wipeAll()
	} else {
		// With the fleet off the state folder may still hold what an
		// earlier fleet left there: it goes too, as README.md says.
		stateDir := local.Fleet.StateDir
		if fl != nil {
			stateDir = fl.stateDir
		} else if stateDir == "" {
			stateDir = defaultStateDir(simulate, local.API.Socket)
		}
		dirs := []string{idDir, stateDir}
		var errs []error
		for _, d := range dirs {
			if e := os.RemoveAll(d); e != nil {
				errs = append(errs, e)
			}
		}
		err = errors.Join(errs...)
	}
	if err != nil {
		return err
	}
	// The journal is the system's: konsult-reset.path sees this marker and
	// konsult-reset.service (root) vacuums it, then removes the marker.
	marker := filepath.Join(filepath.Dir(idDir), resetMarker)
	return atomicfile.Write(marker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
}

// resetMarker, next to the identity directory (/var/lib/konsult), asks
// konsult-reset.service to wipe the logs after a factory reset.
const resetMarker = "factory-reset"

// newLogger logs at level, which a fleet config can change while roomd runs.
func newLogger(cfg *Config, w io.Writer, level *slog.LevelVar) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
	level.Set(lvl)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// unit is everything roomd owns, and what the local API serves.
type unit struct {
	cfg     *Config
	log     *slog.Logger
	profile board.Profile
	pins    board.Pins
	buttons []*button.Button
	led     *led.LED
	shutter *shutter.Shutter
	gate    *gate.Gate
	machine *appliance.Machine

	simBoard *sim.Board            // nil on hardware
	simConf  *simconf.Conference   // the local simulated conference, when no server is configured
	lk       connector             // when [conference] connector = "livekit" or "livekit-whip"
	lkrtc    *livekit.RTCConnector // when connector = "livekit": the far end's side too

	wg sync.WaitGroup
}

// openUnit opens the board, media and conference under cfg. onReset is
// called when a factory-reset hold completes (nil: the hold does nothing).
func openUnit(cfg *Config, simulate bool, log *slog.Logger, onReset func()) (*unit, error) {
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
	u := &unit{cfg: cfg, log: log, profile: profile, gate: gate.New()}

	var byName func(string) gpio.PinIO
	if simulate {
		u.simBoard = sim.New(sim.Config{
			Actuator:     wired(profile.Pins[board.Shutter]),
			OpenSensor:   wired(profile.Pins[board.ShutterOpen]),
			ClosedSensor: wired(profile.Pins[board.ShutterClosed]),
			Travel:       cfg.Sim.Travel.Duration,
			Lines:        simLines(),
		})
		byName = u.simBoard.ByName
	} else {
		if _, err := host.Init(); err != nil {
			return nil, fmt.Errorf("initialise GPIO drivers: %w", err)
		}
		byName = gpioreg.ByName
	}
	if u.pins, err = board.Open(profile, byName); err != nil {
		u.halt()
		return nil, fmt.Errorf("board %s: %w", profile.Name, err)
	}
	if cfg.Shutter.RequireSensors && (u.pins.OpenSensor == nil || u.pins.ClosedSensor == nil) {
		u.halt()
		return nil, errors.New("config: the shutter has no open and closed sensors, so roomd cannot confirm it is closed: wire them and set pins shutter_open and shutter_closed, or set shutter.require_sensors = false to accept an unconfirmed shutter")
	}
	if err := u.openHAL(); err != nil {
		u.halt()
		return nil, err
	}

	var conf appliance.Conference
	switch c := cfg.Conference; {
	case c.Connector == "livekit-whip" || c.Connector == "livekit":
		if simulate {
			c.Camera, c.Microphone, c.Speaker = capture.TestDevice, capture.TestDevice, playout.DeviceNull
		}
		lc := livekit.Config{
			URL: c.URL, Room: c.Room, Identity: c.Identity,
			APIKey: c.APIKey, APISecret: c.APISecret, Token: c.Token, AllowedHosts: c.AllowedHosts,
			AllowPrivateICE: c.AllowPrivateICE,
		}
		lm := livekit.Media{
			Width: c.Width, Height: c.Height, FPS: c.FPS, VideoCodec: c.VideoCodec,
			VideoBitRate: c.VideoBitrateKbps * 1000, AudioBitRate: c.AudioBitrateKbps * 1000,
			Stamp:  simulate && cfg.Sim.Stamp, // a real unit never draws on the picture
			Camera: c.Camera, Microphone: c.Microphone,
			// A camera that codes H.264 itself is sent without re-encoding
			// when it offers the configured size (the encoder choice says).
			PassThrough: encoder.PassThroughConfig{Mode: c.VideoPassthrough, Camera: c.Camera, Width: c.Width, Height: c.Height, FPS: c.FPS},
		}
		if c.Connector == "livekit" {
			opt := livekit.RTCOptions{Speaker: c.Speaker, ForceRelay: c.ForceRelay}
			for _, s := range c.ICEServers {
				opt.ICEServers = append(opt.ICEServers, webrtc.ICEServer{URLs: s.URLs, Username: s.Username, Credential: s.Credential})
			}
			u.lkrtc, err = livekit.NewRTC(lc, lm, opt, u.gate, log)
			u.lk = u.lkrtc
			conf = appliance.JoinWith(u.lkrtc.Join)
		} else {
			var w *livekit.WHIPConnector
			w, err = livekit.NewWHIP(lc, lm, u.gate, log)
			u.lk = w
			if err == nil {
				conf = appliance.JoinWith(w.Join)
			}
		}
		if err != nil {
			u.halt()
			return nil, fmt.Errorf("config [conference]: %w", err)
		}
	case simulate:
		u.simConf = simconf.New(simconf.Config{Gate: u.gate, JoinDelay: cfg.Sim.JoinDelay.Duration})
		conf = appliance.JoinWith(u.simConf.Join)
	default:
		conf = noConference{}
	}
	u.machine = appliance.New(appliance.Config{
		Gate:          u.gate,
		Shutter:       u.shutter,
		ShutterFaults: u.shutter.Faults(),
		LED:           u.led,
		Conference:    conf,
		JoinTimeout:   cfg.Call.JoinTimeout.Duration,
		LeaveTimeout:  cfg.Call.LeaveTimeout.Duration,
		MaxCallLength: cfg.Call.MaxLength.Duration,
		AloneGrace:    cfg.Call.LeaveWhenAlone.Duration,
		ResetHold:     resetHold(cfg, onReset),
		FactoryReset:  onReset,
		Logger:        log,
	})
	return u, nil
}

func resetHold(cfg *Config, onReset func()) time.Duration {
	if onReset == nil {
		return 0
	}
	return cfg.Buttons.FactoryResetHold.Duration
}

// connector is what the local API needs of either LiveKit connector.
type connector interface {
	Counters() *capture.Counters
	LoseDevice(gate.Kind, error) error
	Encoders() []encoder.Choice
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

func (u *unit) openHAL() error {
	var err error
	for _, role := range board.ButtonRoles() {
		pin, ok := u.pins.Buttons[role]
		if !ok || pin == nil {
			continue
		}
		b, err := button.New(pin, button.Config{
			Name:      string(role),
			Debounce:  u.cfg.Buttons.Debounce.Duration,
			LongPress: u.cfg.Buttons.LongPress.Duration,
		})
		if err != nil {
			return fmt.Errorf("button %s on %s: %w", role, pin.Name(), err)
		}
		u.buttons = append(u.buttons, b)
	}
	if u.led, err = led.New(u.pins.LED); err != nil {
		return fmt.Errorf("LED: %w", err)
	}
	sc := shutter.Config{Actuator: u.pins.Actuator, Timeout: u.cfg.Shutter.Timeout.Duration}
	if u.pins.OpenSensor != nil {
		sc.OpenSensor = u.pins.OpenSensor
	}
	if u.pins.ClosedSensor != nil {
		sc.ClosedSensor = u.pins.ClosedSensor
	}
	if u.shutter, err = shutter.New(sc); err != nil {
		return fmt.Errorf("shutter: %w", err)
	}
	return nil
}

func (u *unit) pumpButtons(ctx context.Context) {
	for _, b := range u.buttons {
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			for ev := range b.Events() {
				if err := u.machine.Button(ctx, ev); err != nil {
					return
				}
			}
		}()
	}
}

// halt releases every pin: buttons stop, LED off, shutter actuator released
// (closed by the wiring).
func (u *unit) halt() {
	for _, b := range u.buttons {
		_ = b.Halt()
	}
	u.wg.Wait()
	if u.led != nil {
		_ = u.led.Halt()
	}
	if u.shutter != nil {
		_ = u.shutter.Halt()
	}
	if u.simBoard != nil {
		_ = u.simBoard.Halt()
	}
}

func (u *unit) boardName() string {
	if u.simBoard != nil {
		return "sim(" + u.profile.Name + ")"
	}
	return u.profile.Name
}

// noConference is the connector until one is configured: JOIN is refused
// with the reason instead of pretending.
type noConference struct{}

func (noConference) Join(context.Context) (appliance.Call, error) {
	return nil, errors.New("no conference server is configured: add a [conference] section to the config, or run roomd --sim for the local simulated conference")
}
