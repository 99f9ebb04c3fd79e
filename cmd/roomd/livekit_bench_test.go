package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/internal/farend"
)

// BenchmarkJoinToFarEndFrame: JOIN pressed on the unit (button edge, 30 ms
// debounce included) → the patient's browser shows the room (room-*), and
// → its first picture of any kind, the privacy slate (slate-*). The room
// waits for the simulated shutter (300 ms travel) to be confirmed open.
// Times are taken when the far end's report arrives (every 20 ms).
// A fresh far end joins the room before each press, so browser start-up is
// not counted. Reports p50 and p95 over the iterations, and beside them a
// bare WHIP publisher's offer → painted frame against the same server.
// isRoom: the far end has analysed a frame and it is the moving camera
// picture, not the slate (the pixel fields are zero until a frame is analysed).
func isRoom(s farend.FarEndStats) bool {
	return s.FramesPresented > 0 && s.LastFrameMeanRGB != [3]float64{} &&
		!s.LastFrameIsUniform && !nearSlate(s.LastFrameMeanRGB)
}

func BenchmarkJoinToFarEndFrame(b *testing.B) {
	lk := farend.StartLiveKit(b)
	u := startUnit(b, livekitConfig(lk, "bench-room", ""))
	var lat, first, bareFirst, barePage []time.Duration
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

		// The yardstick, same server, same run: a bare WHIP publisher.
		bare := farend.StartFarEnd(b, lk, "bench-room", "patient-bare", farend.Watch("bare"), farend.ReportInterval(20*time.Millisecond))
		ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
		if _, err := bare.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected }); err != nil {
			b.Fatalf("far end did not connect: %v", err)
		}
		start, stop := bareWHIPPublish(b, lk, "bench-room", "bare")
		s, err = bare.WaitFor(ctx, func(s farend.FarEndStats) bool {
			return s.VideoFramesDecoded > 0 && !s.FirstFrameAt.IsZero() && !s.FirstFramePageAt.IsZero()
		})
		cancel()
		if err != nil {
			b.Fatalf("bare publisher %d: no frame at the far end: %v", i, err)
		}
		bareFirst = append(bareFirst, s.FirstFrameAt.Sub(start))
		barePage = append(barePage, s.FirstFramePageAt.Sub(start))
		stop()
		bare.Close()
		b.StartTimer()
	}
	for _, l := range [][]time.Duration{lat, first, bareFirst, barePage} {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	}
	// The yardstick measured like slate-*: offer/POST → the report showing
	// the first decoded frame; and → the first painted frame (page clock).
	b.ReportMetric(float64(bareFirst[len(bareFirst)/2].Milliseconds()), "bare-whip-p50-ms")
	b.ReportMetric(float64(bareFirst[(len(bareFirst)*95)/100].Milliseconds()), "bare-whip-p95-ms")
	b.ReportMetric(float64(barePage[len(barePage)/2].Milliseconds()), "bare-whip-painted-p50-ms")
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "room-p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*95)/100].Milliseconds()), "room-p95-ms")
	b.ReportMetric(float64(first[len(first)/2].Milliseconds()), "slate-p50-ms")
	b.ReportMetric(float64(first[(len(first)*95)/100].Milliseconds()), "slate-p95-ms")
}

// BenchmarkCallResources: `roomd --sim` as a process in a LiveKit call
// (640x480@30 openh264 + opus, a Chromium far end watching): resident memory
// and CPU over 5 s of call, per iteration.
func BenchmarkCallResources(b *testing.B) { callResources(b, "livekit-whip", 1) }

// BenchmarkCallResources3Party: the same on connector "livekit" in a
// 3-party call: two far ends publishing camera and microphone, the unit
// sending, receiving both, mixing both voices (null speaker) and counting
// both pictures. It fails unless both far ends decode the unit's video and
// the unit decodes both far ends' video, at the end of the measured time.
func BenchmarkCallResources3Party(b *testing.B) { callResources(b, "livekit", 2) }

