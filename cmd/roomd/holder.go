package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/localapi"
)

// holder is the running unit behind the local API and the fleet agent. A
// config change re-opens the unit (pins, shutter, LED, conference, machine)
// inside the same process, and holder is what stays: the API, the fleet
// link and every event stream follow it from one unit to the next.
type holder struct {
	log      *slog.Logger
	level    *slog.LevelVar
	simulate bool
	fleet    func() *fleetStatus // nil without a fleet
	// onReset wipes the unit when a factory-reset hold completes; set
	// before the first apply.
	onReset func()
	// provisioning carries out roomctl enrol and factory-reset; nil
	// before run sets it.
	provisioning *provisioning
	// net applies [network] changes; nil: never touched (tests of the
	// unit alone).
	net   *netApplier
	netMu sync.Mutex // serialises network applies, which may wait minutes

	mu      sync.RWMutex // held for writing while the unit is swapped
	u       *unit
	cfg     *Config
	stopRun context.CancelFunc
	runDone chan error

	subMu sync.Mutex
	subs  map[*holderSub]struct{}
}

func newHolder(log *slog.Logger, level *slog.LevelVar, simulate bool) *holder {
	return &holder{log: log, level: level, simulate: simulate, subs: map[*holderSub]struct{}{}}
}

// unitPart is the part of a config that needs the unit re-opened: all of it
// but [fleet] (the agent reconnects by itself), [log] (changed in place) and
// [api] (the listeners stay; a change takes effect at the next start).
func unitPart(c *Config) Config {
	p := *c
	p.Fleet = FleetConfig{}
	p.API.Socket, p.API.HTTP = "", ""
	p.Log.Level, p.Log.Format = "", ""
	return p
}

// apply makes the unit run on cfg, re-opening it only if something it uses
// changed. A call in progress is left first (invariant 4: a config change
// fails closed). If the new config does not open, the unit is re-opened on
// the config it ran before and the error says why.
func (h *holder) apply(cfg *Config) error {
	if h.net != nil {
		// Before the unit lock: NetworkManager may take a while, and the
		// status API must keep answering meanwhile.
		h.netMu.Lock()
		err := h.net.apply(context.Background(), cfg)
		h.netMu.Unlock()
		if err != nil {
			return err
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.setLevel(cfg)
	if h.u != nil && reflect.DeepEqual(unitPart(cfg), unitPart(h.cfg)) {
		if cfg.API != h.cfg.API {
			h.log.Warn("a config change of [api] takes effect when roomd restarts")
		}
		h.cfg = cfg
		return nil
	}
	prev := h.cfg
	if h.u != nil {
		h.log.Info("config changed: re-opening the unit")
		h.stopLocked()
	}
	err := h.startLocked(cfg)
	if err == nil {
		return nil
	}
	if prev == nil {
		return err
	}
	h.log.Warn("the new config does not open the unit; back on the previous one", "err", err)
	h.setLevel(prev)
	if rerr := h.startLocked(prev); rerr != nil {
		return fmt.Errorf("%w; and the previous config does not open either: %v", err, rerr)
	}
	return err
}

func (h *holder) setLevel(cfg *Config) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(cfg.Log.Level)); err == nil {
		h.level.Set(lvl)
	}
}

// restart re-opens the unit on the config it runs (the fleet's reboot
// command in --sim).
func (h *holder) restart() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	cfg := h.cfg
	h.stopLocked()
	return h.startLocked(cfg)
}

func (h *holder) startLocked(cfg *Config) error {
	u, err := openUnit(cfg, h.simulate, h.log, h.onReset)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.machine.Run(ctx) }()
	u.pumpButtons(ctx)
	<-u.machine.Ready()
	h.u, h.cfg, h.stopRun, h.runDone = u, cfg, cancel, done
	h.subMu.Lock()
	for s := range h.subs {
		s.attach(u.machine)
	}
	h.subMu.Unlock()
	return nil
}

