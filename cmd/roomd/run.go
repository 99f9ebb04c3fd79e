package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/host/v3"

	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/appliance/unit"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/network"
)

// flags are roomd's command line.
type flags struct {
	config, socket, http              string
	simulate, printDefaults           bool
	takeClaim, applyNet, nmDir, nmcli string
	netUID                            int
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	var f flags
	fs := flag.NewFlagSet("roomd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "", "config file (TOML); built-in defaults when empty")
	fs.BoolVar(&f.simulate, "sim", false, "run on the simulated board and the local simulated conference")
	fs.StringVar(&f.socket, "socket", "", "override api.socket")
	fs.StringVar(&f.http, "http", "", "override api.http: also serve the local API on this loopback address, e.g. 127.0.0.1:8787 (\"off\" to disable; off by default)")
	fs.BoolVar(&f.printDefaults, "print-default-config", false, "print the built-in config and exit")
	fs.StringVar(&f.takeClaim, "take-claim", "", "as root (konsult-claim.service): move the claim code from this file (the boot partition's konsult-claim.txt) into the unit's identity directory, then exit")
	fs.StringVar(&f.applyNet, "apply-network", "", "as root (konsult-network.service): hand the profiles roomd rendered in this directory to NetworkManager, then exit")
	fs.StringVar(&f.nmDir, "nm-dir", network.DefaultDir, "with --apply-network: NetworkManager's keyfile directory")
	fs.StringVar(&f.nmcli, "nmcli", "nmcli", "with --apply-network: the nmcli to run (\"\" = write the keyfiles only)")
	fs.IntVar(&f.netUID, "network-uid", -1, "with --apply-network: the uid that must own the folder's files (default: the folder's owner, roomd's user)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: roomd [--sim] [--config FILE]\n\nThe Konsult room unit daemon. Flags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: roomd takes flags only (see roomd --help)", fs.Arg(0))
	}
	return &f, nil
}

// oneShot runs the flags that do one job and exit; done says whether one did.
func (f *flags) oneShot(ctx context.Context, local unit.Local, stdout io.Writer) (done bool, err error) {
	switch {
	case f.printDefaults:
		_, err := io.WriteString(stdout, config.Default)
		return true, err
	case f.applyNet != "":
		return true, network.RunHelper(ctx, f.applyNet, f.nmDir, f.nmcli, f.netUID)
	case f.takeClaim != "":
		cfg, err := local.Config(nil)
		if err != nil {
			return true, err
		}
		dst, err := enrol.TakeClaimCode(f.takeClaim, cfg.IdentityDir(false))
		if err != nil || dst == "" {
			return true, err
		}
		_, err = fmt.Fprintf(stdout, "claim code moved from %s to %s\n", f.takeClaim, dst)
		return true, err
	}
	return false, nil
}

