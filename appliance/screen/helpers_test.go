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

// set changes the status and tells the subscribers, as the machine does.
func (u *fakeUnit) set(f func(*appliance.Status)) {
	u.mu.Lock()
	f(&u.st)
	for ch := range u.subs {
		select {
		case ch <- appliance.Event{Type: "state"}:
		default:
		}
	}
	u.mu.Unlock()
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

// tileJS reads every shown tile: who it shows, whether it waits for a
// frame, and its pixels (64x36 through a canvas: what the glass shows).
const pixelsJS = `const px = (v) => { const c = document.createElement('canvas'); c.width = 64; c.height = 36;
  const x = c.getContext('2d'); x.drawImage(v, 0, 0, 64, 36); const d = x.getImageData(0, 0, 64, 36).data;
  let s = 0, s2 = 0, h = 0; for (let i = 0; i < d.length; i += 4) { const y = (d[i] * 3 + d[i + 1] * 6 + d[i + 2]) / 10; s += y; s2 += y * y; h = (h * 31 + (y >> 2)) | 0; }
  const n = d.length / 4, m = s / n; return {std: Math.sqrt(Math.max(0, s2 / n - m * m)), mean: m, hash: h, w: v.videoWidth, h: v.videoHeight}; };`

const tilesJS = `(() => { ` + pixelsJS + `
  const out = [];
  for (const t of document.querySelectorAll('.tile')) { if (t.hidden) continue; const v = t.querySelector('video');
    const r = {slot: +t.dataset.slot, participant: t.dataset.participant || '', waiting: v.classList.contains('waiting'), speaking: t.classList.contains('speaking')};
    if (!r.waiting && v.videoWidth) Object.assign(r, px(v)); out.push(r); }
  return out; })()`

const selfJS = `(() => { ` + pixelsJS + `
  const s = document.getElementById('self'), v = s.querySelector('video');
  const r = {closed: s.classList.contains('closed'), waiting: v.classList.contains('waiting'), placeholder: document.getElementById('self-closed').textContent};
  if (v.videoWidth) Object.assign(r, px(v)); return r; })()`

type tileView struct {
	Slot        int     `json:"slot"`
	Participant string  `json:"participant"`
	Waiting     bool    `json:"waiting"`
	Speaking    bool    `json:"speaking"`
	Std         float64 `json:"std"`
	Mean        float64 `json:"mean"`
	Hash        int64   `json:"hash"`
	W           int     `json:"w"`
	H           int     `json:"h"`
}

type selfView struct {
	Closed      bool    `json:"closed"`
	Waiting     bool    `json:"waiting"`
	Placeholder string  `json:"placeholder"`
	Std         float64 `json:"std"`
	Mean        float64 `json:"mean"`
	Hash        int64   `json:"hash"`
	W           int     `json:"w"`
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
