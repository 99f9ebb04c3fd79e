package screen_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/media/gate"
)

// fakeUnit is the appliance as the screen reads it; its gate, when set, is
// the real one the media is behind.
type fakeUnit struct {
	mu   sync.Mutex
	st   appliance.Status
	g    *gate.Gate
	subs map[chan appliance.Event]struct{}
}

func newFakeUnit(st appliance.Status, g *gate.Gate) *fakeUnit {
	return &fakeUnit{st: st, g: g, subs: map[chan appliance.Event]struct{}{}}
}

func (u *fakeUnit) Status() appliance.Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.st
	if u.g != nil {
		st.Gate = u.g.State()
	}
	return st
}

func (u *fakeUnit) Subscribe(n int) (<-chan appliance.Event, func()) {
	ch := make(chan appliance.Event, n)
	u.mu.Lock()
	u.subs[ch] = struct{}{}
	u.mu.Unlock()
	return ch, func() {
		u.mu.Lock()
		delete(u.subs, ch)
		u.mu.Unlock()
	}
}

func testLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startServer serves the screen on a fresh loopback port and returns the
// page's URL.
func startServer(t testing.TB, cfg screen.Config) string {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testLog()
	}
	l, err := screen.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := screen.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s.URL(l)
}

// publish sends ev to the subscribers, as the machine does.
func (u *fakeUnit) publish(ev appliance.Event) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for ch := range u.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}
