// Package unit is the running room unit: it builds an appliance.Machine
// from a config and the parts cmd/roomd opened, swaps it for a new one when
// a config changes (leaving a call first and failing closed), falls back to
// the previous config when a new one does not open, and decides what a
// factory reset wipes and when. The local API and the fleet agent talk to
// one Unit for the whole life of the process.
//
// It is a package of its own, not part of appliance, because it serves the
// local API's types (localapi imports appliance) and builds the connectors
// of media/.
package unit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/network"
)

// Deps is everything the Unit is given; cmd/roomd fills it in.
type Deps struct {
	Log *slog.Logger
	// Level is the log level, which a config changes in place.
	Level *slog.LevelVar
	// Local is the unit's own config and the flags laid over every config.
	Local Local
	// Simulate runs the simulated board, test capture devices and, with no
	// server configured, the local simulated conference.
	Simulate bool
	// GPIO opens the real header: its pins by name. Unused in Simulate.
	GPIO func() (func(name string) gpio.PinIO, error)
	// Version is roomd's, for the status.
	Version string
	// Identity is the unit's enrolled identity: roomctl enrol, the
	// certificates for EAP-TLS, and a fault while it is unusable. Nil for a
	// unit that does not enrol.
	Identity *enrol.Unit
	// Network applies [network] before the unit is re-opened; nil: never
	// touched (tests of the unit alone).
	Network *network.Applier
	// Fleet is the fleet part of the status; nil with the fleet off.
	Fleet func() any
	// Reset is what a factory reset wipes; nil: the buttons' hold does
	// nothing and roomctl factory-reset is refused.
	Reset *ResetPlan
	// Display feeds the unit's own screen; nil: no screen ([display]
	// enabled = false). DisplayURL is the page's address for the status,
	// without its secret.
	Display    *display.Display
	DisplayURL string
	// TokenRequests sends a signed conference token request to fleetd
	// over the fleet link; with Identity set, a conference config without
	// api_secret or token then takes its tokens from fleetd (consult.go).
	TokenRequests func([]byte) error
	// CallLock is held from each join's start to its call's end, so an
	// update's reboot cannot cut a call (agent.RebootLock); nil: none.
	CallLock appliance.CallLock
}

// Local is the unit's own config file and the command-line flags, which
// win over every config, the fleet's included.
type Local struct {
	File config.Local
	// Socket overrides api.socket ("" keeps it; an empty api.socket is the
	// default socket).
	Socket string
	// HTTP overrides api.http; "off" disables it.
	HTTP string
}

// Config is the config the unit runs with fleetTOML (an effective fleet
// config; nil or empty for none) laid over the local one, validated.
func (l Local) Config(fleetTOML []byte) (*config.Config, error) {
	c, err := l.File.Effective(fleetTOML)
	if err != nil {
		return nil, err
	}
	if l.Socket != "" {
		c.API.Socket = l.Socket
	}
	if l.HTTP == "off" {
		c.API.HTTP = ""
	} else if l.HTTP != "" {
		c.API.HTTP = l.HTTP
	}
	if c.API.Socket == "" {
		c.API.Socket = localapi.DefaultSocket()
	}
	return c, nil
}

// Unit is the running unit behind the local API and the fleet agent. A
// config change re-opens the parts (pins, shutter, LED, conference,
// machine) inside the same process; the Unit is what stays, and every
// event stream follows it from one set of parts to the next.
type Unit struct {
	d     Deps
	netMu sync.Mutex // serialises network applies, which may wait minutes

	mu      sync.RWMutex // held for writing while the parts are swapped
	p       *parts
	cfg     *config.Config
	stopRun context.CancelFunc
	runDone chan error
	closed  bool

	subMu sync.Mutex
	subs  map[*sub]struct{}

	reset chan struct{} // a factory reset was asked for

	selfTap atomic.Pointer[capture.Tap] // the running parts' self-view tap

	consult *consult // nil unless the unit's tokens come from fleetd
}

