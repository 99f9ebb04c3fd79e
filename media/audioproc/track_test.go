package audioproc

import (
	"testing"
	"time"
)

// gapRoom runs the canceller over an echo path whose devices have gaps:
// every gapEvery, the speaker plays gap of silence the mix never had (an
// underrun: the echo comes later from then on) or, with micGap, the
// microphone loses gap of what it heard (an overrun: sooner). It returns
// the ERLE (dB) over the last half and the processor's stats.
func gapRoom(t *testing.T, d, gapEvery, gap time.Duration, micGap, noTrack bool) (float64, Stats) {
	return gapRoomAt(t, 60*time.Millisecond, d, gapEvery, gap, micGap, noTrack)
}

func gapRoomAt(t *testing.T, pathDelay, d, gapEvery, gap time.Duration, micGap, noTrack bool) (float64, Stats) {
	t.Helper()
	p, err := New(Config{EchoCancel: true, NoTrack: noTrack})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const rate, chunk = 48000, 960
	delay := int(pathDelay.Seconds() * rate) // the path's own delay, samples
	far := newSpeechLike(3)
	n := int(d.Seconds() * rate)
	sig := make([]float32, n)
	far.fill(sig, 0.3)
	// dev is what the speaker played: sig with silences where it ran dry.
	// Render gets sig as the speaker's callback handed it over.
	every, g := int(gapEvery.Seconds()*rate), int(gap.Seconds()*rate)
	var dev []float32
	var handed []int // how much of sig had been handed over by each dev sample
	si := 0
	for len(dev) < n {
		if !micGap && len(dev) > 0 && len(dev)%every == 0 {
			for i := 0; i < g; i++ {
				dev = append(dev, 0)
				handed = append(handed, si)
			}
		}
		dev = append(dev, sig[si])
		si++
		handed = append(handed, si)
	}
	// heard is the microphone: the played sound, delay later, at -6 dB;
	// with micGap, g samples of it lost every gapEvery.
	var heard []float32
	var at []int // the device time (dev's index) each heard sample was captured at
	for i := 0; i < len(dev); i++ {
		if micGap && i > 0 && i%every == 0 {
			i += g
		}
		if j := i - delay; j >= 0 && j < len(dev) {
			heard = append(heard, 0.5*dev[j])
		} else {
			heard = append(heard, 0)
		}
		at = append(at, min(i, len(dev)-1))
	}
	rendered := 0
	var in, out float64
	mic := make([]float32, chunk)
	for c := 0; (c+1)*chunk <= len(heard) && (c+1)*chunk <= len(handed); c++ {
		// The speaker's callback has handed over what it had by the time
		// the microphone's chunk ends (device time), plus one 20 ms chunk
		// of lead (its buffer).
		upto := min(handed[at[(c+1)*chunk-1]]+chunk, len(sig))
		if upto > rendered {
			p.Render(sig[rendered:upto])
			rendered = upto
		}
		copy(mic, heard[c*chunk:(c+1)*chunk])
		e := energy(mic)
		if err := p.Process(mic, rate); err != nil {
			t.Fatal(err)
		}
		if c*chunk > len(heard)/2 {
			in += e
			out += energy(mic)
		}
	}
	return db(in) - db(out), p.Stats()
}

// A speaker that runs dry for 30 ms (as the QEMU lab's snd-aloop playback
// under TCG) moves the echo 30 ms later from then on; a microphone that
// loses 30 ms moves it sooner. Without the tracker one such gap loses the
// echo for good (0.4-1.1 dB over the last 20 s, SpeexDSP never finds it
// again); with it the reference follows within about 300 ms, so the ERLE
// over a window is bounded by how often the gaps come (8 s: 12.8-14.4 dB;
// 3 s: 7.7-8.3 dB).
func TestEchoFollowsDeviceGaps(t *testing.T) {
	for _, mic := range []bool{false, true} {
		which := map[bool]string{false: "speaker", true: "microphone"}[mic]
		erle, st := gapRoom(t, 40*time.Second, 8*time.Second, 30*time.Millisecond, mic, false)
		fixed, _ := gapRoom(t, 40*time.Second, 8*time.Second, 30*time.Millisecond, mic, true)
		t.Logf("%s gaps of 30 ms every 8 s: ERLE %.1f dB over the last 20 s (tracker off: %.1f dB); delay shifts %d, realigned %d, delay %d ms",
			which, erle, fixed, st.DelayShifts, st.Realigned, st.DelayMs)
		if erle < 11 || erle-fixed < 8 {
			t.Errorf("%s gaps: ERLE %.1f dB (tracker off %.1f dB), want ≥ 11 dB and ≥ 8 dB more than without the tracker", which, erle, fixed)
		}
		if st.DelayShifts < 3 || st.DelayShifts > 5 {
			t.Errorf("%s gaps: the reference moved %d times for 4 gaps", which, st.DelayShifts)
		}
	}
}

// Without gaps the tracker moves nothing.
func TestTrackerStillWithoutGaps(t *testing.T) {
	erle, st := gapRoom(t, 20*time.Second, time.Hour, 0, false, false)
	t.Logf("no gaps: ERLE %.1f dB; delay shifts %d, realigned %d", erle, st.DelayShifts, st.Realigned)
	if st.DelayShifts != 0 || erle < 25 {
		t.Errorf("no gaps: %d delay shifts, ERLE %.1f dB; want 0 and ≥ 25", st.DelayShifts, erle)
	}
}

// An echo later than the filter reaches (refLead 40 ms + 200 ms tail: a
// speaker's buffer of 250 ms, as the lab's dmix at 200 ms) is found: the
// first estimate puts it into the filter.
func TestEchoBeyondTheFilterFound(t *testing.T) {
	erle, st := gapRoomAt(t, 250*time.Millisecond, 20*time.Second, time.Hour, 0, false, false)
	fixed, _ := gapRoomAt(t, 250*time.Millisecond, 20*time.Second, time.Hour, 0, false, true)
	t.Logf("echo 250 ms after the tap: ERLE %.1f dB over the last 10 s (tracker off: %.1f dB); delay shifts %d, realigned %d, delay %d ms", erle, fixed, st.DelayShifts, st.Realigned, st.DelayMs)
	if erle < 25 || st.Realigned != 0 {
		t.Errorf("echo beyond the filter: ERLE %.1f dB, realigned %d; want ≥ 25 dB and no realignment", erle, st.Realigned)
	}
}
