package agent

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/broker"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Demo fleet identity in --sim when no broker is configured.
const (
	demoDevice = "sim-unit"
	demoGroup  = "demo"
)

// Host is the running unit the fleet works on: appliance/unit's Unit.
type Host interface {
	Unit
	// Running is the config the unit runs now (nil before the first).
	Running() *config.Config
	// FleetDoctor is the unit's self-check for the doctor command.
	FleetDoctor(context.Context) []fleet.DoctorCheck
	// PrivacyReport is the unit's privacy report for its command.
	PrivacyReport(context.Context) any
	// OnToken and OnSchedule take fleetd's sealed tokens and schedules off
	// the link; RunTokens keeps the unit's token cache full until ctx ends.
	OnToken(payload []byte)
	OnSchedule(payload []byte, retained bool)
	RunTokens(ctx context.Context)
}

// FleetOptions is what OpenFleet reads.
type FleetOptions struct {
	// Local is the unit's own config (the fleet's never changes the
	// unit's identity, its pinned key or its state directory).
	Local *config.Config
	// Simulate is roomd --sim: state next to the API socket, and without
	// fleet.broker the embedded demo broker and a demo fleet key.
	Simulate bool
	// Version is roomd's, for enrolment and the agent's reports.
	Version string
	Logger  *slog.Logger
}

// Fleet is the unit's fleet as its own config fixes it: who the unit is
// (device id, groups, an enrolled identity), which fleet keys it trusts,
// where its fleet state lives, and in --sim the demo broker. It decides
// when the agent can start (after enrolment, for a unit that enrols) and
// starts it. A nil *Fleet is the fleet switched off; its methods then do
// what a unit without a fleet does.
type Fleet struct {
	device      string
	groups      []string
	stateDir    string
	identityDir string
	keys        []ed25519.PublicKey
	local       *config.Config
	version     string
	log         *slog.Logger
	demo        *broker.Demo
	// prov is the unit's own identity when it enrols (fleet.enrol_cert);
	// nil for a unit given its certificate by hand or the --sim demo.
	prov  *enrol.Unit
	audit *audit.Log // the unit's audit log, opened with the agent
	// updateDir is update.dir: konsult-update's request and state.
	updateDir string

	// Set by Start, before anything reads them.
	unit   Host
	app    Appliance
	reboot func()

	agent atomic.Pointer[Agent] // once it runs

	mu      sync.Mutex
	after   *afterAgent // recordAlone's, while no agent keeps the log
	waiting *afterAgent // the one while the unit waits for enrolment
}

