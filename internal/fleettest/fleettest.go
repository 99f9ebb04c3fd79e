// Package fleettest is a fake fleet manager for tests against a real
// Mosquitto (internal/brokertest): an admin connection that signs and
// publishes config and command envelopes on the units' topics, and collects
// what units publish (events, retained status and reported documents).
package fleettest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

var topics = link.Topics{}

// Event is an event as the fleet manager receives it.
type Event struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	At   time.Time       `json:"at"`
	Data json.RawMessage `json:"data"`
	// Unit is the device whose events topic it came on.
	Unit string `json:"-"`
	// Raw is the message as published.
	Raw string `json:"-"`
}

// Manager is the fleet manager's end: a signing key and the admin's
// connection to the broker, subscribed to the units' topics.
type Manager struct {
	// T is where failures go; a test that runs subtests points it at the
	// subtest while it runs.
	T   testing.TB
	Key ed25519.PrivateKey
	Pub ed25519.PublicKey

	admin  mqtt.Client
	units  []string
	events chan Event
	resub  chan struct{}

	mu       sync.Mutex
	all      []Event
	retained map[string][]byte
}

// New makes a fleet key and connects as b's admin, subscribed to the
// events, status and reported topics of units. It subscribes again on every
// reconnect (the admin's session is clean and tests restart the broker).
func New(t testing.TB, b *brokertest.Broker, units ...string) *Manager {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{T: t, Key: priv, Pub: pub, units: units,
		events: make(chan Event, 4096), resub: make(chan struct{}, 16), retained: map[string][]byte{}}
	subs := map[string]byte{}
	for _, u := range units {
		subs[topics.Events(u)], subs[topics.Status(u)], subs[topics.Reported(u)] = 1, 1, 1
	}
	m.admin = b.Client(t, b.Admin().Name, func(o *mqtt.ClientOptions) {
		o.SetOnConnectHandler(func(c mqtt.Client) {
			tok := c.SubscribeMultiple(subs, m.onMessage)
			if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
				select {
				case m.resub <- struct{}{}:
				default: // nobody waits; never block paho's reconnect
				}
			}
		})
	})
	m.Resubscribed(5 * time.Second)
	return m
}

func (m *Manager) onMessage(_ mqtt.Client, msg mqtt.Message) {
	unit := ""
	for _, u := range m.units {
		if msg.Topic() == topics.Events(u) {
			unit = u
		}
	}
	if unit == "" {
		m.mu.Lock()
		m.retained[msg.Topic()] = append([]byte(nil), msg.Payload()...)
		m.mu.Unlock()
		return
	}
	var e Event
	if err := json.Unmarshal(msg.Payload(), &e); err != nil {
		m.T.Errorf("event is not JSON: %v", err)
		return
	}
	e.Unit, e.Raw = unit, string(msg.Payload())
	m.mu.Lock()
	m.all = append(m.all, e)
	m.mu.Unlock()
	select {
	case m.events <- e:
	default: // nobody waits for this many; Events still has them
	}
}

// Resubscribed waits until the admin has (re)subscribed, e.g. after the
// broker restarted.
func (m *Manager) Resubscribed(within time.Duration) {
	m.T.Helper()
	select {
	case <-m.resub:
	case <-time.After(within):
		m.T.Fatalf("fleettest: the admin did not (re)subscribe within %s", within)
	}
}

// Config is a config envelope to sign and push.
type Config struct {
	Version uint64
	Target  fleet.Target
	TOML    string
	Urgent  bool
	// Issued and Expires default to a minute ago and an hour from now.
	Issued, Expires time.Time
	// Key signs instead of the manager's key.
	Key ed25519.PrivateKey
	// Tamper changes the payload after signing.
	Tamper bool
	// OnTopic publishes on this target's topic instead of Target's.
	OnTopic *fleet.Target
}

// Envelope signs c.
func (m *Manager) Envelope(c Config) []byte {
	m.T.Helper()
	if c.Issued.IsZero() {
		c.Issued = time.Now().Add(-time.Minute)
	}
	if c.Expires.IsZero() {
		c.Expires = time.Now().Add(time.Hour)
	}
	if c.Key == nil {
		c.Key = m.Key
	}
	env, err := fleet.SignConfig(c.Key, fleet.ConfigPayload{
		Version: c.Version, IssuedAt: c.Issued, ExpiresAt: c.Expires, Target: c.Target, Urgent: c.Urgent, Config: c.TOML,
	})
	if err != nil {
		m.T.Fatalf("fleettest: sign: %v", err)
	}
	if c.Tamper {
		// Still JSON, no longer the bytes that were signed.
		env.Payload = []byte(strings.Replace(string(env.Payload), ":", ": ", 1))
	}
	return env.Marshal()
}