// New makes a Unit that runs nothing until the first Apply.
func New(d Deps) *Unit {
	if d.Level == nil {
		d.Level = new(slog.LevelVar)
	}
	u := &Unit{d: d, subs: map[*sub]struct{}{}, reset: make(chan struct{}, 1)}
	u.consult = newConsult(u)
	if d.Identity != nil {
		// An unusable identity (revoked, expired) is a fault the unit shows.
		d.Identity.SetFault(func(detail string, cleared bool) {
			if m, err := u.machine(); err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_ = m.DeviceLost(ctx, "identity", detail, cleared)
			}
		})
	}
	return u
}

// Config reads a fleet's effective config the way the unit runs it: the
// fleet agent's check before it hands the config to Apply.
func (u *Unit) Config(effective []byte) (*config.Config, error) { return u.d.Local.Config(effective) }

// unitPart is the part of a config that needs the parts re-opened: all of
// it but [fleet] (the agent reconnects by itself), [log] (changed in place)
// and [api] (the listeners stay; a change takes effect at the next start).
func unitPart(c *config.Config) config.Config {
	p := *c
	p.Fleet = config.Fleet{}
	p.API.Socket, p.API.HTTP = "", ""
	p.Log.Level, p.Log.Format = "", ""
	return p
}

// Apply makes the unit run on cfg, re-opening the parts only if something
// they use changed. A call in progress is left first (invariant 4: a config
// change fails closed). If the new config does not open, the unit is
// re-opened on the config it ran before and the error says why.
func (u *Unit) Apply(cfg *config.Config) error {
	if u.d.Network != nil {
		// Before the unit lock: NetworkManager may take a while, and the
		// status API must keep answering meanwhile.
		u.netMu.Lock()
		err := u.d.Network.Apply(context.Background(), cfg.Network, u.networkIdentity(cfg))
		u.netMu.Unlock()
		if err != nil {
			return err
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return errors.New("the unit is stopping")
	}
	u.setLevel(cfg)
	if u.p != nil && reflect.DeepEqual(unitPart(cfg), unitPart(u.cfg)) {
		if cfg.API != u.cfg.API {
			u.d.Log.Warn("a config change of [api] takes effect when roomd restarts")
		}
		u.cfg = cfg
		return nil
	}
	prev := u.cfg
	if u.p != nil {
		u.d.Log.Info("config changed: re-opening the unit")
		u.stopLocked()
	}
	err := u.startLocked(cfg)
	if err == nil {
		return nil
	}
	if prev == nil {
		return err
	}
	u.d.Log.Warn("the new config does not open the unit; back on the previous one", "err", err)
	u.setLevel(prev)
	if rerr := u.startLocked(prev); rerr != nil {
		return fmt.Errorf("%w; and the previous config does not open either: %v", err, rerr)
	}
	return err
}

// networkIdentity is what EAP-TLS uses: the enrolled identity, or the
// hand-installed certificate files.
func (u *Unit) networkIdentity(c *config.Config) network.Identity {
	if id := u.d.Identity; id != nil {
		return network.Identity{CACert: id.CAPath(), ClientCert: id.CertPath(), PrivateKey: id.KeyPath()}
	}
	return network.Identity{CACert: c.Fleet.CAFile, ClientCert: c.Fleet.CertFile, PrivateKey: c.Fleet.KeyFile}
}

func (u *Unit) setLevel(cfg *config.Config) {
	if cfg.Log.Level != "" {
		u.d.Level.Set(cfg.LogLevel())
	}
}

// Restart re-opens the parts on the config the unit runs (the fleet's
// reboot command in --sim).
func (u *Unit) Restart() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed || u.cfg == nil {
		return errors.New("the unit is not running")
	}
	cfg := u.cfg
	u.stopLocked()
	return u.startLocked(cfg)
}

func (u *Unit) startLocked(cfg *config.Config) error {
	p, err := u.open(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.machine.Run(ctx) }()
	p.pumpButtons(ctx)
	<-p.machine.Ready()
	u.p, u.cfg, u.stopRun, u.runDone = p, cfg, cancel, done
	u.subMu.Lock()
	for s := range u.subs {
		s.attach(p.machine)
	}
	u.subMu.Unlock()
	return nil
}

