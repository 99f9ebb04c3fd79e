package main

import (
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"

	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/appliance/unit"
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

// fleetSetup is what the unit's own config fixes about its fleet: identity,
// pinned key, state, and in --sim the demo broker.
type fleetSetup struct {
	device   string
	groups   []string
	stateDir string
	keys     []ed25519.PublicKey
	demo     *broker.Demo
	demoKey  string // path of the demo's signing key
	log      *slog.Logger
	// prov is the unit's own identity when it enrols (fleet.enrol_cert);
	// nil for a unit given its certificate by hand or the --sim demo.
	prov        *enrol.Unit
	agent       atomic.Pointer[agent.Agent] // once it runs
	local       *config.Config
	identityDir string
	audit       *audit.Log // the unit's audit log, opened with the agent
}

// identity is the unit's enrolled identity, if it enrols.
func (s *fleetSetup) identity() *enrol.Unit {
	if s == nil {
		return nil
	}
	return s.prov
}

// needsEnrolment says the agent can start only after enrolment.
func (s *fleetSetup) needsEnrolment() bool { return s != nil && s.prov != nil && !s.prov.Enrolled() }

// adoptIdentity takes the device id, groups and pinned fleet key from the
// enrolled identity (the unit's own config wins where it sets them).
func (s *fleetSetup) adoptIdentity(local *config.Config) error {
	s.device = s.prov.ID()
	if len(local.Fleet.Groups) == 0 {
		s.groups = s.prov.State().Groups
	}
	if local.Fleet.FleetKey != "" {
		return nil // loaded in setupFleet
	}
	keys, err := s.prov.FleetKeys()
	if err != nil {
		return fmt.Errorf("fleet: the fleet key from enrolment: %w", err)
	}
	s.keys = keys
	return nil
}

// setupFleet resolves the fleet from the local config; nil means the fleet
// is off. In --sim without a broker it starts the embedded demo broker and
// makes a demo fleet key pair, so fleetctl works out of the box.
func setupFleet(local *config.Config, simulate bool, log *slog.Logger, stdout io.Writer) (*fleetSetup, error) {
	f := local.Fleet
	if !f.Enabled {
		log.Info("fleet off (fleet.enabled = false)")
		return nil, nil
	}
	if f.Broker == "" && !simulate {
		log.Info("fleet off: no fleet.broker configured")
		return nil, nil
	}
	s := &fleetSetup{device: f.DeviceID, groups: f.Groups, stateDir: local.StateDir(simulate), log: log, local: local, identityDir: local.IdentityDir(simulate)}
	keyFile := f.FleetKey
	if f.Enrols() {
		broker := f.EnrolBroker
		if broker == "" {
			broker = enrol.EnrolBroker(f.Broker)
		}
		prov, err := enrol.OpenUnit(enrol.UnitOptions{
			Dir:    local.IdentityDir(simulate),
			Broker: broker, CAFile: f.CAFile, CertFile: f.EnrolCert, KeyFile: f.EnrolKey,
			ClaimCode: f.ClaimCode, ClaimFile: f.ClaimFile,
			RenewBefore: f.RenewBefore.Duration, Model: board.Model("board " + local.Unit.Board), Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		s.prov, s.device = prov, prov.ID()
		if keyFile == "" {
			if prov.Enrolled() {
				if err := s.adoptIdentity(local); err != nil {
					return nil, err
				}
			}
			return s, nil
		}
	}
	if f.Broker == "" {
		if err := s.startDemo(stdout); err != nil {
			return nil, err
		}
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
		return nil, errors.New("fleet: no fleet.fleet_key: point it at the fleet's public key (fleet.pub from fleetctl keygen)")
	}
	keys, err := fleet.LoadPublicKeys(keyFile)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	s.keys = keys
	if s.prov != nil && s.prov.Enrolled() {
		if err := s.adoptIdentity(local); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// startDemo starts the demo fleet (provisioning/broker.Demo) under
// <state>/demo and prints how to reach it.
func (s *fleetSetup) startDemo(stdout io.Writer) error {
	d, err := broker.StartDemo(filepath.Join(s.stateDir, "demo"))
	if err != nil {
		return err
	}
	s.demo, s.demoKey = d, d.KeyFile
	fmt.Fprintf(stdout, "fleet demo: embedded broker %s; signing key %s\n  try: fleetctl --config %s status\n", d.URL(), d.KeyFile, d.Settings)
	return nil
}

func (s *fleetSetup) close() {
	if s != nil && s.audit != nil {
		s.audit.Close()
	}
	if s != nil && s.demo != nil {
		if err := s.demo.Close(); err != nil {
			s.log.Warn("fleet demo broker", "err", err)
		}
		s.demo = nil
	}
}

func (s *fleetSetup) demoURL() (url string) {
	if s.demo != nil {
		url = s.demo.URL()
	}
	return url
}

// status is the fleet part of the unit's status.
func (s *fleetSetup) status(u *unit.Unit) any {
	st := &agent.LocalStatus{DemoKey: s.demoKey, Broker: s.demoURL()}
	if a := s.agent.Load(); a != nil {
		st.ReportedDoc, st.Connected = a.Reported(), a.Connected()
	}
	if s.prov != nil {
		st.Enrolment = s.prov.Status()
	}
	if c := u.Running(); c != nil && c.Fleet.Broker != "" {
		st.Broker = c.Fleet.Broker
	}
	return st
}

// newAgent makes the fleet agent, which brings u up on the stored fleet
// config laid over the local settings. reboot is the fleet's reboot
// command.
func (s *fleetSetup) newAgent(u *unit.Unit, reboot func()) (*agent.Agent, error) {
	base := link.Options{
		DeviceID: s.device,
		Groups:   s.groups,
		StoreDir: filepath.Join(s.stateDir, "link"),
		Logger:   s.log,
	}
	var id agent.Identity // nil (not a typed nil) for a unit without enrolment
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
	if s.audit, err = agent.OpenAudit(s.stateDir, s.identityDir, signer, s.local); err != nil {
		return nil, err
	}
	a, err := agent.New(agent.Options{
		Audit: s.audit, CallE2EE: func() string { return report.E2EE(u.Running()) }, PrivacyReport: u.PrivacyReport,
		StateDir:   s.stateDir,
		Keys:       s.keys,
		Connection: agent.Connection{Link: base},
		DemoBroker: s.demoURL(),
		Unit:       u,
		Appliance:  u.Appliance(),
		Doctor:     u.FleetDoctor,
		Identity:   id,
		Reboot:     reboot,
		Version:    Version,
		Logger:     s.log,
	})
	if err != nil {
		return nil, err
	}
	s.agent.Store(a)
	return a, nil
}