// OpenFleet resolves the fleet from the unit's own config; nil means the
// fleet is off. A unit that enrols opens its identity (provisioning/enrol);
// in --sim without a broker it starts the embedded demo broker with a demo
// fleet key pair, so fleetctl works out of the box (Demo says where).
func OpenFleet(o FleetOptions) (*Fleet, error) {
	local, f := o.Local, o.Local.Fleet
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if !f.Enabled {
		o.Logger.Info("fleet off (fleet.enabled = false)")
		return nil, nil
	}
	if f.Broker == "" && !o.Simulate {
		o.Logger.Info("fleet off: no fleet.broker configured")
		return nil, nil
	}
	s := &Fleet{device: f.DeviceID, groups: f.Groups, stateDir: local.StateDir(o.Simulate),
		identityDir: local.IdentityDir(o.Simulate), local: local, version: o.Version, log: o.Logger,
		updateDir: local.UpdateDir(o.Simulate)}
	keyFile := f.FleetKey
	if f.Enrols() {
		prov, err := enrol.OpenUnit(enrol.UnitOptions{
			Dir:    s.identityDir,
			Broker: f.EnrolmentBroker(), CAFile: f.CAFile, CertFile: f.EnrolCert, KeyFile: f.EnrolKey,
			ClaimCode: f.ClaimCode, ClaimFile: f.ClaimFile,
			RenewBefore: f.RenewBefore.Duration, Model: board.Model("board " + local.Unit.Board), Logger: o.Logger,
		})
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		s.prov, s.device = prov, prov.ID()
		if keyFile == "" {
			// The fleet key comes with enrolment.
			if prov.Enrolled() {
				if err := s.adoptIdentity(); err != nil {
					return nil, err
				}
			}
			return s, nil
		}
	}
	if err := s.resolveKeys(keyFile, f.Broker == ""); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// resolveKeys loads the pinned fleet key from keyFile; with demo, the
// demo broker is started first and stands in for what the config leaves
// out (device id, groups, key).
func (s *Fleet) resolveKeys(keyFile string, demo bool) error {
	if demo {
		d, err := broker.StartDemo(filepath.Join(s.stateDir, "demo"))
		if err != nil {
			return err
		}
		s.demo = d
		if s.device == "" {
			s.device = demoDevice
		}
		if len(s.groups) == 0 {
			s.groups = []string{demoGroup}
		}
		if keyFile == "" {
			keyFile = filepath.Join(s.stateDir, "demo", "fleet.pub")
		}
	}
	if keyFile == "" {
		return errors.New("fleet: no fleet.fleet_key: point it at the fleet's public key (fleet.pub from fleetctl keygen)")
	}
	keys, err := fleet.LoadPublicKeys(keyFile)
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	s.keys = keys
	if s.prov != nil && s.prov.Enrolled() {
		return s.adoptIdentity()
	}
	return nil
}

// adoptIdentity takes the device id, groups and pinned fleet key from the
// enrolled identity (the unit's own config wins where it sets them).
func (s *Fleet) adoptIdentity() error {
	s.device = s.prov.ID()
	if len(s.local.Fleet.Groups) == 0 {
		s.groups = s.prov.State().Groups
	}
	if s.local.Fleet.FleetKey != "" {
		return nil // loaded by OpenFleet
	}
	keys, err := s.prov.FleetKeys()
	if err != nil {
		return fmt.Errorf("fleet: the fleet key from enrolment: %w", err)
	}
	s.keys = keys
	return nil
}

// Demo is the embedded demo broker of --sim (nil for a real fleet).
func (s *Fleet) Demo() *broker.Demo {
	if s == nil {
		return nil
	}
	return s.demo
}

// Identity is the unit's enrolled identity; nil if it does not enrol.
func (s *Fleet) Identity() *enrol.Unit {
	if s == nil {
		return nil
	}
	return s.prov
}

// Start brings u up. With the fleet on and the unit's identity in hand,
// the agent does (on its stored fleet config over the local one, rolling
// back where it must); with the fleet off, or while the unit waits to
// enrol, the unit runs on its own config, local. app is the unit's
// appliance, reboot the fleet's reboot command.
func (s *Fleet) Start(u Host, app Appliance, reboot func(), local *config.Config) error {
	if s == nil {
		return u.Apply(local)
	}
	s.unit, s.app, s.reboot = u, app, reboot
	if s.prov != nil && !s.prov.Enrolled() {
		if err := u.Apply(local); err != nil {
			return err
		}
		// Waiting for enrolment: no agent yet, but the unit's key is made,
		// so its log is kept all the same (from before roomd says it is
		// ready); the agent takes it over once enrolled.
		var err error
		if s.audit, err = OpenAudit(s.stateDir, s.identityDir, s.prov.Signer(), s.local); err != nil {
			return err
		}
		s.waiting = s.recordAlone(context.Background())
		return nil
	}
	_, err := s.newAgent()
	return err
}

// Run runs the fleet after Start until ctx ends: the enrolment first if
// the unit still waits for it, then the agent with the identity's watch
// and the unit's token cache. The channel gets the agent's end; it is
// closed at once with the fleet off.
func (s *Fleet) Run(ctx context.Context) <-chan error {
	done := make(chan error, 1)
	if s == nil {
		close(done)
		return done
	}
	go func() { done <- s.run(ctx) }()
	return done
}

func (s *Fleet) run(ctx context.Context) error {
	a := s.agent.Load()
	if a == nil {
		if err := s.prov.Run(ctx, s.version); err != nil {
			return err
		}
		s.waiting.stopAndWait() // the agent takes the log over
		err := s.adoptIdentity()
		if err == nil {
			a, err = s.newAgent()
		}
		if err != nil {
			return err
		}
	}
	if s.prov != nil {
		s.prov.SetRefresh(a.RefreshReported)
		go s.prov.Watch(ctx, a.Connected, time.Minute)
		go s.unit.RunTokens(ctx)
	}
	err := a.Run(ctx)
	if err != nil && ctx.Err() == nil && s.recordAlone(ctx) != nil {
		s.log.Warn("fleet agent stopped: the audit log is kept on the unit until roomd starts again")
	}
	return err
}

// recordAlone keeps the audit log while no agent does: before enrolment,
// and after the agent has stopped and the unit runs on without its fleet.
// What the unit does is recorded as with the fleet off (Standalone), into
// the same log, until ctx ends, stopAndWait or Close. Nothing ships until
// an agent sends the rest. Nil without a log.
func (s *Fleet) recordAlone(ctx context.Context) *afterAgent {
	if s.audit == nil || s.app == nil {
		return nil
	}
	alone := &Standalone{log: s.audit, redact: newRedactor()}
	alone.redact.addConfig(s.local)
	alone.rec = recorder{log: s.audit, logger: s.log.With("component", "audit"),
		callE2EE: func() string { return report.E2EE(s.unit.Running()) }}
	events, cancel := s.app.Subscribe(4096)
	stop, done := make(chan struct{}), make(chan struct{})
	after := &afterAgent{stop: stop, done: done}
	s.mu.Lock()
	s.after = after
	s.mu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
			after.end()
		case <-stop:
		}
	}()
	go func() {
		alone.loop(events, stop, done)
		cancel()
	}()
	return after
}

