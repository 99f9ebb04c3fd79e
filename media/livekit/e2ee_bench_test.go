package livekit_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

func benchJoin(b *testing.B, lk *farend.LiveKit, room string, key *e2ee.Key, stamp bool) (*livekit.RTCCall, *gate.Gate) {
	return benchJoinCodec(b, lk, room, "H264", key, stamp)
}

func benchJoinCodec(b *testing.B, lk *farend.LiveKit, room, codec string, key *e2ee.Key, stamp bool) (*livekit.RTCCall, *gate.Gate) {
	b.Helper()
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret},
		livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: codec, VideoBitRate: 1_000_000, AudioBitRate: 32_000,
			Camera: capture.TestDevice, Microphone: capture.TestDevice, E2EE: key, Stamp: stamp},
		livekit.RTCOptions{Speaker: playout.DeviceNull}, g, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	g.Set(gate.State{Video: true, Audio: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		b.Fatalf("join: %v", err)
	}
	return call, g
}

func sorted(d []time.Duration) []time.Duration { s := slices.Clone(d); slices.Sort(s); return s }

func p(d []time.Duration, q int) float64 {
	s := sorted(d)
	return float64(s[len(s)*q/100]) / float64(time.Millisecond)
}

// BenchmarkE2EEJoin: Join on the /rtc/v1 connector → the first picture of
// the room painted by a patient's page (livekit-client with the key
// already connected), end-to-end encrypted and clear alternately in one
// run; each op is one clear and one encrypted join (H.264, openh264).
func BenchmarkE2EEJoin(b *testing.B) {
	lk := farend.StartLiveKit(b)
	material := e2eeMaterial(5)
	key, _ := e2ee.NewKey(material)
	var clear, enc []time.Duration
	i := 0
	for b.Loop() {
		for _, k := range []*e2ee.Key{nil, key} {
			i++
			b.StopTimer()
			room := "bench-e2ee-join-" + string(rune('a'+i%26)) + time.Now().Format("150405.000")
			fe := farend.StartFarEnd(b, lk, room, "patient", farend.Watch("unit-1"), farend.E2EE(material), farend.ReportInterval(20*time.Millisecond))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected }); err != nil {
				b.Fatalf("far end did not connect: %v", err)
			}
			b.StartTimer()
			t0 := time.Now()
			call, _ := benchJoin(b, lk, room, k, false)
			_, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool {
				return s.FramesPresented > 0 && s.LastFrameMeanRGB != [3]float64{} && !s.LastFrameIsUniform
			})
			d := time.Since(t0)
			cancel()
			if err != nil {
				b.Fatalf("join %d: the room never appeared at the far end: %v", i, err)
			}
			b.StopTimer()
			if k == nil {
				clear = append(clear, d)
			} else {
				enc = append(enc, d)
			}
			_ = call.Leave(context.Background())
			fe.Close()
			b.StartTimer()
		}
	}
	b.ReportMetric(p(clear, 50), "clear-p50-ms")
	b.ReportMetric(p(enc, 50), "e2ee-p50-ms")
	b.ReportMetric(p(enc, 50)/p(clear, 50), "ratio-p50")
	b.ReportMetric(float64(len(enc)), "joins-each")
}

// BenchmarkE2EEGlassToGlass: the capture stamp drawn into the unit's
// picture → the patient's page paints the decoded frame and reads it back,
// clear against end-to-end encrypted (H.264 from openh264 and VP8 from
// libvpx, the same page with the key for both, its jitter buffer held
// low: farend.LowLatency). One call gives one median, and calls of one
// mode differ by more than the goal (≤ 2 ms), so each codec runs
// KONSULT_G2G_ROUNDS rounds (default 4) of a clear and an encrypted call
// in ABBA order, ~8 s of stamps each, and reports the median of the
// per-call medians per mode, their difference with the min..max of the
// rounds' paired differences and a bootstrap 90 % interval, and the far
// end's jitter-buffer delay per frame per mode. b.N is not used: one op
// is the whole schedule.
func BenchmarkE2EEGlassToGlass(b *testing.B) {
	lk := farend.StartLiveKit(b)
	rounds := 4
	if v := os.Getenv("KONSULT_G2G_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("KONSULT_G2G_ROUNDS=%q: want a whole number >= 1", v)
		}
		rounds = n
	}
	for _, codec := range []string{"H264", "VP8"} {
		b.Run(codec, func(b *testing.B) {
			for b.Loop() {
				e2eeGlassToGlass(b, lk, codec, rounds)
			}
		})
	}
}

