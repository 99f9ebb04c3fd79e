package main

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
)

// stampCodecs are the video codecs roomd can send: H264 (openh264, the
// default) and VP8 (libvpx).
var stampCodecs = []string{"H264", "VP8"}

// startStampedCall starts roomd --sim stamping the capture time into its
// picture, a far end reading the stamps back, joins, and returns once the far
// end shows the room.
func startStampedCall(t testing.TB, lk *farend.LiveKit, room, codec string) (*unitUnderTest, *farend.FarEnd) {
	t.Helper()
	u := startUnit(t, livekitConfig(lk, room, fmt.Sprintf("video_codec = %q\n\n[sim]\nstamp = true", codec)))
	fe := farend.StartFarEnd(t, lk, room, "patient", farend.ReadStamps(), farend.ReportInterval(20*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected }); err != nil {
		t.Fatalf("far end did not connect: %v", err)
	}
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	if _, err := fe.WaitFor(ctx, isRoom); err != nil {
		t.Fatalf("the room never appeared at the far end: %v", err)
	}
	return u, fe
}

// The capture stamp survives roomd's real encoders, LiveKit and Chromium's
// decoder: nearly every frame the patient sees gives back a capture time, and
// a plausible one (0-2 s old). The privacy slate carries none.
func TestStampAtRealFarEnd(t *testing.T) {
	lk := farend.StartLiveKit(t)
	for _, codec := range stampCodecs {
		t.Run(codec, func(t *testing.T) {
			room := "stamp-" + codec
			u, fe := startStampedCall(t, lk, room, codec)
			time.Sleep(time.Second) // past the first, softer frames of rate control's start
			a, n0 := fe.Stats(), len(fe.StampLatencies())
			s := farWait(t, fe, "90 frames looked at for a stamp", 20*time.Second, func(s farend.FarEndStats) bool {
				return s.StampFramesRead >= a.StampFramesRead+90
			})
			read, valid := s.StampFramesRead-a.StampFramesRead, s.StampFramesValid-a.StampFramesValid
			if valid*10 < read*9 {
				t.Fatalf("%s: only %d of %d presented frames gave a valid stamp (want >= 90%%)", codec, valid, read)
			}
			ages := fe.StampLatencies()[n0:]
			if len(ages) == 0 {
				t.Fatalf("%s: %d valid stamps counted but no ages reported", codec, valid)
			}
			for _, age := range ages {
				if age < 0 || age > 2*time.Second {
					t.Fatalf("%s: a stamp read back as %v old: outside 0-2 s, so misread or the clocks disagree (all: %v)", codec, age, ages)
				}
			}
			t.Logf("%s: %d of %d frames stamped validly, median age %v", codec, valid, read, percentile(ages, 50))

			if codec != stampCodecs[0] {
				return // the slate does not depend on the codec
			}
			u.press("privacy")
			slate := farWait(t, fe, "the slate after PRIVACY", 10*time.Second, isSlate)
			time.Sleep(500 * time.Millisecond)
			if after := fe.Stats(); after.StampFramesValid > slate.StampFramesValid {
				t.Fatalf("stamps kept arriving in privacy (%d, then %d): the slate must carry no picture of the camera", slate.StampFramesValid, after.StampFramesValid)
			}
		})
	}
}

// BenchmarkGlassToGlass: a frame leaving the simulated camera (stamped with
// the wall clock) → the patient's browser hands the decoded frame to its
// compositor (requestVideoFrameCallback; the page reads the stamp back from
// the pixels). Everything in between is real: gate, encoder, pion, WHIP,
// LiveKit, Chromium's jitter buffer and decoder; all on loopback on this
// machine, so no network delay is included. One op is one frame with a valid
// stamp (~the frame interval); after the loop the samples are topped up to
// at least 200 over at least 10 s. Reports p50 and p95 of the ages.
func BenchmarkGlassToGlass(b *testing.B) {
	lk := farend.StartLiveKit(b)
	for _, codec := range stampCodecs {
		b.Run(codec, func(b *testing.B) {
			_, fe := startStampedCall(b, lk, "g2g-"+codec, codec)
			time.Sleep(time.Second) // rate control and the jitter buffer settle
			start, a, n0 := time.Now(), fe.Stats(), len(fe.StampLatencies())
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			next := func() {
				n := fe.Stats().StampFramesValid
				if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.StampFramesValid > n }); err != nil {
					b.Fatalf("no more stamped frames at the far end: %v", err)
				}
			}
			for b.Loop() {
				next()
			}
			for len(fe.StampLatencies())-n0 < 200 || time.Since(start) < 10*time.Second {
				next()
			}
			s := fe.Stats()
			ages := fe.StampLatencies()[n0:]
			b.ReportMetric(ms(percentile(ages, 50)), "g2g-p50-ms")
			b.ReportMetric(ms(percentile(ages, 95)), "g2g-p95-ms")
			b.ReportMetric(float64(len(ages)), "samples")
			b.ReportMetric(100*float64(s.StampFramesValid-a.StampFramesValid)/float64(max(1, s.StampFramesRead-a.StampFramesRead)), "valid-%")
		})
	}
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
