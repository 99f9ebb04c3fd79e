package screen_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/screentest"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/gate"
)

// stampReaderJS reads the far end's draw-time stamp (media/capture/stamp.go
// layout) off every frame the first tile presents, and keeps the ages
// (Date.now at presentation minus the stamp: the same host clock).
const stampReaderJS = `(() => {
  const B = 40, BITS = 30, MOD = 2 ** BITS;
  const crc8 = (v) => { let c = 0; for (const b of [(v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255]) { c ^= b;
    for (let i = 0; i < 8; i++) c = c & 0x80 ? ((c << 1) ^ 0x07) & 255 : (c << 1) & 255; } return c; };
  const v = document.querySelector('.tile:not([hidden]) video');
  const cv = document.createElement('canvas'), x = cv.getContext('2d', {willReadFrequently: true});
  const st = window.__g2g = {ages: [], read: 0, valid: 0};
  function read() {
    const vw = v.videoWidth, vh = v.videoHeight, bw = vw / B; if (bw < 2 || vh < bw) return -1;
    const sh = Math.ceil(bw); if (cv.width !== vw || cv.height !== sh) { cv.width = vw; cv.height = sh; }
    x.drawImage(v, 0, 0, vw, sh, 0, 0, vw, sh); const d = x.getImageData(0, 0, vw, sh).data;
    const y0 = Math.floor(bw / 4), y1 = Math.floor(3 * bw / 4 + 0.5), lum = [];
    for (let i = 0; i < B; i++) { const x0 = Math.floor(i * bw + bw / 4), x1 = Math.floor(i * bw + 3 * bw / 4 + 0.5); let s = 0, n = 0;
      for (let y = y0; y < y1; y++) for (let xx = x0; xx < x1; xx++) { const p = (y * vw + xx) * 4; s += 0.299 * d[p] + 0.587 * d[p + 1] + 0.114 * d[p + 2]; n++; }
      lum.push(s / n); }
    const w = lum[0], k = lum[1], ct = w - k; if (ct < 64) return -1;
    const thr = (w + k) / 2, m = ct / 4, bits = [];
    for (const l of lum) { if (l > thr + m) bits.push(1); else if (l < thr - m) bits.push(0); else return -1; }
    let val = 0, crc = 0; for (let i = 0; i < BITS; i++) val = val * 2 + bits[2 + i]; for (let i = 0; i < 8; i++) crc = crc * 2 + bits[2 + BITS + i];
    return crc === crc8(val) ? val : -1;
  }
  const cb = () => { st.read++; const ms = read(); if (ms >= 0) { st.valid++; let a = (Date.now() % MOD - ms + MOD) % MOD; if (a >= MOD / 2) a -= MOD; st.ages.push(a); }
    v.requestVideoFrameCallback(cb); };
  v.requestVideoFrameCallback(cb);
  return true; })()`

type g2gStats struct {
	Ages  []float64 `json:"ages"`
	Read  int       `json:"read"`
	Valid int       `json:"valid"`
}

// BenchmarkFarEndToScreenGlassToGlass is the far end's camera to the unit's
// screen: a far end (Chromium) draws its picture with the draw time
// stamped in, publishes it through real LiveKit to the unit (RTCCall,
// playout's depacketiser), which hands it to the screen page (display,
// loopback WebRTC); the screen's Chromium reads the stamp off each frame it
// presents. One iteration is one frame read.
func BenchmarkFarEndToScreenGlassToGlass(b *testing.B) {
	lk := farend.StartLiveKit(b)
	g := gate.New()
	disp, err := display.New(display.Config{Gate: g, Log: testLog()})
	if err != nil {
		b.Fatal(err)
	}
	defer disp.Close()
	call := joinRTC(b, lk, "g2g", g, disp.FarFrame, nil)
	disp.SetFarEnd(&display.FarEnd{Keyframe: call.RequestKeyframe, Speaking: call.Playout().Speaking})
	u := newFakeUnit(appliance.Status{State: appliance.InCall, Since: time.Now(), Shutter: "open"}, g)
	url := startServer(b, screen.Config{Room: "Room 3", Unit: u, Media: disp})
	sc := screentest.Start(b, url, 1280, 720)
	waitPages(b, disp, 1)
	fe := farend.StartFarEnd(b, lk, "g2g", "patient", farend.PublishStamped())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Published }); err != nil {
		b.Fatalf("far end did not publish: %v", err)
	}
	published := time.Now()
	screentest.MovingTiles(b, sc, 1, 20*time.Second)
	first := time.Since(published)
	time.Sleep(time.Second) // rate control and the jitter buffers settle
	sc.Eval(stampReaderJS, nil)
	var st g2gStats
	next := func() {
		n := st.Valid
		deadline := time.Now().Add(10 * time.Second)
		for st.Valid <= n {
			if time.Now().After(deadline) {
				b.Fatalf("no more stamped frames on the screen (read %d, valid %d)", st.Read, st.Valid)
			}
			time.Sleep(20 * time.Millisecond)
			sc.Eval(`window.__g2g`, &st)
		}
	}
	start := time.Now()
	cpu0, _ := sc.Usage()
	for b.Loop() {
		next()
	}
	for len(st.Ages) < 200 || time.Since(start) < 10*time.Second {
		next()
	}
	cpu1, rss := sc.Usage()
	b.ReportMetric(100*float64(cpu1-cpu0)/float64(time.Since(start)), "kiosk-cpu-%")
	b.ReportMetric(float64(rss)/(1<<20), "kiosk-pss-MB")
	ages := slices.Clone(st.Ages)
	slices.Sort(ages)
	b.ReportMetric(ages[len(ages)/2], "g2g-p50-ms")
	b.ReportMetric(ages[len(ages)*95/100], "g2g-p95-ms")
	b.ReportMetric(float64(len(ages)), "samples")
	b.ReportMetric(100*float64(st.Valid)/float64(max(1, st.Read)), "valid-%")
	b.ReportMetric(float64(first.Milliseconds()), "publish-to-screen-ms")
}