// Push signs c and publishes it retained on its target's config topic.
func (m *Manager) Push(c Config) {
	m.T.Helper()
	t := c.Target
	if c.OnTopic != nil {
		t = *c.OnTopic
	}
	topic := topics.DeviceConfig(t.Device)
	if t.Group != "" {
		topic = topics.GroupConfig(t.Group)
	}
	m.Publish(topic, true, m.Envelope(c))
}

// Command signs a command envelope with the manager's key.
func (m *Manager) Command(p fleet.CommandPayload) []byte {
	m.T.Helper()
	env, err := fleet.SignCommand(m.Key, p)
	if err != nil {
		m.T.Fatalf("fleettest: sign command: %v", err)
	}
	return env.Marshal()
}

// Publish publishes b on topic at QoS 1 and waits for the broker.
func (m *Manager) Publish(topic string, retained bool, b []byte) {
	m.T.Helper()
	tok := m.admin.Publish(topic, 1, retained, b)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		m.T.Fatalf("fleettest: publish %s: %v", topic, tok.Error())
	}
}

// WaitEvent returns the next event of type typ, failing after within.
func (m *Manager) WaitEvent(typ string, within time.Duration) Event {
	m.T.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-m.events:
			if e.Type == typ {
				return e
			}
		case <-deadline:
			m.T.Fatalf("fleettest: no %s event within %s; events so far: %s", typ, within, m.Types())
		}
	}
}

// WaitEvents waits for one event of each type, in any order.
func (m *Manager) WaitEvents(within time.Duration, types ...string) map[string]Event {
	m.T.Helper()
	got := map[string]Event{}
	deadline := time.After(within)
	for len(got) < len(types) {
		select {
		case e := <-m.events:
			if _, dup := got[e.Type]; !dup && slices.Contains(types, e.Type) {
				got[e.Type] = e
			}
		case <-deadline:
			m.T.Fatalf("fleettest: not all of %v within %s; events so far: %s", types, within, m.Types())
		}
	}
	return got
}

// Events is every event received so far.
func (m *Manager) Events() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.all)
}

// Types lists the types of every event so far, comma-separated.
func (m *Manager) Types() string {
	var s []string
	for _, e := range m.Events() {
		s = append(s, e.Type)
	}
	return strings.Join(s, ",")
}

// Count is how many events of type typ arrived (a redelivery counts again).
func (m *Manager) Count(typ string) int {
	n := 0
	for _, e := range m.Events() {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// Distinct is how many events of type typ arrived, by id.
func (m *Manager) Distinct(typ string) int {
	ids := map[string]bool{}
	for _, e := range m.Events() {
		if e.Type == typ {
			ids[e.ID] = true
		}
	}
	return len(ids)
}

// Retained is the latest payload on each status and reported topic.
func (m *Manager) Retained() map[string][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.retained)
}

// Status is unit's latest status document (zero if none yet).
func (m *Manager) Status(unit string) fleet.StatusDoc {
	m.T.Helper()
	return decodeDoc[fleet.StatusDoc](m, topics.Status(unit))
}

// Reported is unit's latest reported document (zero if none yet).
func (m *Manager) Reported(unit string) fleet.ReportedDoc {
	m.T.Helper()
	return decodeDoc[fleet.ReportedDoc](m, topics.Reported(unit))
}

func decodeDoc[T any](m *Manager, topic string) T {
	m.T.Helper()
	m.mu.Lock()
	b := m.retained[topic]
	m.mu.Unlock()
	var d T
	if b != nil {
		if err := json.Unmarshal(b, &d); err != nil {
			m.T.Fatalf("fleettest: %s is not a %T: %v", topic, d, err)
		}
	}
	return d
}

// Data decodes an event's data.
func Data[T any](t testing.TB, e Event) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(e.Data, &v); err != nil {
		t.Fatalf("%s data %s: %v", e.Type, e.Data, err)
	}
	return v
}

// RetainedUnder is what the broker b holds retained under filter (topic →
// payload; an empty payload clears a topic, so it is left out), as any
// dashboard subscribing to it as the fleet manager receives it within
// the given time.
func RetainedUnder(t testing.TB, b *brokertest.Broker, filter string, within time.Duration) map[string][]byte {
	t.Helper()
	c := b.Client(t, b.Admin().Name)
	defer c.Disconnect(100)
	type msg struct {
		topic   string
		payload []byte
	}
	got := make(chan msg, 256)
	tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		if m.Retained() && len(m.Payload()) > 0 {
			got <- msg{m.Topic(), append([]byte(nil), m.Payload()...)}
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("fleettest: subscribe %s: %v", filter, tok.Error())
	}
	out := map[string][]byte{}
	deadline := time.After(within)
	for {
		select {
		case m := <-got:
			out[m.topic] = m.payload
		case <-deadline:
			return out
		}
	}
}
