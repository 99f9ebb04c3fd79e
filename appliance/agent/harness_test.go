package agent_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/fleettest"
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

// unit is one agent against a real Mosquitto, watched by the fleet admin.
type unit struct {
	*fleettest.Manager // T is the test
	b                  *brokertest.Broker
	app                *fakeAppliance
	dir                string

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
	u := &unit{
		Manager: fleettest.New(t, b, unitID), b: b, app: &fakeAppliance{}, dir: t.TempDir(),
		applied: make(chan string, 64), logs: &syncbuf.Buffer{},
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
		Keys:     []ed25519.PublicKey{u.Pub},
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
	u.T.Helper()
	a, err := agent.New(u.opts)
	if err != nil {
		u.T.Fatalf("New: %v", err)
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
			u.T.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		u.T.Error("Run did not return within 10 s of cancel")
	}
	u.cancel = nil
}

// restartBroker restarts Mosquitto and waits for the admin to be back.
func (u *unit) restartBroker() {
	u.T.Helper()
	u.b.Stop()
	u.b.Restart()
	u.Resubscribed(10 * time.Second)
}

func (u *unit) nextApplied(within time.Duration) string {
	u.T.Helper()
	select {
	case s := <-u.applied:
		return s
	case <-time.After(within):
		u.T.Fatalf("no config applied within %s", within)
	}
	return ""
}

func (u *unit) noApplied(within time.Duration) {
	u.T.Helper()
	select {
	case s := <-u.applied:
		u.T.Fatalf("a config was applied: %q", s)
	case <-time.After(within):
	}
}

// cfg is a config envelope for push.
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

func (u *unit) push(c cfg) {
	u.T.Helper()
	u.Push(fleettest.Config{Version: c.version, Target: c.target, TOML: c.toml, Urgent: c.urgent,
		Issued: c.issued, Expires: c.expires, Key: c.priv, Tamper: c.tamper, OnTopic: c.topicFor})
}

func (u *unit) command(name string, args map[string]json.RawMessage, issued, expires time.Time, nonce string) []byte {
	u.T.Helper()
	return u.Command(fleet.CommandPayload{
		Name: name, Args: args, Nonce: nonce, IssuedAt: issued, ExpiresAt: expires, Target: fleet.Target{Device: unitID},
	})
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

var errApply = errors.New("the unit cannot open pin GPIO99")
