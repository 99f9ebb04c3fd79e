package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

const (
	fleetDevice = "room-1"
	fleetGroup  = "ward-a"
)

var (
	devTarget = fleet.Target{Device: fleetDevice}
	grpTarget = fleet.Target{Group: fleetGroup}
)

// fleetEvent is an event as the fleet manager receives it.
type fleetEvent struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
	raw  string
}

// fleetSide is the fleet manager's end against a real Mosquitto: the
// signing key, an admin connection, and everything the unit published.
type fleetSide struct {
	t      testing.TB
	b      *brokertest.Broker
	priv   ed25519.PrivateKey
	pub    string // fleet.pub path
	admin  mqtt.Client
	events chan fleetEvent
	resub  chan struct{}

	mu       sync.Mutex
	all      []fleetEvent
	retained map[string][]byte
}

func newFleetSide(t testing.TB) *fleetSide {
	t.Helper()
	f := &fleetSide{t: t, events: make(chan fleetEvent, 4096), resub: make(chan struct{}, 16), retained: map[string][]byte{}}
	f.b = brokertest.Start(t, brokertest.Options{Units: map[string][]string{fleetDevice: {fleetGroup}}})
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.priv = priv
	f.pub = filepath.Join(t.TempDir(), "fleet.pub")
	if err := os.WriteFile(f.pub, fleet.FormatPublicKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	topics := link.Topics{}
	onMsg := func(_ mqtt.Client, m mqtt.Message) {
		if m.Topic() != topics.Events(fleetDevice) {
			f.mu.Lock()
			f.retained[m.Topic()] = append([]byte(nil), m.Payload()...)
			f.mu.Unlock()
			return
		}
		var e fleetEvent
		if err := json.Unmarshal(m.Payload(), &e); err != nil {
			t.Errorf("event is not JSON: %v", err)
			return
		}
		e.raw = string(m.Payload())
		f.mu.Lock()
		f.all = append(f.all, e)
		f.mu.Unlock()
		select {
		case f.events <- e:
		default:
		}
	}
	f.admin = f.b.Client(t, "fleet-admin", func(o *mqtt.ClientOptions) {
		o.SetOnConnectHandler(func(c mqtt.Client) {
			tok := c.SubscribeMultiple(map[string]byte{
				topics.Events(fleetDevice): 1, topics.Status(fleetDevice): 1, topics.Reported(fleetDevice): 1,
			}, onMsg)
			if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
				f.resub <- struct{}{}
			}
		})
	})
	select {
	case <-f.resub:
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not subscribe")
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
	f.t.Helper()
	if s.issued.IsZero() {
		s.issued = time.Now().Add(-time.Minute)
	}
	if s.expires.IsZero() {
		s.expires = time.Now().Add(time.Hour)
	}
	if s.priv == nil {
		s.priv = f.priv
	}
	env, err := fleet.SignConfig(s.priv, fleet.ConfigPayload{Version: s.version, IssuedAt: s.issued, ExpiresAt: s.expires,
		Target: s.target, Urgent: s.urgent, Config: s.toml})
	if err != nil {
		f.t.Fatalf("sign: %v", err)
	}
	if s.tamper {
		env.Payload = []byte(strings.Replace(string(env.Payload), `"config":"`, `"config": "`, 1))
	}
	t := s.target
	if s.onTopic != nil {
		t = *s.onTopic
	}
	topic := link.Topics{}.DeviceConfig(t.Device)
	if t.Group != "" {
		topic = link.Topics{}.GroupConfig(t.Group)
	}
	f.publish(topic, true, env.Marshal())
}

func (f *fleetSide) command(name string, args map[string]json.RawMessage, issued, expires time.Time) []byte {
	f.t.Helper()
	env, err := fleet.SignCommand(f.priv, fleet.CommandPayload{Name: name, Args: args, IssuedAt: issued, ExpiresAt: expires, Target: devTarget})
	if err != nil {
		f.t.Fatalf("sign command: %v", err)
	}
	return env.Marshal()
}

func (f *fleetSide) publish(topic string, retained bool, b []byte) {
	f.t.Helper()
	tok := f.admin.Publish(topic, 1, retained, b)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		f.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (f *fleetSide) waitEvent(typ string, within time.Duration) fleetEvent {
	f.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-f.events:
			if e.Type == typ {
				return e
			}
		case <-deadline:
			f.t.Fatalf("no %s event within %s; events: %s", typ, within, f.types())
		}
	}
}

// waitEvents waits for one event of each type, in any order.
func (f *fleetSide) waitEvents(within time.Duration, types ...string) map[string]fleetEvent {
	f.t.Helper()
	got := map[string]fleetEvent{}
	deadline := time.After(within)
	for len(got) < len(types) {
		select {
		case e := <-f.events:
			for _, typ := range types {
				if e.Type == typ {
					if _, dup := got[typ]; !dup {
						got[typ] = e
					}
				}
			}
		case <-deadline:
			f.t.Fatalf("not all of %v within %s; events: %s", types, within, f.types())
		}
	}
	return got
}

func (f *fleetSide) types() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s []string
	for _, e := range f.all {
		s = append(s, e.Type)
	}
	return strings.Join(s, ",")
}

func (f *fleetSide) count(typ string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := map[string]bool{}
	for _, e := range f.all {
		if e.Type == typ {
			ids[e.ID] = true
		}
	}
	return len(ids)
}

func data[T any](t testing.TB, e fleetEvent) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(e.Data, &v); err != nil {
		t.Fatalf("%s data %s: %v", e.Type, e.Data, err)
	}
	return v
}

// startFleetUnit runs roomd --sim in-process on f's broker.
func startFleetUnit(t *testing.T, f *fleetSide) *unitUnderTest {
	t.Helper()
	u := startUnit(t, f.unitConfig(filepath.Join(t.TempDir(), "state")))
	f.waitEvent(fleet.EventStarted, 10*time.Second)
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