// g2gCall is one call's figures: its median stamp age and what the far
// end's jitter buffer held per frame over the same window.
type g2gCall struct {
	encrypted bool
	median    time.Duration
	frames    int
	jb        farend.JitterBufferInterval
	// presented and stamp-read frames a second over the window: fewer
	// valid stamps than painted frames means pictures whose stamp did
	// not read back, fewer painted than 30 a second frames not shown.
	presentedFPS, validShare float64
	decodedFPS               float64 // frames out of the jitter buffer a second
	receivedFPS, droppedFPS  float64 // frames assembled, and dropped undecoded, a second
}

func e2eeGlassToGlass(b *testing.B, lk *farend.LiveKit, codec string, rounds int) {
	material := e2eeMaterial(6)
	key, _ := e2ee.NewKey(material)
	var calls []g2gCall
	for r := range rounds {
		order := []bool{false, true} // ABBA: a slow drift of the machine hits both modes alike
		if r%2 == 1 {
			order = []bool{true, false}
		}
		for _, encrypted := range order {
			c := g2gOneCall(b, lk, codec, material, key, encrypted, fmt.Sprintf("bench-g2g-%s-%d-%v", codec, r, encrypted))
			b.Logf("%s round %d encrypted=%v: median %.1f ms over %d frames (a second: %.1f received, %.1f dropped, %.1f decoded, %.1f painted; %.0f %% of stamps valid); jitter buffer %.1f ms/frame (target %.1f), processing %.1f ms, decode %.1f ms",
				codec, r, encrypted, ms(c.median), c.frames, c.receivedFPS, c.droppedFPS, c.decodedFPS, c.presentedFPS, 100*c.validShare, ms(c.jb.Delay), ms(c.jb.Target), ms(c.jb.Processing), ms(c.jb.Decode))
			calls = append(calls, c)
		}
	}
	reportG2G(b, calls)
}