// stopLocked hangs up a call the way the LEAVE button would, so the far end
// and the fleet see the call end, then stops the machine (gate shut, shutter
// closed) and releases the pins.
func (u *Unit) stopLocked() {
	p := u.p
	if p == nil {
		return
	}
	m := p.machine
	switch m.Status().State {
	case appliance.Joining, appliance.InCall, appliance.Leaving:
		settled := m.Settled()
		_ = m.Do(context.Background(), appliance.ActLeave, "config change")
		wait := time.NewTimer(u.cfg.Call.LeaveTimeout.Duration + u.cfg.Shutter.Timeout.Duration + time.Second)
		select {
		case <-settled:
		case <-wait.C:
		}
		wait.Stop()
	}
	u.stopRun()
	if err := <-u.runDone; err != nil {
		u.d.Log.Error("stopping the unit", "err", err)
	}
	u.subMu.Lock()
	for s := range u.subs {
		s.detach()
	}
	u.subMu.Unlock()
	p.halt()
	u.p = nil
}

// Close stops the unit for good: gate shut, call left, shutter closed, pins
// released. It logs where the unit stopped; its error reports a shutter
// that did not confirm closed.
func (u *Unit) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	p := u.p
	if p == nil {
		u.d.Log.Info("stopped")
		return nil
	}
	u.stopRun()
	err := <-u.runDone
	p.halt()
	u.p = nil
	st := p.machine.Status()
	attrs := []any{"shutter", st.Shutter, "led", st.LED, "gate_video", st.Gate.Video, "gate_audio", st.Gate.Audio}
	if p.simBoard != nil {
		sh := p.simBoard.Shutter()
		attrs = append(attrs, "sim_shutter", sh.Position, "sim_actuator", sh.Actuator.String())
	}
	u.d.Log.Info("stopped", attrs...)
	return err
}

func (u *Unit) parts() *parts {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.p
}

func (u *Unit) machine() (*appliance.Machine, error) {
	p := u.parts()
	if p == nil {
		return nil, errors.New("the unit is not running (a config change is being applied): try again in a moment")
	}
	return p.machine, nil
}

// Running is the config the unit runs on (nil before the first Apply).
func (u *Unit) Running() *config.Config {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.cfg
}

// BoardName names the board the unit runs on, sim(…) when simulated.
func (u *Unit) BoardName() string {
	if p := u.parts(); p != nil {
		return p.boardName()
	}
	return ""
}

// Alive is the watchdog's question to whichever machine is running; during
// a config change it fails, which is bounded by the leave and shutter
// timeouts, well inside WatchdogSec.
func (u *Unit) Alive(ctx context.Context) error {
	m, err := u.machine()
	if err != nil {
		return err
	}
	return m.Alive(ctx)
}

// Do is a JOIN, LEAVE, PRIVACY or MUTE from the local API or the fleet.
func (u *Unit) Do(ctx context.Context, a appliance.Action, source string) error {
	m, err := u.machine()
	if err != nil {
		return err
	}
	return m.Do(ctx, a, source)
}

// Identify blinks the LED so an installer finds the unit.
func (u *Unit) Identify(ctx context.Context, d time.Duration) error {
	m, err := u.machine()
	if err != nil {
		return err
	}
	return m.Identify(ctx, d)
}

// Enrol implements localapi.Provisioner.
func (u *Unit) Enrol(_ context.Context, code string) error {
	if u.d.Identity == nil {
		return errors.New("this unit is not set up to enrol: its config needs fleet.broker, fleet.ca_file, fleet.enrol_cert and fleet.enrol_key (the enrolment bundle from fleetctl ca init)")
	}
	return u.d.Identity.Enrol(code)
}

// Appliance is the unit as the fleet agent sees it (agent.Appliance).
func (u *Unit) Appliance() Appliance { return Appliance{u} }

// Appliance follows the running machine for the fleet agent.
type Appliance struct{ u *Unit }

func (a Appliance) Do(ctx context.Context, act appliance.Action, source string) error {
	return a.u.Do(ctx, act, source)
}
func (a Appliance) Identify(ctx context.Context, d time.Duration) error {
	return a.u.Identify(ctx, d)
}
func (a Appliance) Subscribe(buf int) (<-chan appliance.Event, func()) { return a.u.Subscribe(buf) }

// Status is the machine's status; Idle while the parts are swapped.
func (a Appliance) Status() appliance.Status {
	p := a.u.parts()
	if p == nil {
		return appliance.Status{State: appliance.Idle}
	}
	return p.machine.Status()
}
