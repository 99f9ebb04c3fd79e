package livekit_test

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

func joinRTC(t *testing.T, lk *farend.LiveKit, room string, n transport.Net, opt livekit.RTCOptions) (*livekit.RTCCall, *gate.Gate) {
	t.Helper()
	call, g, _ := joinRTCConn(t, lk, room, n, opt)
	return call, g
}

// joinRTCConn is joinRTC that also returns the connector (its Counters say
// what reached the encoders).
func joinRTCConn(t *testing.T, lk *farend.LiveKit, room string, n transport.Net, opt livekit.RTCOptions) (*livekit.RTCCall, *gate.Gate, *livekit.RTCConnector) {
	t.Helper()
	g := gate.New()
	if opt.Speaker == "" {
		opt.Speaker = playout.DeviceNull // no sound card here
	}
	conn, err := livekit.NewRTC(livekit.Config{
		URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret,
		Net: n, DisconnectGrace: 15 * time.Second,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice},
		opt, g, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() { _ = call.Leave(context.Background()) })
	g.Set(gate.State{Video: true, Audio: true})
	return call, g, conn
}

func waitPlayout(t *testing.T, call *livekit.RTCCall, what string, d time.Duration, cond func(playout.Stats) bool) playout.Stats {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := call.Playout().Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("unit: %s: not within %s; last %+v", what, d, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func videoFrom(s playout.Stats, who string) playout.VideoStats {
	for _, v := range s.Video {
		if v.Participant == who && !v.Ended {
			return v
		}
	}
	return playout.VideoStats{}
}

func nextPresence(t *testing.T, call *livekit.RTCCall, d time.Duration) media.Presence {
	t.Helper()
	select {
	case p := <-call.Presence():
		return p
	case <-time.After(d):
		t.Fatalf("no presence event within %s", d)
	}
	return media.Presence{}
}

// The unit joins an empty room; the patient joins later and publishes; the
// unit plays their sound and shows their picture. An interpreter joins and
// leaves; the unit hears of each by pseudonym only. The patient sees the
// unit throughout.
func TestRTCTwoWayCall(t *testing.T) {
	lk := farend.StartLiveKit(t)
	call, _ := joinRTC(t, lk, "two-way", nil, livekit.RTCOptions{})
	if n := call.Others(); n != 0 {
		t.Fatalf("empty room: %d others", n)
	}
	time.Sleep(2 * time.Second) // the patient comes later
	patient := farend.StartFarEnd(t, lk, "two-way", "patient-Jane-Doe", farend.Publish())
	joined := time.Now()
	p := nextPresence(t, call, 20*time.Second)
	if !p.Joined || p.Others != 1 || strings.Contains(p.Participant, "Jane") || strings.Contains(p.Participant, "patient") {
		t.Fatalf("presence %+v: want one joined, by pseudonym", p)
	}
	s := waitPlayout(t, call, "show the patient's moving picture and play their sound", 20*time.Second, func(s playout.Stats) bool {
		v := videoFrom(s, p.Participant)
		return v.Frames > 30 && v.FPS >= 15 && s.EnergyPeak > 0.01
	})
	v := videoFrom(s, p.Participant)
	t.Logf("far-end join → first remote frame on the unit: %s", v.FirstFrameAt.Sub(joined).Round(time.Millisecond))
	t.Logf("unit plays: %d frames %.0f fps %dx%d; speaker %q energy peak %.3f", v.Frames, v.FPS, v.Width, v.Height, s.Device, s.EnergyPeak)
	if v.Width != 640 || v.Height != 360 {
		t.Errorf("remote picture %dx%d, want 640x360", v.Width, v.Height)
	}
	farWaitT(t, patient, "the patient sees and hears the unit", 20*time.Second, func(s farend.FarEndStats) bool {
		return s.VideoFrom == "unit-1" && s.FPS >= 15 && s.AudioEnergyPeak > 0.01
	})

	interp := farend.StartFarEnd(t, lk, "two-way", "interpreter", farend.Publish())
	p2 := nextPresence(t, call, 20*time.Second)
	if !p2.Joined || p2.Others != 2 || p2.Participant == p.Participant {
		t.Fatalf("interpreter presence %+v", p2)
	}
	waitPlayout(t, call, "show the interpreter too, and mix both voices", 20*time.Second, func(s playout.Stats) bool {
		return videoFrom(s, p2.Participant).Frames > 10 && s.AudioSources == 2
	})
	if err := interp.Leave(); err != nil {
		t.Fatal(err)
	}
	p3 := nextPresence(t, call, 20*time.Second)
	if p3.Joined || p3.Participant != p2.Participant || p3.Others != 1 {
		t.Fatalf("interpreter leaving: %+v", p3)
	}
	if ps, _ := lk.Participants(context.Background(), "two-way"); !slices.Contains(ps, "unit-1") {
		t.Fatalf("unit not in the room: %v", ps)
	}
}

// twoWay is a call between the unit and a publishing patient, each seeing
// the other; every far-end report is watched for the unit leaving.
type twoWay struct {
	call *livekit.RTCCall
	fe   *farend.FarEnd
	who  string // the patient's pseudonym on the unit
	pr   presence
}

// startTwoWay brings the patient into the unit's call and waits until each
// side shows the other.
func startTwoWay(t *testing.T, lk *farend.LiveKit, room string, call *livekit.RTCCall) *twoWay {
	t.Helper()
	w := &twoWay{call: call, fe: farend.StartFarEnd(t, lk, room, "patient", farend.Publish(), farend.Watch("unit-1"), farend.ReportInterval(100*time.Millisecond))}
	w.watch(t, 20*time.Second, "sees the unit's video", func(s farend.FarEndStats) bool { return s.FPS >= 20 })
	w.who = nextPresence(t, call, 5*time.Second).Participant
	waitPlayout(t, call, "show the patient", 20*time.Second, func(s playout.Stats) bool { return videoFrom(s, w.who).FPS >= 15 })
	return w
}

func (w *twoWay) watch(t *testing.T, d time.Duration, what string, cond func(farend.FarEndStats) bool) farend.FarEndStats {
	t.Helper()
	return farWaitT(t, w.fe, what, d, func(s farend.FarEndStats) bool { w.pr.observe(s); return cond(s) })
}

func farWaitT(t *testing.T, fe *farend.FarEnd, what string, d time.Duration, cond func(farend.FarEndStats) bool) farend.FarEndStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	s, err := fe.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("far end: %s: %v; last %s", what, err, fe.Stats())
	}
	return s
}

