package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/broker"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Demo fleet identity in --sim when no broker is configured.
const (
	demoDevice = "sim-unit"
	demoGroup  = "demo"
	demoPort   = "127.0.0.1:1883"
)

// exitRestart is roomd's exit status when the fleet's reboot command asks a
// real unit to restart: the service manager (systemd Restart=always) starts
// it again. In --sim the unit restarts inside the process instead.
const exitRestart = 75

// errRestart asks main to exit with exitRestart.
var errRestart = errors.New("restart requested by the fleet")

// fleetStatus is the fleet part of the local API's status.
type fleetStatus struct {
	fleet.ReportedDoc
	Connected bool   `json:"connected"`
	Broker    string `json:"broker"`
	// DemoKey is the demo fleet's signing key in --sim, for fleetctl.
	DemoKey string `json:"demo_key,omitempty"`
	// Enrolment is the unit's own identity and where its enrolment stands
	// (units that enrol themselves).
	Enrolment *identityStatus `json:"enrolment,omitempty"`
}

// fleetSetup is what the unit's own config fixes about its fleet: identity,
// pinned key, state, and in --sim the demo broker.
type fleetSetup struct {
	device   string
	groups   []string
	stateDir string
	keys     []ed25519.PublicKey
	demo     *broker.Broker
	demoKey  string // path of the demo's signing key
	log      *slog.Logger
	// prov is the unit's own identity when it enrols (fleet.enrol_cert);
	// nil for a unit given its certificate by hand or the --sim demo.
	prov *provisioning
	// idMu guards device, groups and keys, which enrolment sets while the
	// local API reads the connection for status.
	idMu sync.Mutex
}

// provisioningOrNil is the unit's enrolled identity, if it enrols.
func (s *fleetSetup) provisioningOrNil() *provisioning {
	if s == nil {
		return nil
	}
	return s.prov
}

// needsEnrolment says the agent can start only after enrolment.
func (s *fleetSetup) needsEnrolment() bool { return s != nil && s.prov != nil && !s.prov.isEnrolled() }

// adoptIdentity takes the device id, groups and pinned fleet key from the
// enrolled identity (the unit's own config wins where it sets them).
func (s *fleetSetup) adoptIdentity(local *Config) error {
	st := s.prov.state()
	s.idMu.Lock()
	defer s.idMu.Unlock()
	s.device = s.prov.id
	if len(local.Fleet.Groups) == 0 {
		s.groups = st.Groups
	}
	if local.Fleet.FleetKey != "" {
		return nil // loaded in setupFleet
	}
	keys, err := s.prov.fleetKeys()
	if err != nil {
		return fmt.Errorf("fleet: the fleet key from enrolment: %w", err)
	}
	s.keys = keys
	return nil
}

// defaultStateDir is where a unit keeps its fleet state unless
// fleet.state_dir says otherwise. The --sim demo keeps it next to its API
// socket, so each simulated unit (and each test) has its own.
func defaultStateDir(simulate bool, socket string) string {
	if simulate {
		return filepath.Join(filepath.Dir(socket), "sim-fleet")
	}
	return "/var/lib/konsult/fleet"
}

