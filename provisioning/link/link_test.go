package link_test

import (
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/link"
)

var brokerDown = flag.Duration("broker-down", 6*time.Second, "how long the outage test keeps the broker stopped")

var topics = link.Topics{}

// unitOpts is a unit's link configuration against b.
func unitOpts(t *testing.T, b *brokertest.Broker, id string, groups ...string) link.Options {
	t.Helper()
	ident := b.Identity(id)
	return link.Options{
		Broker:     b.URL(),
		CAFile:     b.CAFile(),
		CertFile:   ident.CertFile,
		KeyFile:    ident.KeyFile,
		DeviceID:   id,
		Groups:     groups,
		StoreDir:   filepath.Join(t.TempDir(), "store"),
		MinBackoff: 100 * time.Millisecond,
		MaxBackoff: time.Second,
		KeepAlive:  5 * time.Second,
		Status:     link.Status{State: "idle", Version: "test"},
		Logger:     testLogger(t),
	}
}

// testWriter sends the link's log to the test log, so a failing test shows
// it, and keeps a copy for tests that check what was logged. The link's
// goroutines may still log after the test ends, which t.Log must not see.
type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
	buf  strings.Builder
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

var logs sync.Map // *testing.T → *testWriter

func testLogger(t *testing.T) *slog.Logger {
	w, loaded := logs.LoadOrStore(t, &testWriter{t: t})
	if !loaded {
		t.Cleanup(func() {
			w.(*testWriter).mu.Lock()
			w.(*testWriter).done = true
			w.(*testWriter).mu.Unlock()
			logs.Delete(t)
		})
	}
	return slog.New(slog.NewTextHandler(w.(*testWriter), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// logged is everything the links of test t logged so far.
func logged(t *testing.T) string {
	if w, ok := logs.Load(t); ok {
		return w.(*testWriter).String()
	}
	return ""
}

func dial(t *testing.T, o link.Options) *link.Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	l, err := link.Dial(ctx, o)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// publish publishes as c and waits for the broker's PUBACK.
func publish(t *testing.T, c mqtt.Client, topic string, retained bool, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// recorder collects what a client receives, in order.
type recorder struct {
	mu   sync.Mutex
	msgs []mqtt.Message
	ch   chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 1)} }

func (r *recorder) handle(_ mqtt.Client, m mqtt.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

func (r *recorder) all() []mqtt.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// waitFor waits until a received message satisfies ok.
func (r *recorder) waitFor(t *testing.T, d time.Duration, what string, ok func(mqtt.Message) bool) mqtt.Message {
	t.Helper()
	deadline := time.After(d)
	for {
		for _, m := range r.all() {
			if ok(m) {
				return m
			}
		}
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// waitFrom is waitFor, looking only at messages from the n-th on.
func (r *recorder) waitFrom(t *testing.T, n int, d time.Duration, what string, ok func(mqtt.Message) bool) mqtt.Message {
	t.Helper()
	deadline := time.After(d)
	for {
		if all := r.all(); len(all) > n {
			for _, m := range all[n:] {
				if ok(m) {
					return m
				}
			}
		}
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

func subscribe(t *testing.T, c mqtt.Client, r *recorder, filters ...string) {
	t.Helper()
	m := map[string]byte{}
	for _, f := range filters {
		m[f] = 1
	}
	tok := c.SubscribeMultiple(m, r.handle)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %v: %v", filters, tok.Error())
	}
}

func nextMessage(t *testing.T, l *link.Link, d time.Duration) link.Message {
	t.Helper()
	select {
	case m, ok := <-l.Messages():
		if !ok {
			t.Fatal("Messages closed")
		}
		return m
	case <-time.After(d):
		t.Fatalf("no message from the fleet within %s", d)
	}
	panic("unreachable")
}

// noMessage checks that nothing arrives on the unit's link for d.
func noMessage(t *testing.T, l *link.Link, d time.Duration) {
	t.Helper()
	select {
	case m := <-l.Messages():
		t.Fatalf("unexpected message on %s (%s)", m.Topic, m.Kind)
	case <-time.After(d):
	}
}

func statusOf(t *testing.T, m mqtt.Message) link.Status {
	t.Helper()
	var s link.Status
	if err := json.Unmarshal(m.Payload(), &s); err != nil {
		t.Fatalf("status %q: %v", m.Payload(), err)
	}
	return s
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(m.Run())
}
