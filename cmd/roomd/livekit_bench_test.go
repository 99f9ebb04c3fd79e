package main

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/media/farend"
)

// BenchmarkJoinToFarEndFrame: JOIN pressed on the unit (button edge, 30 ms
// debounce included) → the patient's browser has the unit's first frame.
// A fresh far end joins the room before each press, so browser start-up is
// not counted. Reports p50 and p95 over the iterations.
func BenchmarkJoinToFarEndFrame(b *testing.B) {
	lk := farend.StartLiveKit(b)
	u := startUnit(b, livekitConfig(lk, "bench-room", ""))
	var lat []time.Duration
	i := 0
	for b.Loop() {
		i++
		b.StopTimer()
		fe := farend.StartFarEnd(b, lk, "bench-room", "patient", farend.ReportInterval(20*time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected }); err != nil {
			b.Fatalf("far end did not connect: %v", err)
		}
		b.StartTimer()
		press := time.Now()
		u.press("join")
		s, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.VideoFramesDecoded > 0 && !s.FirstFrameAt.IsZero() })
		cancel()
		if err != nil {
			b.Fatalf("join %d: no frame at the far end: %v", i, err)
		}
		lat = append(lat, s.FirstFrameAt.Sub(press))
		b.StopTimer()
		u.press("leave")
		u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
		fe.Close()
		b.StartTimer()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*95)/100].Milliseconds()), "p95-ms")
}
