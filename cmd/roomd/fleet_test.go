package main

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/fleet"
)

const (
	fleetDevice = "room-1"
	fleetGroup  = "ward-a"
)

var (
	devTarget = fleet.Target{Device: fleetDevice}
	grpTarget = fleet.Target{Group: fleetGroup}
)

// fleetSide is the fleet manager's end against a real Mosquitto: the
// signing key, an admin connection, and everything the unit published.
type fleetSide struct {
	*fleettest.Manager // T is the test
	b                  *brokertest.Broker
	pub                string // fleet.pub path
}

func newFleetSide(t testing.TB) *fleetSide {
	t.Helper()
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{fleetDevice: {fleetGroup}}})
	f := &fleetSide{Manager: fleettest.New(t, b, fleetDevice), b: b, pub: filepath.Join(t.TempDir(), "fleet.pub")}
	if err := os.WriteFile(f.pub, fleet.FormatPublicKey(f.Pub), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// unitConfig is roomd's local config for the unit on this fleet.
func (f *fleetSide) unitConfig(stateDir string) string {
	id := f.b.Identity(fleetDevice)
	return fmt.Sprintf(`[fleet]
broker = %q
ca_file = %q
cert_file = %q
key_file = %q
device_id = %q
groups = [%q]
fleet_key = %q
state_dir = %q
confirm_timeout = "3s"
`, f.b.URL(), f.b.CAFile(), id.CertFile, id.KeyFile, fleetDevice, fleetGroup, f.pub, stateDir)
}

type signed struct {
	version uint64
	target  fleet.Target
	toml    string
	urgent  bool
	issued  time.Time
	expires time.Time
	priv    ed25519.PrivateKey
	tamper  bool
	onTopic *fleet.Target
}

func (f *fleetSide) push(s signed) {
	f.T.Helper()
	f.Push(fleettest.Config{Version: s.version, Target: s.target, TOML: s.toml, Urgent: s.urgent,
		Issued: s.issued, Expires: s.expires, Key: s.priv, Tamper: s.tamper, OnTopic: s.onTopic})
}

func (f *fleetSide) command(name string, args map[string]json.RawMessage, issued, expires time.Time) []byte {
	f.T.Helper()
	return f.Command(fleet.CommandPayload{Name: name, Args: args, IssuedAt: issued, ExpiresAt: expires, Target: devTarget})
}

// startFleetUnit runs roomd --sim in-process on f's broker.
func startFleetUnit(t *testing.T, f *fleetSide) *unitUnderTest {
	t.Helper()
	u := startUnit(t, f.unitConfig(filepath.Join(t.TempDir(), "state")))
	f.WaitEvent(fleet.EventStarted, 10*time.Second)
	u.eventually("fleet connected", func(s status) bool { return s.Fleet != nil && s.Fleet.Connected })
	return u
}

// pin is the line the unit runs role on, from its local status.
func pin(s status, role string) string {
	for _, p := range s.Pins {
		if p.Role == role {
			return p.Line
		}
	}
	return ""
}