// stopLocked hangs up a call the way the LEAVE button would, so the far end
// and the fleet see the call end, then stops the machine (gate shut, shutter
// closed) and releases the pins.
func (h *holder) stopLocked() {
	u := h.u
	if u == nil {
		return
	}
	m := u.machine
	switch m.Status().State {
	case appliance.Joining, appliance.InCall, appliance.Leaving:
		_ = m.Do(context.Background(), appliance.ActLeave, "config change")
		deadline := time.Now().Add(h.cfg.Call.LeaveTimeout.Duration + h.cfg.Shutter.Timeout.Duration + time.Second)
		for time.Now().Before(deadline) {
			if s := m.Status().State; s == appliance.Idle || s == appliance.Fault {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	h.stopRun()
	if err := <-h.runDone; err != nil {
		h.log.Error("stopping the unit", "err", err)
	}
	h.subMu.Lock()
	for s := range h.subs {
		s.detach()
	}
	h.subMu.Unlock()
	u.halt()
	h.u = nil
}

// close stops the unit for good: gate shut, call left, shutter closed. Its
// error reports a shutter that did not confirm closed.
func (h *holder) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.u == nil {
		return nil
	}
	u := h.u
	h.stopRun()
	err := <-h.runDone
	u.halt()
	h.u = nil
	return err
}

func (h *holder) unit() *unit {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.u
}

func (h *holder) machine() (*appliance.Machine, error) {
	u := h.unit()
	if u == nil {
		return nil, errors.New("the unit is not running (a config change is being applied): try again in a moment")
	}
	return u.machine, nil
}

// Status is the local API's status, with the fleet's view of the unit.
func (h *holder) Status() any {
	u := h.unit()
	if u == nil {
		return status{}
	}
	s := u.status()
	if h.fleet != nil {
		s.Fleet = h.fleet()
	}
	return s
}

// MachineStatus is the appliance's status, for the fleet agent.
func (h *holder) MachineStatus() appliance.Status {
	u := h.unit()
	if u == nil {
		return appliance.Status{State: appliance.Idle}
	}
	return u.machine.Status()
}

func (h *holder) Do(ctx context.Context, a appliance.Action, source string) error {
	m, err := h.machine()
	if err != nil {
		return err
	}
	return m.Do(ctx, a, source)
}

func (h *holder) Identify(ctx context.Context, d time.Duration) error {
	m, err := h.machine()
	if err != nil {
		return err
	}
	return m.Identify(ctx, d)
}

func (h *holder) Sim() localapi.Sim {
	u := h.unit()
	if u == nil {
		return nil
	}
	return u.Sim()
}

func (h *holder) Doctor(ctx context.Context) []localapi.Check {
	u := h.unit()
	if u == nil {
		return []localapi.Check{{Name: "unit", Detail: "a config change is being applied", Fix: "run doctor again in a moment"}}
	}
	return u.Doctor(ctx)
}

// Subscribe streams the events of whichever unit is running, across
// re-opens; each new unit's stream starts with its own hello.
func (h *holder) Subscribe(buf int) (<-chan appliance.Event, func()) {
	s := &holderSub{out: make(chan appliance.Event, buf+1)}
	h.mu.RLock()
	h.subMu.Lock()
	h.subs[s] = struct{}{}
	if h.u != nil {
		s.attach(h.u.machine)
	}
	h.subMu.Unlock()
	h.mu.RUnlock()
	return s.out, func() {
		h.subMu.Lock()
		delete(h.subs, s)
		h.subMu.Unlock()
		s.close()
	}
}

// holderSub is one event stream, fed by the current machine's stream.
type holderSub struct {
	mu     sync.Mutex
	out    chan appliance.Event
	closed bool
	cancel func() // the current machine's subscription
}

func (s *holderSub) attach(m *appliance.Machine) {
	in, cancel := m.Subscribe(cap(s.out))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return
	}
	s.cancel = cancel
	s.mu.Unlock()
	go func() {
		for ev := range in {
			s.send(ev)
		}
	}()
}

func (s *holderSub) send(ev appliance.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for { // a subscriber that falls behind loses the oldest, as the machine's own
		select {
		case s.out <- ev:
			return
		default:
		}
		select {
		case <-s.out:
		default:
		}
	}
}

func (s *holderSub) detach() {
	s.mu.Lock()
	cancel := s.cancel
	s.cancel = nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (s *holderSub) close() {
	s.detach()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.out)
	}
}

// fleetAppliance is the holder as the fleet agent sees it.
type fleetAppliance struct{ h *holder }

func (f fleetAppliance) Do(ctx context.Context, a appliance.Action, source string) error {
	return f.h.Do(ctx, a, source)
}
func (f fleetAppliance) Identify(ctx context.Context, d time.Duration) error {
	return f.h.Identify(ctx, d)
}
func (f fleetAppliance) Subscribe(buf int) (<-chan appliance.Event, func()) {
	return f.h.Subscribe(buf)
}
func (f fleetAppliance) Status() appliance.Status { return f.h.MachineStatus() }

// config is the config the unit runs on.
func (h *holder) config() *Config {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.cfg
}

// Enrol implements localapi.Provisioner.
func (h *holder) Enrol(_ context.Context, code string) error {
	if h.provisioning == nil {
		return errors.New("this unit is not set up to enrol: its config needs fleet.broker, fleet.ca_file, fleet.enrol_cert and fleet.enrol_key (the enrolment bundle from fleetctl ca init)")
	}
	return h.provisioning.Enrol(code)
}

// FactoryReset implements localapi.Provisioner.
func (h *holder) FactoryReset(context.Context) error {
	if h.onReset == nil {
		return errors.New("roomd is still starting: try again in a moment")
	}
	h.onReset()
	return nil
}