// A 3 s network break: the far end's picture freezes and comes back, and
// the far end never sees the unit leave; the unit's picture of the far end
// comes back too.
func TestRTCNetworkBreakResumes(t *testing.T) {
	lk := farend.StartLiveKit(t)
	var cut atomic.Bool
	sys, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	call, _ := joinRTC(t, lk, "break", cutNet{Net: sys, cut: &cut}, livekit.RTCOptions{})
	w := startTwoWay(t, lk, "break", call)
	who, pr := w.who, &w.pr
	watch := func(d time.Duration, what string, cond func(farend.FarEndStats) bool) farend.FarEndStats {
		t.Helper()
		return w.watch(t, d, what, cond)
	}

	cut.Store(true)
	t0 := time.Now()
	watch(8*time.Second, "picture freezes during the break", func(s farend.FarEndStats) bool { return s.FPS < 5 })
	for time.Since(t0) < 3*time.Second {
		watch(3*time.Second, "report during the break", func(farend.FarEndStats) bool { return true })
	}
	cut.Store(false)
	restored := time.Now()
	s := watch(20*time.Second, "picture back after the break", func(s farend.FarEndStats) bool { return s.FPS >= 15 })
	t.Logf("reconnect: far end's picture back %s after the network came back (ICE restarts %d, resumes %d)",
		s.ReceivedAt.Sub(restored).Round(time.Millisecond), call.Restarts(), call.Resumes())
	waitPlayout(t, call, "the patient's picture back on the unit", 20*time.Second, func(s playout.Stats) bool {
		v := videoFrom(s, who)
		return v.FPS >= 15 && v.LastFrameAt.After(restored)
	})
	if pr.gone() {
		t.Fatal("the far end saw the unit leave during the break")
	}
	select {
	case err := <-call.Ended():
		t.Fatalf("the call ended: %v", err)
	default:
	}
}

