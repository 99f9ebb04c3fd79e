package agent_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

var topics = link.Topics{}

const (
	unitID = "unit-1"
	group  = "ward-a"
)

// fakeAppliance stands in for the appliance: the test sets its state and
// emits its events, and it records what the fleet asked of it.
type fakeAppliance struct {
	mu       sync.Mutex
	state    appliance.State
	subs     []chan appliance.Event
	actions  []appliance.Action
	identify []time.Duration
}

func (f *fakeAppliance) Do(_ context.Context, a appliance.Action, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.actions = append(f.actions, a)
	return nil
}

func (f *fakeAppliance) Identify(_ context.Context, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.identify = append(f.identify, d)
	return nil
}

func (f *fakeAppliance) Subscribe(buf int) (<-chan appliance.Event, func()) {
	ch := make(chan appliance.Event, buf+1)
	f.mu.Lock()
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	return ch, func() {}
}

func (f *fakeAppliance) Status() appliance.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == "" {
		return appliance.Status{State: appliance.Idle}
	}
	return appliance.Status{State: f.state}
}

// emit sends ev to subscribers, and moves the state for state events.
func (f *fakeAppliance) emit(ev appliance.Event) {
	f.mu.Lock()
	if ev.Type == "state" {
		f.state = ev.State
	}
	subs := f.subs
	f.mu.Unlock()
	for _, ch := range subs {
		ch <- ev
	}
}

func (f *fakeAppliance) asked() ([]appliance.Action, []time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]appliance.Action(nil), f.actions...), append([]time.Duration(nil), f.identify...)
}

// event is an event as the fleet receives it.
type event struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	At   time.Time       `json:"at"`
	Data json.RawMessage `json:"data"`
	raw  string
}

// unit is one agent against a real Mosquitto, watched by the fleet admin.
type unit struct {
	t     *testing.T
	b     *brokertest.Broker
	priv  ed25519.PrivateKey
	admin mqtt.Client
	app   *fakeAppliance
	dir   string

	events   chan event
	mu       sync.Mutex
	all      []event // every event so far
	retained map[string][]byte

	subscribed chan struct{} // the admin (re)subscribed

	applied chan string // effective configs handed to Apply
	logs    *syncbuf.Buffer

	agent  *agent.Agent
	cancel context.CancelFunc
	done   chan error

	// brokerFor maps a config's [fleet] broker value to a URL; tests use it
	// to move the unit onto a dead port.
	applyErr func(eff string) error
	opts     agent.Options
}

func newUnit(t *testing.T) *unit {
	t.Helper()
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{unitID: {group}}})
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u := &unit{
		t: t, b: b, priv: priv, app: &fakeAppliance{}, dir: t.TempDir(),
		events: make(chan event, 256), retained: map[string][]byte{},
		applied: make(chan string, 64), logs: &syncbuf.Buffer{},
	}
	onMsg := func(_ mqtt.Client, m mqtt.Message) {
		if m.Topic() != topics.Events(unitID) {
			u.mu.Lock()
			u.retained[m.Topic()] = append([]byte(nil), m.Payload()...)
			u.mu.Unlock()
			return
		}
		var e event
		if err := json.Unmarshal(m.Payload(), &e); err != nil {
			t.Errorf("event is not JSON: %v", err)
			return
		}
		e.raw = string(m.Payload())
		u.mu.Lock()
		u.all = append(u.all, e)
		u.mu.Unlock()
		u.events <- e
	}
	// Subscribed on every connect: the admin's session is clean, and tests
	// restart the broker.
	subscribed := make(chan struct{}, 8)
	u.subscribed = subscribed
	u.admin = b.Client(t, "fleet-admin", func(o *mqtt.ClientOptions) {
		o.SetOnConnectHandler(func(c mqtt.Client) {
			tok := c.SubscribeMultiple(map[string]byte{
				topics.Events(unitID): 1, topics.Status(unitID): 1, topics.Reported(unitID): 1,
			}, onMsg)
			if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
				subscribed <- struct{}{}
			}
		})
	})
	select {
	case <-subscribed:
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not subscribe within 5 s")
	}

	ident := b.Identity(unitID)
	base := link.Options{
		Broker: b.URL(), CAFile: b.CAFile(), CertFile: ident.CertFile, KeyFile: ident.KeyFile,
		DeviceID: unitID, Groups: []string{group},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		KeepAlive: 5 * time.Second, ConnectTimeout: 2 * time.Second,
	}
	u.opts = agent.Options{
		StateDir: u.dir,
		Keys:     []ed25519.PublicKey{pub},
		Connection: agent.Connection{
			Link: base, ConfirmTimeout: 1500 * time.Millisecond,
		},
		// A config's [fleet] broker moves the unit to another broker.
		ConnectionFor: func(eff []byte) (agent.Connection, error) {
			c := agent.Connection{Link: base, ConfirmTimeout: 1500 * time.Millisecond}
			tree, err := fleet.ParseTOML(eff)
			if err != nil {
				return c, err
			}
			if f, ok := tree["fleet"].(map[string]any); ok {
				if s, ok := f["broker"].(string); ok {
					c.Link.Broker = s
				}
			}
			return c, nil
		},
		Validate: func(eff []byte) error {
			tree, err := fleet.ParseTOML(eff)
			if err != nil {
				return err
			}
			for k, v := range tree {
				tab, ok := v.(map[string]any)
				if !ok {
					return fmt.Errorf("key %s must be a table", k)
				}
				for kk, vv := range tab {
					if kk == "bad" {
						return fmt.Errorf("unknown key %s.%s = %q", k, kk, vv)
					}
				}
			}
			return nil
		},
		Apply: func(eff []byte) error {
			if u.applyErr != nil {
				if err := u.applyErr(string(eff)); err != nil {
					return err
				}
			}
			u.applied <- string(eff)
			return nil
		},
		Appliance: u.app,
		Reboot:    func() {},
		Version:   "test-1",
		Logger:    slog.New(slog.NewTextHandler(u.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() {
		u.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", u.logs.String())
		}
	})
	return u
}