// afterAgent is recordAlone's recording, which Close ends.
type afterAgent struct {
	once       sync.Once
	stop, done chan struct{}
}

func (a *afterAgent) end() { a.once.Do(func() { close(a.stop) }) }

// stopAndWait ends the recording once what it has is written (nil-safe).
func (a *afterAgent) stopAndWait() {
	if a != nil {
		a.end()
		<-a.done
	}
}

// newAgent makes the fleet agent, which brings the unit up on the stored
// fleet config laid over the local settings.
func (s *Fleet) newAgent() (*Agent, error) {
	u := s.unit
	base := link.Options{
		DeviceID: s.device,
		Groups:   s.groups,
		StoreDir: filepath.Join(s.stateDir, "link"),
		Logger:   s.log,
	}
	var id Identity // nil (not a typed nil) for a unit without enrolment
	var signer crypto.Signer
	if s.prov != nil {
		// An enrolled unit always speaks as itself: its own key and the
		// certificate and CA enrolment installed (renewal replaces the
		// certificate file; the link reads it at each connect).
		base.CAFile, base.CertFile, base.KeyFile = s.prov.CAPath(), s.prov.CertPath(), s.prov.KeyPath()
		base.OnConnectError = s.prov.OnConnectError
		base.OnToken, base.OnSchedule = u.OnToken, u.OnSchedule
		id = s.prov
		signer = s.prov.Signer()
	}
	var err error
	if s.audit == nil { // open already if the unit waited for enrolment
		if s.audit, err = OpenAudit(s.stateDir, s.identityDir, signer, s.local); err != nil {
			return nil, err
		}
	}
	a, err := New(Options{
		Audit: s.audit, CallE2EE: func() string { return report.E2EE(u.Running()) }, PrivacyReport: u.PrivacyReport,
		StateDir:   s.stateDir,
		Keys:       s.keys,
		Connection: Connection{Link: base},
		DemoBroker: s.demoURL(),
		Unit:       u,
		Appliance:  s.app,
		Doctor:     u.FleetDoctor,
		Identity:   id,
		Reboot:     s.reboot,
		Version:    s.version,
		Update:     s.updateOptions(),
		Logger:     s.log,
	})
	if err != nil {
		return nil, err
	}
	s.agent.Store(a)
	return a, nil
}

// updateOptions is the update command's folder and policy: the window
// is read from the running config each time (update.reboot_window is live).
func (s *Fleet) updateOptions() *UpdateOptions {
	return &UpdateOptions{
		Dir: s.updateDir,
		RunningVersion: func() string {
			b, err := os.ReadFile(ImageVersionFile)
			if err != nil {
				return ""
			}
			return string(b)
		},
		Window: func() string {
			if c := s.unit.Running(); c != nil {
				return c.Update.RebootWindow
			}
			return s.local.Update.RebootWindow
		},
	}
}

func (s *Fleet) demoURL() string {
	if s.demo == nil {
		return ""
	}
	return s.demo.URL()
}

// Status is the fleet part of the unit's status (a *LocalStatus); nil
// with the fleet off.
func (s *Fleet) Status() any {
	if s == nil {
		return nil
	}
	st := &LocalStatus{Broker: s.demoURL()}
	if s.demo != nil {
		st.DemoKey = s.demo.KeyFile
	}
	if a := s.agent.Load(); a != nil {
		st.ReportedDoc, st.Connected = a.Reported(), a.Connected()
	}
	if s.prov != nil {
		st.Enrolment = s.prov.Status()
	}
	if s.unit != nil {
		if c := s.unit.Running(); c != nil && c.Fleet.Broker != "" {
			st.Broker = c.Fleet.Broker
		}
	}
	return st
}

// TokenRequests carries an enrolled unit's conference token requests to
// fleetd over the agent's link; nil for a unit that does not enrol (it
// keeps its own api_secret).
func (s *Fleet) TokenRequests() func([]byte) error {
	if s == nil || s.prov == nil {
		return nil
	}
	return func(b []byte) error {
		if a := s.agent.Load(); a != nil {
			return a.PublishTokenRequest(b)
		}
		return link.ErrNotConnected
	}
}

// Close closes the audit log and stops the demo broker. Call it after
// Run's channel has given the agent's end.
func (s *Fleet) Close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	after := s.after
	s.mu.Unlock()
	after.stopAndWait()
	if s.audit != nil {
		s.audit.Close()
	}
	if s.demo != nil {
		if err := s.demo.Close(); err != nil {
			s.log.Warn("fleet demo broker", "err", err)
		}
		s.demo = nil
	}
}