// BenchmarkRTCReconnect: a 3 s network break (every UDP packet dropped),
// then: network back → the far end decodes at >= 15 fps again, and → the
// unit's first remote frame, and its 15 frames within a second. The far end must never see the
// unit leave.
func BenchmarkRTCReconnect(b *testing.B) {
	lk := farend.StartLiveKit(b)
	var cut atomic.Bool
	sys, err := stdnet.NewNet()
	if err != nil {
		b.Fatal(err)
	}
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{
		URL: lk.URL, Room: "bench-break", Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret,
		Net: cutNet{Net: sys, cut: &cut}, DisconnectGrace: 15 * time.Second,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice},
		livekit.RTCOptions{Speaker: playout.DeviceNull}, g, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	call, err := conn.Join(ctx)
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = call.Leave(context.Background()) }()
	g.Set(gate.State{Video: true, Audio: true})
	fe := farend.StartFarEnd(b, lk, "bench-break", "patient", farend.Publish(), farend.ReportInterval(20*time.Millisecond))
	var pr presence
	wait := func(d time.Duration, what string, cond func(farend.FarEndStats) bool) farend.FarEndStats {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		s, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { pr.observe(s); return cond(s) })
		if err != nil {
			b.Fatalf("far end: %s: %v", what, err)
		}
		return s
	}
	unitShows := func(after time.Time, fps float64) time.Time {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			for _, v := range call.Playout().Stats().Video {
				if !v.Ended && v.FPS >= fps && v.LastFrameAt.After(after) {
					return v.LastFrameAt
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.Fatal("the unit does not show the far end")
		return time.Time{}
	}
	wait(20*time.Second, "sees the unit", func(s farend.FarEndStats) bool { return s.FPS >= 20 })
	unitShows(time.Now(), 15)
	var far, unit, unitSteady []time.Duration
	for b.Loop() {
		cut.Store(true)
		time.Sleep(3 * time.Second)
		cut.Store(false)
		back := time.Now()
		s := wait(20*time.Second, "picture back", func(s farend.FarEndStats) bool { return s.ReceivedAt.After(back) && s.FPS >= 15 })
		far = append(far, s.ReceivedAt.Sub(back))
		unit = append(unit, unitShows(back, 1).Sub(back))
		unitSteady = append(unitSteady, unitShows(back, 15).Sub(back))
		b.StopTimer()
		time.Sleep(2 * time.Second) // steady again before the next break
		b.StartTimer()
	}
	if pr.gone() {
		b.Fatal("the far end saw the unit leave")
	}
	sort.Slice(far, func(i, j int) bool { return far[i] < far[j] })
	sort.Slice(unit, func(i, j int) bool { return unit[i] < unit[j] })
	sort.Slice(unitSteady, func(i, j int) bool { return unitSteady[i] < unitSteady[j] })
	b.ReportMetric(float64(far[len(far)/2].Milliseconds()), "far-end-back-p50-ms")
	b.ReportMetric(float64(far[len(far)-1].Milliseconds()), "far-end-back-max-ms")
	b.ReportMetric(float64(unit[len(unit)/2].Milliseconds()), "unit-first-frame-p50-ms")
	b.ReportMetric(float64(unitSteady[len(unitSteady)/2].Milliseconds()), "unit-15fps-p50-ms")
	b.ReportMetric(float64(call.Restarts()), "ice-restarts")
}