func callResources(b *testing.B, connector string, farEnds int) {
	lk := farend.StartLiveKit(b)
	dir := b.TempDir()
	bin := filepath.Join(dir, "roomd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "roomd.toml")
	if err := os.WriteFile(cfgPath, []byte(connectorConfig(connector, lk, "res-room", "")), 0o600); err != nil {
		b.Fatal(err)
	}
	// Each far end measures the unit's video, not another far end's.
	opts := []farend.Option{farend.Watch("unit-1")}
	if farEnds > 1 {
		opts = append(opts, farend.Publish())
	}
	fes := []*farend.FarEnd{farend.StartFarEnd(b, lk, "res-room", "patient", opts...)}
	for i := 1; i < farEnds; i++ {
		fes = append(fes, farend.StartFarEnd(b, lk, "res-room", fmt.Sprintf("relative-%d", i), opts...))
	}
	sock := filepath.Join(dir, "s.sock")
	cmd := exec.Command(bin, "--sim", "--config", cfgPath, "--socket", sock, "--http", "off")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	api := localapi.Dial(sock)
	deadline := time.Now().Add(10 * time.Second)
	for api.Press(context.Background(), "join", 60) != nil {
		if time.Now().After(deadline) {
			b.Fatal("roomd never answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, fe := range fes {
		if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.FPS >= 20 }); err != nil {
			b.Fatalf("far end %s never got the call: %v; last %s", fe.Identity, err, fe.Stats())
		}
	}
	if farEnds > 1 {
		unitShows(ctx, b, api, farEnds)
	}
	pid := cmd.Process.Pid
	var rssKB, cpuPct float64
	for b.Loop() { // each iteration: 5 s of the same call
		t0, c0 := time.Now(), cpuTicks(b, pid)
		time.Sleep(5 * time.Second)
		c1 := cpuTicks(b, pid)
		cpuPct += float64(c1-c0) / 100 / time.Since(t0).Seconds() * 100 // USER_HZ = 100
		rssKB += float64(vmRSS(b, pid))
	}
	// What the call carried, checked at the end of the measured time: each
	// far end decodes the unit's video, and the unit both far ends'.
	minFar := math.Inf(1)
	for _, fe := range fes {
		s := fe.Stats()
		if s.VideoFrom != "unit-1" || s.VideoFramesDecoded == 0 || s.FPS < 20 {
			b.Fatalf("far end %s was not decoding the unit's video at the end: %s", fe.Identity, s)
		}
		minFar = min(minFar, s.FPS)
		b.Logf("far end %s: %d frames of the unit's video decoded, %.0f fps", fe.Identity, s.VideoFramesDecoded, s.FPS)
	}
	b.ReportMetric(rssKB/float64(b.N)/1024, "call-RSS-MB")
	b.ReportMetric(cpuPct/float64(b.N), "call-CPU-%")
	b.ReportMetric(minFar, "far-end-min-fps")
	if farEnds > 1 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b.ReportMetric(unitShows(ctx, b, api, farEnds), "unit-min-remote-fps")
	}
}

// unitShows waits until the unit (roomd's status) decodes video from n far
// ends, and returns the lowest frame rate among them.
func unitShows(ctx context.Context, b *testing.B, api *localapi.Client, n int) float64 {
	b.Helper()
	var st status
	for {
		st = status{}
		if err := api.Status(ctx, &st); err != nil {
			b.Fatalf("unit status: %v", err)
		}
		low, who := math.Inf(1), map[string]uint64{}
		if st.Remote != nil {
			for _, v := range st.Remote.Video {
				if !v.Ended && v.Frames > 0 && v.FPS > 0 {
					who[v.Participant] = v.Frames
					low = min(low, v.FPS)
				}
			}
		}
		if len(who) >= n {
			b.Logf("the unit decodes %d far ends' video (frames by pseudonym %v), lowest %.0f fps", len(who), who, low)
			return low
		}
		select {
		case <-ctx.Done():
			b.Fatalf("the unit decodes video from %d of %d far ends: %+v", len(who), n, st.Remote)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cpuTicks is utime+stime of pid in clock ticks.
func cpuTicks(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// isSlate: the far end's latest analysed frame is the privacy slate.
func isSlate(s farend.FarEndStats) bool {
	return s.FramesPresented > 0 && s.LastFrameIsUniform && nearSlate(s.LastFrameMeanRGB)
}

// BenchmarkPrivacyToFarEndSlate: PRIVACY pressed (button edge, 30 ms
// debounce included) → the patient's browser no longer shows the room but
// the slate. Times are taken when the far end's report arrives (every 20 ms).
func BenchmarkPrivacyToFarEndSlate(b *testing.B) {
	lk := farend.StartLiveKit(b)
	u := startUnit(b, livekitConfig(lk, "privacy-room", ""))
	fe := farend.StartFarEnd(b, lk, "privacy-room", "patient", farend.ReportInterval(20*time.Millisecond))
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	var lat []time.Duration
	for b.Loop() {
		b.StopTimer()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if _, err := fe.WaitFor(ctx, isRoom); err != nil {
			cancel()
			b.Fatalf("far end does not show the room: %v", err)
		}
		time.Sleep(300 * time.Millisecond) // settle on the room
		b.StartTimer()
		press := time.Now()
		u.press("privacy")
		_, err := fe.WaitFor(ctx, isSlate)
		lat = append(lat, time.Since(press))
		b.StopTimer()
		if err != nil {
			cancel()
			b.Fatalf("far end still shows the room after PRIVACY: %v", err)
		}
		// Back on for the next round, once the release has registered: a
		// re-press inside the release's debounce would be (rightly) a bounce.
		u.waitFor("privacy released", 5*time.Second, func(e appliance.Event) bool { return e.Type == "button" && e.Detail == "privacy:up" })
		time.Sleep(100 * time.Millisecond)
		u.press("privacy")
		u.waitFor("video back", 10*time.Second, func(e appliance.Event) bool { return e.Type == "gate" && e.Gate.Video })
		cancel()
		b.StartTimer()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*95)/100].Milliseconds()), "p95-ms")
}
