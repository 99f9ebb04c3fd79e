package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/hal/led"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// testFleet is a real Mosquitto (TLS, client certificates, the shipped ACL),
// a fleet key, and fleetctl's connection flags as the fleet manager.
type testFleet struct {
	t    *testing.T
	b    *brokertest.Broker
	key  string // fleet.key
	pubs []ed25519.PublicKey
	// plain is the URL of a plain-TCP demo broker to use instead of b.
	plain string
}

// startFleet starts the broker for units (device id → groups). Signing uses
// the real clock: the units verify expiry against it.
func startFleet(t *testing.T, units map[string][]string) *testFleet {
	t.Helper()
	realClock(t)
	noSettings(t)
	b := brokertest.Start(t, brokertest.Options{Units: units})
	dir, pubs := keys(t)
	return &testFleet{t: t, b: b, key: filepath.Join(dir, "fleet.key"), pubs: pubs}
}

func realClock(t *testing.T) {
	now = time.Now
	t.Cleanup(func() { now = func() time.Time { return testNow } })
}

// noSettings keeps the developer's own FLEETCTL_* variables and
// ~/.config/konsult/fleetctl.toml out of the tests.
func noSettings(t *testing.T) {
	getenv = func(string) string { return "" }
	t.Cleanup(func() { getenv = os.Getenv })
}

// conn are fleetctl's flags to reach the broker as fleet-admin.
func (f *testFleet) conn() []string {
	a := f.b.Admin()
	return []string{"--broker", f.b.SharedURL(), "--ca", f.b.CAFile(), "--cert", a.CertFile, "--cert-key", a.KeyFile}
}

// fleetctl runs fleetctl with the broker flags appended.
func (f *testFleet) fleetctl(args ...string) (stdout, stderr string, err error) {
	f.t.Helper()
	var o, e bytes.Buffer
	err = run(context.Background(), append(args, f.conn()...), &o, &e)
	return o.String(), e.String(), err
}

// testUnit is one room unit in this process: the real fleet Agent (verify,
// store, apply, link) driving a real appliance.Machine whose hardware
// (shutter, LED) and conference are stand-ins that always work.
type testUnit struct {
	id      string
	machine *appliance.Machine
	agent   *agent.Agent
	cancel  context.CancelFunc
	done    chan struct{}
	logs    *syncbuf.Buffer

	mu      sync.Mutex
	applied []string // effective configs handed to Apply
}

type unitOpt func(*agent.Options, *testUnit)

// maxCallLimit makes the unit's schema refuse call.max_length above d, as
// an older roomd with a lower limit would.
func maxCallLimit(d time.Duration) unitOpt {
	return func(o *agent.Options, _ *testUnit) {
		o.Validate = func(eff []byte) error { return validateRoomd(eff, d) }
	}
}

// hangOnApply makes roomd hang when it is handed a new config: the unit
// stays connected but never answers.
func hangOnApply(release <-chan struct{}) unitOpt {
	return func(o *agent.Options, u *testUnit) {
		apply := o.Apply
		boots := 0
		o.Apply = func(eff []byte) error {
			if boots++; boots > 1 {
				<-release
			}
			return apply(eff)
		}
	}
}

// failApply makes roomd fail to run any config that contains s.
func failApply(s string) unitOpt {
	return func(o *agent.Options, _ *testUnit) {
		apply := o.Apply
		o.Apply = func(eff []byte) error {
			if strings.Contains(string(eff), s) {
				return errors.New("the conference room does not exist")
			}
			return apply(eff)
		}
	}
}

func withVersion(v string) unitOpt {
	return func(o *agent.Options, _ *testUnit) { o.Version = v }
}