func runOnce(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	start := time.Now()
	f, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	file, err := config.ReadLocal(f.config)
	if f.printDefaults || f.applyNet != "" {
		err = nil // they read no config
	}
	if err != nil {
		return err
	}
	local := unit.Local{File: file, Socket: f.socket, HTTP: f.http}
	if done, err := f.oneShot(ctx, local, stdout); done {
		return err
	}
	cfg, err := local.Config(nil)
	if err != nil {
		return err
	}
	// Before the fleet setup below writes keys beside the socket.
	if err := localapi.PrepareSocketDir(cfg.API.Socket); err != nil {
		return fmt.Errorf("local API: %w", err)
	}
	level := new(slog.LevelVar)
	log := newLogger(cfg, stderr, level)
	fo := agent.FleetOptions{Local: cfg, Simulate: f.simulate, Version: Version, Logger: log}
	fl, err := agent.OpenFleet(fo)
	if err != nil {
		return err
	}
	defer fl.Close()
	// With the fleet off the unit still keeps its audit log (nil with it
	// on: the agent keeps it). Closed after the unit, deferred before it.
	alone, err := agent.OpenStandalone(fl, fo)
	if err != nil {
		return err
	}
	defer alone.Close()
	if demo := fl.Demo(); demo != nil {
		fmt.Fprintf(stdout, "fleet demo: embedded broker %s; signing key %s\n  try: fleetctl --config %s status\n", demo.URL(), demo.KeyFile, demo.Settings)
	}
	d := &daemon{log: log, simulate: f.simulate, restart: make(chan struct{}, 1)}
	scr, err := openScreen(cfg, log, func() { d.u.SelfKeyframe() })
	if err != nil {
		return err
	}
	defer scr.close()
	d.u = unit.New(unit.Deps{
		Log: log, Level: level, Local: local, Simulate: f.simulate, Version: Version,
		GPIO:     openGPIO,
		Identity: fl.Identity(),
		Network:  &network.Applier{Dir: cfg.NetworkDir(f.simulate), Helper: cfg.NetworkViaHelper(f.simulate)},
		Fleet:    fl.Status,
		Reset:    &unit.ResetPlan{IdentityDir: cfg.IdentityDir(f.simulate), StateDir: cfg.StateDir(f.simulate)},
		Display:  scr.display(), DisplayURL: scr.origin(),
		TokenRequests: fl.TokenRequests(),
		CallLock:      agent.NewRebootLock(cfg.UpdateDir(f.simulate), log),
	})
	defer d.u.Close()
	err = fl.Start(d.u, d.u.Appliance(), d.reboot, cfg)
	alone.Begin(d.u, d.u.Appliance(), err)
	if err != nil {
		return err
	}
	// The API runs on the config roomd started with (api changes take
	// effect at the next start).
	listeners, err := listen(d.u.Running())
	if err != nil {
		return err
	}
	// localapi decides what each listener serves: the whole API on the
	// socket, the browser-proof part on loopback HTTP.
	srv := localapi.NewServer(d.u, log)
	for _, l := range listeners {
		go func() { _ = srv.Serve(l) }()
	}
	if err := scr.serve(d.u, stdout); err != nil {
		return err
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := fl.Run(agentCtx)
	d.ready(ctx, start, listeners, fl != nil, stdout)

	result, agentEnded := d.wait(ctx, agentDone, fl == nil)
	d.log.Info("stopping: closing the shutter and leaving any call")
	_ = sdNotify("STOPPING=1")
	stopAgent()
	if !agentEnded {
		if err := <-agentDone; err != nil && !errors.Is(err, context.Canceled) {
			d.log.Warn("fleet agent", "err", err)
		}
	}
	return d.stop(result, srv)
}

// ready says roomd is up: in its log, on stdout, to systemd; and starts
// feeding systemd's watchdog if it asks for one.
func (d *daemon) ready(ctx context.Context, start time.Time, listeners []net.Listener, fleetOn bool, stdout io.Writer) {
	addrs := make([]string, len(listeners))
	for i, l := range listeners {
		addrs[i] = l.Addr().String()
	}
	d.log.Info("ready", "version", Version, "board", d.u.BoardName(), "sim", d.simulate,
		"api", strings.Join(addrs, ","), "fleet", fleetOn, "startup", time.Since(start).Round(time.Microsecond).String())
	fmt.Fprintf(stdout, "roomd ready: board=%s api=%s\n", d.u.BoardName(), strings.Join(addrs, " "))
	if err := sdNotify("READY=1"); err != nil {
		d.log.Warn("could not tell systemd that roomd is ready", "err", err)
	}
	if p := watchdogPeriod(); p > 0 {
		go feedWatchdog(ctx, p, d.u.Alive, sdNotify, d.log)
	}
}

// stop closes the unit (the gate shut, the shutter closed: invariant 4)
// after the agent has stopped, then the local API; a factory reset wipes
// only once all of it is closed, so nothing writes the state back.
func (d *daemon) stop(result error, srv *localapi.Server) error {
	runErr := d.u.Close()
	shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	if runErr != nil {
		return runErr
	}
	if errors.Is(result, errFactoryReset) {
		if err := d.u.Wipe(); err != nil {
			return err
		}
		d.log.Info("factory reset: wiped")
	}
	return result
}

// daemon is one run of roomd: the unit and why it stops.
type daemon struct {
	log      *slog.Logger
	u        *unit.Unit
	simulate bool
	restart  chan struct{} // the fleet's reboot command on a real unit
}

// reboot is the fleet's reboot command: a simulated unit restarts in-process,
// a real one exits for systemd to start it again.
func (d *daemon) reboot() {
	if d.simulate {
		d.log.Warn("reboot command: restarting the simulated unit in-process")
		if err := d.u.Restart(); err != nil {
			d.log.Error("restarting the simulated unit", "err", err)
		}
		return
	}
	select {
	case d.restart <- struct{}{}:
	default:
	}
}

// wait returns why roomd stops: a signal (nil), the fleet's restart or a
// factory reset. A factory reset (buttons or API) must end roomd in every
// configuration: with the fleet off and after the agent has stopped too, so
// the agent's end only stops watching the agent.
func (d *daemon) wait(ctx context.Context, agentDone <-chan error, fleetOff bool) (result error, agentEnded bool) {
	agentC, agentEnded := agentDone, fleetOff
	for {
		select {
		case <-ctx.Done():
			return nil, agentEnded
		case <-d.restart:
			d.log.Warn("restarting: the fleet asked for it")
			return errRestart, agentEnded
		case <-d.u.ResetRequested():
			d.log.Warn("factory reset: wiping the unit's identity and fleet state, then starting as a new unit")
			return errFactoryReset, agentEnded
		case err := <-agentC:
			agentC, agentEnded = nil, true
			if err != nil {
				d.log.Error("fleet agent stopped; the unit keeps running without its fleet", "err", err)
			}
		}
	}
}

// listen opens the local API's socket and, with api.http, its loopback
// HTTP listener.
func listen(cfg *config.Config) ([]net.Listener, error) {
	ul, err := localapi.ListenUnix(cfg.API.Socket)
	if err != nil {
		return nil, fmt.Errorf("local API: %w", err)
	}
	listeners := []net.Listener{ul}
	if cfg.API.HTTP != "" {
		hl, err := localapi.ListenLoopback(cfg.API.HTTP)
		if err != nil {
			ul.Close()
			return nil, fmt.Errorf("local API (api.http): %w", err)
		}
		listeners = append(listeners, hl)
	}
	return listeners, nil
}

// openGPIO opens the real header's GPIO drivers.
func openGPIO() (func(string) gpio.PinIO, error) {
	if _, err := host.Init(); err != nil {
		return nil, fmt.Errorf("initialise GPIO drivers: %w", err)
	}
	return gpioreg.ByName, nil
}

// newLogger logs at level, which a fleet config can change while roomd runs.
func newLogger(cfg *config.Config, w io.Writer, level *slog.LevelVar) *slog.Logger {
	level.Set(cfg.LogLevel())
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
