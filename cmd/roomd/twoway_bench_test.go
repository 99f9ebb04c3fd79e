package main

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
)

func p50(l []time.Duration) float64 {
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return float64(l[len(l)/2].Milliseconds())
}

func p95(l []time.Duration) float64 {
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return float64(l[(len(l)*95)/100].Milliseconds())
}

// BenchmarkJoinConnectors: JOIN pressed → the patient's browser shows the
// unit's first frame (the slate) and then the room, on the WHIP connector
// and on LiveKit's own signalling, against the same server in the same run.
// A fresh far end waits in the room before each press.
func BenchmarkJoinConnectors(b *testing.B) {
	lk := farend.StartLiveKit(b)
	for _, connector := range []string{"livekit-whip", "livekit"} {
		b.Run(connector, func(b *testing.B) {
			room := "bench-" + connector
			u := startUnit(b, connectorConfig(connector, lk, room, ""))
			var first, lat []time.Duration
			for b.Loop() {
				b.StopTimer()
				fe := farend.StartFarEnd(b, lk, room, "patient", farend.ReportInterval(20*time.Millisecond))
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected }); err != nil {
					b.Fatalf("far end did not connect: %v", err)
				}
				b.StartTimer()
				press := time.Now()
				u.press("join")
				s, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.VideoFramesDecoded > 0 && !s.FirstFrameAt.IsZero() })
				if err != nil {
					b.Fatalf("no frame at the far end: %v", err)
				}
				first = append(first, s.FirstFrameAt.Sub(press))
				if _, err = fe.WaitFor(ctx, isRoom); err != nil {
					b.Fatalf("the room never appeared: %v", err)
				}
				lat = append(lat, time.Since(press))
				cancel()
				b.StopTimer()
				u.press("leave")
				u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
				fe.Close()
				b.StartTimer()
			}
			b.ReportMetric(p50(first), "slate-p50-ms")
			b.ReportMetric(p95(first), "slate-p95-ms")
			b.ReportMetric(p50(lat), "room-p50-ms")
			b.ReportMetric(p95(lat), "room-p95-ms")
		})
	}
}

// BenchmarkFarEndJoinToUnitFrame: the unit is in the call; a far end joins
// and publishes. Measured: its page reporting "published" (camera and mic
// up, 20 ms reports) → the unit's first whole remote keyframe; and the
// browser process start → the same frame.
func BenchmarkFarEndJoinToUnitFrame(b *testing.B) {
	lk := farend.StartLiveKit(b)
	u := startUnit(b, connectorConfig("livekit", lk, "bench-remote", "")+"\n[call]\nleave_when_alone = \"0s\"\n")
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	var fromPublish, fromStart []time.Duration
	i := 0
	for b.Loop() {
		i++
		start := time.Now()
		fe := farend.StartFarEnd(b, lk, "bench-remote", fmt.Sprintf("patient-%d", i), farend.Publish(), farend.ReportInterval(20*time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		pub, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Published })
		if err != nil {
			b.Fatalf("far end did not publish: %v", err)
		}
		evs := u.waitFor("participant joined", 20*time.Second, isParticipant("joined"))
		who := evs[len(evs)-1].Participant
		deadline := time.Now().Add(20 * time.Second)
		for {
			v := remoteVideo(u.status(), who)
			if v.Frames > 0 {
				fromPublish = append(fromPublish, v.FirstFrameAt.Sub(pub.ReceivedAt))
				fromStart = append(fromStart, v.FirstFrameAt.Sub(start))
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("the unit never showed far end %d", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		b.StopTimer()
		fe.Close()
		u.waitFor("participant left", 20*time.Second, isParticipant("left"))
		b.StartTimer()
	}
	b.ReportMetric(p50(fromPublish), "published-to-unit-frame-p50-ms")
	b.ReportMetric(p95(fromPublish), "published-to-unit-frame-p95-ms")
	b.ReportMetric(p50(fromStart), "browser-start-to-unit-frame-p50-ms")
}