// startUnit starts unit id of the fleet and waits until its status says
// online.
func (f *testFleet) startUnit(id string, groups []string, opts ...unitOpt) *testUnit {
	t := f.t
	t.Helper()
	u := &testUnit{id: id, done: make(chan struct{}), logs: &syncbuf.Buffer{}}
	log := slog.New(slog.NewTextHandler(u.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	u.machine = appliance.New(appliance.Config{
		Gate:       gate.New(),
		Shutter:    okShutter{},
		LED:        okLED{},
		Conference: appliance.JoinWith(joinStub),
		Logger:     log,
	})
	lo := link.Options{
		DeviceID: id, Groups: groups,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		KeepAlive: 5 * time.Second, ConnectTimeout: 3 * time.Second,
	}
	if f.plain != "" {
		lo.Broker = f.plain
	} else {
		ident := f.b.Identity(id)
		lo.Broker, lo.CAFile, lo.CertFile, lo.KeyFile = f.b.URL(), f.b.CAFile(), ident.CertFile, ident.KeyFile
	}
	o := agent.Options{
		StateDir:   t.TempDir(),
		Keys:       f.pubs,
		Connection: agent.Connection{Link: lo},
		Validate:   func(eff []byte) error { return validateRoomd(eff, 24*time.Hour) },
		Apply: func(eff []byte) error {
			u.mu.Lock()
			u.applied = append(u.applied, string(eff))
			u.mu.Unlock()
			return nil
		},
		Appliance: u.machine,
		Version:   "1.4.0",
		Logger:    log,
	}
	for _, opt := range opts {
		opt(&o, u)
	}
	a, err := agent.New(o)
	if err != nil {
		t.Fatalf("unit %s: %v", id, err)
	}
	u.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	u.cancel = cancel
	mdone := make(chan struct{})
	go func() { defer close(mdone); _ = u.machine.Run(ctx) }()
	<-u.machine.Ready()
	go func() {
		defer close(u.done)
		_ = a.Run(ctx)
		<-mdone
	}()
	t.Cleanup(func() {
		u.stop()
		if t.Failed() {
			t.Logf("unit %s log:\n%s", id, u.logs.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !a.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("unit %s did not reach the broker:\n%s", id, u.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return u
}

// stop shuts the unit down; its link announces it offline on the way out.
func (u *testUnit) stop() {
	u.cancel()
	<-u.done
}

func (u *testUnit) lastApplied() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.applied) == 0 {
		return ""
	}
	return u.applied[len(u.applied)-1]
}

// waitState waits until the unit's machine is in state s.
func (u *testUnit) waitState(t *testing.T, s appliance.State) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for u.machine.Status().State != s {
		if time.Now().After(deadline) {
			t.Fatalf("unit %s: state %s, want %s", u.id, u.machine.Status().State, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// validateRoomd stands in for roomd's strict config decoder: unknown keys
// and wrong types are refused, and call.max_length is bounded by limit.
func validateRoomd(eff []byte, limit time.Duration) error {
	var c struct {
		Call struct {
			MaxLength string `toml:"max_length"`
		} `toml:"call"`
		Conference struct {
			Room string `toml:"room"`
		} `toml:"conference"`
	}
	md, err := toml.Decode(string(eff), &c)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fmt.Errorf("unknown key %s", und[0])
	}
	if c.Call.MaxLength != "" {
		d, err := time.ParseDuration(c.Call.MaxLength)
		if err != nil {
			return errors.New("call.max_length is not a duration")
		}
		if d > limit {
			return fmt.Errorf("call.max_length %s is above this unit's limit of %s", d, limit)
		}
	}
	return nil
}

type okShutter struct{}

func (okShutter) Open(context.Context) error  { return nil }
func (okShutter) Close(context.Context) error { return nil }

type okLED struct{}

func (okLED) Set(led.State) error { return nil }

// stubCall is a conference call that lasts until left.
type stubCall struct {
	id    string
	ended chan error
	once  sync.Once
}

func joinStub(context.Context) (*stubCall, error) {
	return &stubCall{id: "m-" + fleet.NewNonce()[:8], ended: make(chan error, 1)}, nil
}

func (c *stubCall) ID() string { return c.id }
func (c *stubCall) Leave(context.Context) error {
	c.once.Do(func() { close(c.ended) })
	return nil
}
func (c *stubCall) Ended() <-chan error { return c.ended }

// writeConfig writes a config file for push.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "room.toml")
	if err := writeFileAtomic(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
