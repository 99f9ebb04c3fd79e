package screentest

import (
	"bytes"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
)

// pixelsJS reads a <video>'s pixels (64x36 through a canvas: what the glass
// shows): their luma spread, mean and a hash that changes as they move.
const pixelsJS = `const px = (v) => { const c = document.createElement('canvas'); c.width = 64; c.height = 36;
  const x = c.getContext('2d'); x.drawImage(v, 0, 0, 64, 36); const d = x.getImageData(0, 0, 64, 36).data;
  let s = 0, s2 = 0, h = 0; for (let i = 0; i < d.length; i += 4) { const y = (d[i] * 3 + d[i + 1] * 6 + d[i + 2]) / 10; s += y; s2 += y * y; h = (h * 31 + (y >> 2)) | 0; }
  const n = d.length / 4, m = s / n; return {std: Math.sqrt(Math.max(0, s2 / n - m * m)), mean: m, hash: h, w: v.videoWidth, h: v.videoHeight}; };`

// TilesJS reads every shown tile: who it shows, whether it waits for a
// frame, and its pixels. It evaluates to a []Tile.
const TilesJS = `(() => { ` + pixelsJS + `
  const out = [];
  for (const t of document.querySelectorAll('.tile')) { if (t.hidden) continue; const v = t.querySelector('video');
    const r = {slot: +t.dataset.slot, participant: t.dataset.participant || '', waiting: v.classList.contains('waiting'), speaking: t.classList.contains('speaking')};
    if (!r.waiting && v.videoWidth) Object.assign(r, px(v)); out.push(r); }
  return out; })()`

// SelfJS reads the self-view: closed (the placeholder shown), its words,
// and its pixels. It evaluates to a Self.
const SelfJS = `(() => { ` + pixelsJS + `
  const s = document.getElementById('self'), v = s.querySelector('video');
  const r = {closed: s.classList.contains('closed'), waiting: v.classList.contains('waiting'), placeholder: document.getElementById('self-closed').textContent};
  if (v.videoWidth) Object.assign(r, px(v)); return r; })()`

// Tile is one far end's tile as TilesJS reads it.
type Tile struct {
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

// Self is the self-view as SelfJS reads it.
type Self struct {
	Closed      bool    `json:"closed"`
	Waiting     bool    `json:"waiting"`
	Placeholder string  `json:"placeholder"`
	Std         float64 `json:"std"`
	Mean        float64 `json:"mean"`
	Hash        int64   `json:"hash"`
	W           int     `json:"w"`
}

// MovingTiles waits until the screen shows n tiles, each with a picture
// (not uniform) that changes: the far end's moving test pattern.
func MovingTiles(t testing.TB, sc *Browser, n int, d time.Duration) []Tile {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var a, b []Tile
		sc.Eval(TilesJS, &a)
		time.Sleep(250 * time.Millisecond)
		sc.Eval(TilesJS, &b)
		if len(a) == n && len(b) == n {
			ok := true
			seen := map[string]bool{}
			for i := range b {
				if b[i].Waiting || b[i].W == 0 || b[i].Std < farend.UniformStdDev || a[i].Hash == b[i].Hash || b[i].Participant == "" || seen[b[i].Participant] {
					ok = false
				}
				seen[b[i].Participant] = true
			}
			if ok {
				return b
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("screen: want %d tiles with a moving picture within %s; got %+v then %+v", n, d, a, b)
		}
	}
}

// WaitSelfRoom waits for the self-view to show a moving, non-uniform
// picture: the simulated camera's bars.
func WaitSelfRoom(t testing.TB, sc *Browser, d time.Duration) Self {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var a, b Self
		sc.Eval(SelfJS, &a)
		time.Sleep(150 * time.Millisecond)
		sc.Eval(SelfJS, &b)
		if !b.Closed && !b.Waiting && b.W > 0 && b.Std > farend.UniformStdDev && a.Hash != b.Hash {
			if std, _ := SelfGlass(t, sc); std > farend.UniformStdDev {
				return b
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("self-view: no moving room picture within %s; last %+v", d, b)
		}
	}
}

// SelfGlass reads the top strip of the self-view box off a screenshot
// (the placeholder's words are in its middle): its luma spread and mean.
func SelfGlass(t testing.TB, sc *Browser) (std, mean float64) {
	t.Helper()
	var r struct{ X, Y, W, H float64 }
	sc.Eval(`(() => { const b = document.getElementById('self').getBoundingClientRect(); return {X: b.x, Y: b.y, W: b.width, H: b.height}; })()`, &r)
	img, err := png.Decode(bytes.NewReader(sc.Screenshot()))
	if err != nil {
		t.Fatal(err)
	}
	// Inside the border, the top quarter.
	rect := image.Rect(int(r.X+r.W*0.1), int(r.Y+r.H*0.08), int(r.X+r.W*0.9), int(r.Y+r.H*0.25))
	var s, s2, n float64
	for y := rect.Min.Y; y < rect.Max.Y; y++ {
		for x := rect.Min.X; x < rect.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			l := (0.3*float64(cr) + 0.6*float64(cg) + 0.1*float64(cb)) / 257
			s += l
			s2 += l * l
			n++
		}
	}
	if n == 0 {
		t.Fatalf("self-view box %+v is empty", r)
	}
	mean = s / n
	return math.Sqrt(math.Max(0, s2/n-mean*mean)), mean
}

// SaveShot writes a screenshot to $KONSULT_SCREEN_SHOTS (docs' pictures).
func SaveShot(t testing.TB, sc *Browser, name string) {
	dir := os.Getenv("KONSULT_SCREEN_SHOTS")
	if dir == "" {
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name), sc.Screenshot(), 0o644); err != nil {
		t.Error(err)
	}
}