// setupFleet resolves the fleet from the local config; nil means the fleet
// is off. In --sim without a broker it starts the embedded demo broker and
// makes a demo fleet key pair, so fleetctl works out of the box.
func setupFleet(local *Config, simulate bool, log *slog.Logger, stdout io.Writer) (*fleetSetup, error) {
	f := local.Fleet
	if !f.Enabled {
		log.Info("fleet off (fleet.enabled = false)")
		return nil, nil
	}
	if f.Broker == "" && !simulate {
		log.Info("fleet off: no fleet.broker configured")
		return nil, nil
	}
	s := &fleetSetup{device: f.DeviceID, groups: f.Groups, stateDir: f.StateDir, log: log}
	if s.stateDir == "" {
		s.stateDir = defaultStateDir(simulate, local.API.Socket)
	}
	keyFile := f.FleetKey
	if f.Enrols() {
		prov, err := newProvisioning(local, simulate, modelName(local), log)
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		s.prov = prov
		s.device = prov.id
		if keyFile == "" {
			if prov.isEnrolled() {
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
	if s.prov != nil && s.prov.isEnrolled() {
		if err := s.adoptIdentity(local); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// modelName is the hardware model for the enrolment request: the device
// tree's model on a Pi, else the board profile.
func modelName(c *Config) string {
	if b, err := os.ReadFile("/proc/device-tree/model"); err == nil {
		if m := strings.TrimRight(string(b), "\x00\n"); m != "" {
			return m
		}
	}
	return "board " + c.Unit.Board
}

// startDemo starts the embedded broker (127.0.0.1:1883, or a free loopback
// port if that is taken) and writes the demo fleet's keys and a fleetctl
// settings file under <state>/demo.
func (s *fleetSetup) startDemo(stdout io.Writer) error {
	b, err := broker.Start(demoPort)
	if err != nil {
		if b, err = broker.Start("127.0.0.1:0"); err != nil {
			return fmt.Errorf("fleet demo: %w", err)
		}
	}
	s.demo = b
	dir := filepath.Join(s.stateDir, "demo")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.close()
		return fmt.Errorf("fleet demo: %w", err)
	}
	s.demoKey = filepath.Join(dir, "fleet.key")
	priv, err := fleet.LoadPrivateKey(s.demoKey)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, err = ed25519.GenerateKey(rand.Reader)
		if err == nil {
			err = writeFileAtomic(s.demoKey, fleet.FormatPrivateKey(priv), 0o600)
		}
	}
	if err != nil {
		s.close()
		return fmt.Errorf("fleet demo key: %w: delete %s to make a new one", err, dir)
	}
	pub := priv.Public().(ed25519.PublicKey)
	if err := writeFileAtomic(filepath.Join(dir, "fleet.pub"), fleet.FormatPublicKey(pub), 0o644); err != nil {
		s.close()
		return fmt.Errorf("fleet demo: %w", err)
	}
	settings := filepath.Join(dir, "fleetctl.toml")
	text := fmt.Sprintf("# fleetctl settings for the roomd --sim demo (written by roomd)\nbroker = %q\n", b.URL())
	if err := writeFileAtomic(settings, []byte(text), 0o600); err != nil {
		s.close()
		return fmt.Errorf("fleet demo: %w", err)
	}
	fmt.Fprintf(stdout, "fleet demo: embedded broker %s; signing key %s\n  try: fleetctl --config %s status\n", b.URL(), s.demoKey, settings)
	return nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Write(path, data, perm)
}

func (s *fleetSetup) close() {
	if s != nil && s.demo != nil {
		if err := s.demo.Close(); err != nil {
			s.log.Warn("fleet demo broker", "err", err)
		}
		s.demo = nil
	}
}

// connection is how the unit reaches its fleet under cfg: the broker and
// certificates may come from a fleet config, the identity never does.
func (s *fleetSetup) connection(cfg *Config) (agent.Connection, error) {
	brokerURL := cfg.Fleet.Broker
	if brokerURL == "" {
		if s.demo == nil {
			return agent.Connection{}, errors.New("fleet.broker is empty: a fleet config cannot switch the fleet off")
		}
		brokerURL = s.demo.URL()
	}
	s.idMu.Lock()
	defer s.idMu.Unlock()
	o := link.Options{
		Broker:   brokerURL,
		CAFile:   cfg.Fleet.CAFile,
		CertFile: cfg.Fleet.CertFile,
		KeyFile:  cfg.Fleet.KeyFile,
		DeviceID: s.device,
		Groups:   s.groups,
		StoreDir: filepath.Join(s.stateDir, "link"),
		Logger:   s.log,
	}
	if s.prov != nil {
		// An enrolled unit always speaks as itself: its own key and the
		// certificate and CA enrolment installed (renewal replaces the
		// certificate file; the link reads it at each connect).
		o.CAFile, o.CertFile, o.KeyFile = s.prov.CAPath(), s.prov.CertPath(), s.prov.KeyPath()
		o.OnConnectError = s.prov.onConnectError
	}
	return agent.Connection{Link: o, ConfirmTimeout: cfg.Fleet.ConfirmTimeout.Duration}, nil
}

// identityHooks is nil (not a typed nil) for a unit without enrolment.
func (s *fleetSetup) identityHooks() agent.Identity {
	if s.prov == nil {
		return nil
	}
	return s.prov
}

// newAgent starts the fleet agent, which brings the unit up (through h) on
// the stored fleet config laid over cfg's local settings.
func (s *fleetSetup) newAgent(local *Config, effective func([]byte) (*Config, error), h *holder, simulate bool, restart chan<- struct{}) (*agent.Agent, error) {
	conn, err := s.connection(local)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	reboot := func() {
		if simulate {
			s.log.Warn("reboot command: restarting the simulated unit in-process")
			if err := h.restart(); err != nil {
				s.log.Error("restarting the simulated unit", "err", err)
			}
			return
		}
		select {
		case restart <- struct{}{}:
		default:
		}
	}
	a, err := agent.New(agent.Options{
		StateDir:   s.stateDir,
		Keys:       s.keys,
		Connection: conn,
		ConnectionFor: func(eff []byte) (agent.Connection, error) {
			c, err := effective(eff)
			if err != nil {
				return agent.Connection{}, err
			}
			return s.connection(c)
		},
		Validate: func(eff []byte) error {
			_, err := effective(eff)
			return err
		},
		Apply: func(eff []byte) error {
			c, err := effective(eff)
			if err != nil {
				return err
			}
			return h.apply(c)
		},
		Appliance: fleetAppliance{h},
		Doctor: func(ctx context.Context) []fleet.DoctorCheck {
			var out []fleet.DoctorCheck
			for _, c := range h.Doctor(ctx) {
				out = append(out, fleet.DoctorCheck(c))
			}
			return out
		},
		Identity: s.identityHooks(),
		Reboot:   reboot,
		Version:  Version,
		Logger:   s.log,
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}
