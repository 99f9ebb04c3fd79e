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
// debounce included) → the patient's browser shows the room (room-*), and
// → its first picture of any kind, the privacy slate (slate-*). The room
// waits for the simulated shutter (300 ms travel) to be confirmed open.
// Times are taken when the far end's report arrives (every 20 ms).
// A fresh far end joins the room before each press, so browser start-up is
// not counted. Reports p50 and p95 over the iterations.
// isRoom: the far end has analysed a frame and it is the moving camera
// picture, not the slate (the pixel fields are zero until a frame is analysed).
func isRoom(s farend.FarEndStats) bool {
	return s.FramesPresented > 0 && s.LastFrameMeanRGB != [3]float64{} &&
		!s.LastFrameIsUniform && !nearSlate(s.LastFrameMeanRGB)
}

func BenchmarkJoinToFarEndFrame(b *testing.B) {
	lk := farend.StartLiveKit(b)
	u := startUnit(b, livekitConfig(lk, "bench-room", ""))
	var lat, first []time.Duration
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
		if err != nil {
			cancel()
			b.Fatalf("join %d: no frame at the far end: %v", i, err)
		}
		first = append(first, s.FirstFrameAt.Sub(press))
		// The first picture is the privacy slate (sent while the shutter
		// opens); the room appears once the shutter is confirmed open.
		_, err = fe.WaitFor(ctx, isRoom)
		cancel()
		if err != nil {
			b.Fatalf("join %d: the room never appeared at the far end: %v", i, err)
		}
		lat = append(lat, time.Since(press))
		b.StopTimer()
		u.press("leave")
		u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
		fe.Close()
		b.StartTimer()
	}
	for _, l := range [][]time.Duration{lat, first} {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	}
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "room-p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*95)/100].Milliseconds()), "room-p95-ms")
	b.ReportMetric(float64(first[len(first)/2].Milliseconds()), "slate-p50-ms")
	b.ReportMetric(float64(first[(len(first)*95)/100].Milliseconds()), "slate-p95-ms")
}