func g2gOneCall(b *testing.B, lk *farend.LiveKit, codec string, material []byte, key *e2ee.Key, encrypted bool, room string) g2gCall {
	k := key
	if !encrypted {
		k = nil
	}
	fe := farend.StartFarEnd(b, lk, room, "patient", farend.Watch("unit-1"), farend.E2EE(material), farend.ReadStamps(),
		farend.LowLatency(), farend.ReportInterval(20*time.Millisecond))
	defer fe.Close()
	call, _ := benchJoinCodec(b, lk, room, codec, k, true)
	defer func() { _ = call.Leave(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.StampFramesValid > 10 }); err != nil {
		b.Fatalf("no stamped frames: %v", err)
	}
	if t := fe.Stats().VideoJitterBuffer.SetTarget; t == nil || *t != 0 {
		b.Fatalf("the far end's jitterBufferTarget is %v, not 0: LowLatency did not take effect", t)
	}
	time.Sleep(time.Second) // past the first frames' catch-up
	s0, n0, start := fe.Stats(), len(fe.StampLatencies()), time.Now()
	for len(fe.StampLatencies())-n0 < 200 || time.Since(start) < 8*time.Second {
		n := fe.Stats().StampFramesValid
		if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.StampFramesValid > n }); err != nil {
			b.Fatalf("no more stamped frames: %v", err)
		}
	}
	s1, ages, took := fe.Stats(), fe.StampLatencies()[n0:], time.Since(start)
	if e := s1.E2EEErrors; e > 0 {
		b.Fatalf("the far end could not decrypt %d frames", e)
	}
	c := g2gCall{encrypted: encrypted, median: median(ages), frames: len(ages), jb: s1.VideoJitterBuffer.Since(s0.VideoJitterBuffer),
		presentedFPS: float64(s1.FramesPresented-s0.FramesPresented) / took.Seconds()}
	c.decodedFPS = float64(c.jb.Frames) / took.Seconds()
	c.receivedFPS = (s1.VideoJitterBuffer.Received - s0.VideoJitterBuffer.Received) / took.Seconds()
	c.droppedFPS = (s1.VideoJitterBuffer.Dropped - s0.VideoJitterBuffer.Dropped) / took.Seconds()
	if read := s1.StampFramesRead - s0.StampFramesRead; read > 0 {
		c.validShare = float64(s1.StampFramesValid-s0.StampFramesValid) / float64(read)
	}
	return c
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(d []time.Duration) time.Duration {
	s := sorted(d)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// reportG2G reports per mode the median of the per-call medians and of the
// per-frame jitter-buffer delay, the difference (encrypted - clear), the
// min..max of the rounds' paired differences (calls i and i+1 of a round),
// a bootstrap 90 % interval of the difference of medians (calls
// resampled within each mode), and the difference once each call's
// jitter-buffer hold is taken off its median.
func reportG2G(b *testing.B, calls []g2gCall) {
	var clear, enc, jbClear, jbEnc, restClear, restEnc, paired []time.Duration
	for i, c := range calls {
		if c.encrypted {
			enc, jbEnc, restEnc = append(enc, c.median), append(jbEnc, c.jb.Delay), append(restEnc, c.median-c.jb.Delay)
		} else {
			clear, jbClear, restClear = append(clear, c.median), append(jbClear, c.jb.Delay), append(restClear, c.median-c.jb.Delay)
		}
		if i%2 == 1 {
			d := c.median - calls[i-1].median
			if !c.encrypted {
				d = -d
			}
			paired = append(paired, d)
		}
	}
	diff := median(enc) - median(clear)
	lo, hi := bootstrap90(clear, enc)
	ps := sorted(paired)
	b.ReportMetric(ms(median(clear)), "clear-ms")
	b.ReportMetric(ms(median(enc)), "e2ee-ms")
	b.ReportMetric(ms(diff), "diff-ms")
	b.ReportMetric(ms(ps[0]), "paired-min-ms")
	b.ReportMetric(ms(ps[len(ps)-1]), "paired-max-ms")
	b.ReportMetric(ms(lo), "diff-lo90-ms")
	b.ReportMetric(ms(hi), "diff-hi90-ms")
	b.ReportMetric(ms(median(jbClear)), "jb-clear-ms")
	b.ReportMetric(ms(median(jbEnc)), "jb-e2ee-ms")
	// The rest: glass to glass less the jitter buffer's hold, the part the
	// far end's playout choice does not set.
	b.ReportMetric(ms(median(restEnc)-median(restClear)), "rest-diff-ms")
	b.ReportMetric(float64(len(enc)), "calls-each")
}

// bootstrap90 is the 5th and 95th percentile of median(enc) - median(clear)
// over 2,000 resamplings (with replacement) of each mode's calls; a fixed
// seed, so one run's figures are reproducible from its calls.
func bootstrap90(clear, enc []time.Duration) (lo, hi time.Duration) {
	rng := rand.New(rand.NewPCG(22, 22))
	resample := func(d []time.Duration) time.Duration {
		s := make([]time.Duration, len(d))
		for i := range s {
			s[i] = d[rng.IntN(len(d))]
		}
		return median(s)
	}
	diffs := make([]time.Duration, 2000)
	for i := range diffs {
		diffs[i] = resample(enc) - resample(clear)
	}
	slices.Sort(diffs)
	return diffs[len(diffs)*5/100], diffs[len(diffs)*95/100]
}