// start creates and runs the agent; it returns the config New applied.
func (u *unit) start() string {
	u.t.Helper()
	a, err := agent.New(u.opts)
	if err != nil {
		u.t.Fatalf("New: %v", err)
	}
	u.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	u.cancel, u.done = cancel, make(chan error, 1)
	go func() { u.done <- a.Run(ctx) }()
	return u.nextApplied(2 * time.Second)
}

func (u *unit) stop() {
	if u.cancel == nil {
		return
	}
	u.cancel()
	select {
	case err := <-u.done:
		if err != nil {
			u.t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		u.t.Error("Run did not return within 10 s of cancel")
	}
	u.cancel = nil
}

// restartBroker restarts Mosquitto and waits for the admin to be back.
func (u *unit) restartBroker() {
	u.t.Helper()
	u.b.Stop()
	u.b.Restart()
	select {
	case <-u.subscribed:
	case <-time.After(10 * time.Second):
		u.t.Fatal("admin did not resubscribe within 10 s of the broker restart")
	}
}

func (u *unit) nextApplied(within time.Duration) string {
	u.t.Helper()
	select {
	case s := <-u.applied:
		return s
	case <-time.After(within):
		u.t.Fatalf("no config applied within %s", within)
	}
	return ""
}

func (u *unit) noApplied(within time.Duration) {
	u.t.Helper()
	select {
	case s := <-u.applied:
		u.t.Fatalf("a config was applied: %q", s)
	case <-time.After(within):
	}
}

type cfg struct {
	version  uint64
	target   fleet.Target
	toml     string
	urgent   bool
	issued   time.Time
	expires  time.Time
	priv     ed25519.PrivateKey
	tamper   bool
	topicFor *fleet.Target // publish on this target's topic instead
}

func (u *unit) envelope(c cfg) []byte {
	u.t.Helper()
	if c.issued.IsZero() {
		c.issued = time.Now().Add(-time.Minute)
	}
	if c.expires.IsZero() {
		c.expires = time.Now().Add(time.Hour)
	}
	if c.priv == nil {
		c.priv = u.priv
	}
	env, err := fleet.SignConfig(c.priv, fleet.ConfigPayload{
		Version: c.version, IssuedAt: c.issued, ExpiresAt: c.expires, Target: c.target, Urgent: c.urgent, Config: c.toml,
	})
	if err != nil {
		u.t.Fatalf("sign: %v", err)
	}
	if c.tamper {
		env.Payload = []byte(strings.Replace(string(env.Payload), `"version":`, `"version": `, 1))
	}
	return env.Marshal()
}

func (u *unit) push(c cfg) {
	u.t.Helper()
	topicT := c.target
	if c.topicFor != nil {
		topicT = *c.topicFor
	}
	topic := topics.DeviceConfig(topicT.Device)
	if topicT.Group != "" {
		topic = topics.GroupConfig(topicT.Group)
	}
	u.publish(topic, true, u.envelope(c))
}

func (u *unit) publish(topic string, retained bool, b []byte) {
	u.t.Helper()
	tok := u.admin.Publish(topic, 1, retained, b)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		u.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (u *unit) command(name string, args map[string]json.RawMessage, issued, expires time.Time, nonce string) []byte {
	u.t.Helper()
	env, err := fleet.SignCommand(u.priv, fleet.CommandPayload{
		Name: name, Args: args, Nonce: nonce, IssuedAt: issued, ExpiresAt: expires, Target: fleet.Target{Device: unitID},
	})
	if err != nil {
		u.t.Fatalf("sign command: %v", err)
	}
	return env.Marshal()
}

// waitEvent returns the next event of type typ, failing after within.
func (u *unit) waitEvent(typ string, within time.Duration) event {
	u.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-u.events:
			if e.Type == typ {
				return e
			}
		case <-deadline:
			u.t.Fatalf("no %s event within %s; events so far: %s", typ, within, u.eventTypes())
		}
	}
}

func (u *unit) eventTypes() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var s []string
	for _, e := range u.all {
		s = append(s, e.Type)
	}
	return strings.Join(s, ",")
}

func (u *unit) countEvents(typ string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, e := range u.all {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// reported is the latest retained reported document.
func (u *unit) reported() fleet.ReportedDoc {
	u.mu.Lock()
	b := u.retained[topics.Reported(unitID)]
	u.mu.Unlock()
	var d fleet.ReportedDoc
	if b != nil {
		if err := json.Unmarshal(b, &d); err != nil {
			u.t.Fatalf("reported is not a ReportedDoc: %v", err)
		}
	}
	return d
}

func (u *unit) status() fleet.StatusDoc {
	u.mu.Lock()
	b := u.retained[topics.Status(unitID)]
	u.mu.Unlock()
	var d fleet.StatusDoc
	if b != nil {
		if err := json.Unmarshal(b, &d); err != nil {
			u.t.Fatalf("status is not a StatusDoc: %v", err)
		}
	}
	return d
}

func eventually(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func decode[T any](t *testing.T, e event) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(e.Data, &v); err != nil {
		t.Fatalf("%s data %s: %v", e.Type, e.Data, err)
	}
	return v
}

var errApply = errors.New("the unit cannot open pin GPIO99")
