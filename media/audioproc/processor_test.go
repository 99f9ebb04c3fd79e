package audioproc

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// speechLike is noise shaped like speech: low-passed, in 4 Hz syllables.
type speechLike struct {
	r    *rand.Rand
	lp   float64
	lp2  float64
	t    int
	rate int
}

func newSpeechLike(seed uint64) *speechLike {
	return &speechLike{r: rand.New(rand.NewPCG(seed, 7)), rate: 48000}
}

func (s *speechLike) fill(out []float32, level float64) {
	for i := range out {
		// Two poles near 1.5 kHz: speech's band, little above 4 kHz.
		s.lp += 0.2 * (s.r.NormFloat64() - s.lp)
		s.lp2 += 0.2 * (s.lp - s.lp2)
		env := 0.5 + 0.5*math.Sin(2*math.Pi*4*float64(s.t)/float64(s.rate))
		out[i] = float32(level * s.lp2 * 4 * env)
		s.t++
	}
}

// runRoom plays far end through the room for d, the microphone hearing the
// echo plus a 480 Hz near-end tone of toneLevel, and returns the powers
// (dB) after the first converge: of everything but the tone (the echo) and
// of the tone (Goertzel), before and after processing.
func runRoom(t *testing.T, cfg Config, echo EchoConfig, d, converge time.Duration, farLevel, toneLevel float64) (inDB, outDB, toneInDB, toneOutDB float64) {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	room, err := NewEchoPath(echo, 48000)
	if err != nil {
		t.Fatal(err)
	}
	far := newSpeechLike(1)
	spk := make([]float32, 480)
	mic := make([]float32, 960)
	var in, out []float32
	phase := 0
	chunks := int(d / (20 * time.Millisecond))
	skip := int(converge / (20 * time.Millisecond))
	for c := 0; c < chunks; c++ {
		for k := 0; k < 2; k++ {
			far.fill(spk, farLevel)
			room.Play(spk)
			p.Render(spk)
		}
		for i := range mic {
			mic[i] = float32(toneLevel * math.Sin(2*math.Pi*float64(phase)/100))
			phase++
		}
		room.AddTo(mic)
		if c >= skip {
			in = append(in, mic...)
		}
		if err := p.Process(mic, 48000); err != nil {
			t.Fatal(err)
		}
		if c >= skip {
			out = append(out, mic...)
		}
	}
	toneIn, toneOut := goertzel(in, 480), goertzel(out, 480)
	return db(energy(in) - toneIn), db(energy(out) - toneOut), db(toneIn), db(toneOut)
}

func energy(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return s / float64(len(x))
}

// goertzel is the mean power of x at f Hz (48 kHz).
func goertzel(x []float32, f float64) float64 {
	w := 2 * math.Pi * f / 48000
	c := 2 * math.Cos(w)
	var s1, s2 float64
	for _, v := range x {
		s0 := float64(v) + c*s1 - s2
		s2, s1 = s1, s0
	}
	p := s1*s1 + s2*s2 - c*s1*s2
	n := float64(len(x))
	return 2 * p / (n * n)
}

func db(e float64) float64 { return 10 * math.Log10(max(e, 1e-20)) }

var simRoom = EchoConfig{Delay: 120 * time.Millisecond, AttenuationDB: 6, Reverb: 150 * time.Millisecond}

func TestEchoCancelled(t *testing.T) {
	in, out, _, _ := runRoom(t, Config{EchoCancel: true}, simRoom, 30*time.Second, 10*time.Second, 0.3, 0)
	t.Logf("echo alone: in %.1f dB, out %.1f dB: ERLE %.1f dB", in, out, in-out)
	if in-out < 25 {
		t.Errorf("ERLE %.1f dB, want ≥ 25", in-out)
	}
}

func TestDoubleTalkKeepsNearEnd(t *testing.T) {
	in, out, tin, tout := runRoom(t, Config{EchoCancel: true}, simRoom, 30*time.Second, 10*time.Second, 0.3, 0.25)
	t.Logf("echo: in %.1f dB, out %.1f dB (ERLE %.1f); near-end tone: in %.1f dB, out %.1f dB", in, out, in-out, tin, tout)
	if tin-tout > 6 {
		t.Errorf("near-end tone attenuated %.1f dB in double talk, want ≤ 6", tin-tout)
	}
}

// After Reset nothing of what the microphone heard before comes out: the
// privacy gate's guarantee through the processor's buffers. Chunks of 25 ms
// (not whole frames) make the processor hold samples between calls.
func TestResetForgetsMicrophone(t *testing.T) {
	for _, cfg := range []Config{{EchoCancel: true}, {EchoCancel: true, NoiseSuppress: true, GainControl: true}, {NoiseSuppress: true}} {
		p, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		loud := make([]float32, 1200)
		for c := 0; c < 100; c++ {
			for i := range loud {
				loud[i] = float32(0.5 * math.Sin(float64(c*1200+i)*0.1))
			}
			p.Render(make([]float32, 1200))
			if err := p.Process(loud, 48000); err != nil {
				t.Fatal(err)
			}
		}
		p.Reset()
		for c := 0; c < 20; c++ {
			quiet := make([]float32, 1200)
			p.Render(make([]float32, 1200))
			if err := p.Process(quiet, 48000); err != nil {
				t.Fatal(err)
			}
			for i, v := range quiet {
				if v != 0 {
					t.Fatalf("%+v: chunk %d sample %d after Reset is %g: earlier audio leaked", cfg, c, i, v)
				}
			}
		}
		p.Close()
	}
}

func TestStatsAfterEcho(t *testing.T) {
	p, err := New(Config{EchoCancel: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	room, _ := NewEchoPath(simRoom, 48000)
	far := newSpeechLike(3)
	spk, mic := make([]float32, 960), make([]float32, 960)
	for c := 0; c < 1000; c++ {
		far.fill(spk, 0.3)
		room.Play(spk)
		p.Render(spk)
		clear(mic)
		room.AddTo(mic)
		if err := p.Process(mic, 48000); err != nil {
			t.Fatal(err)
		}
	}
	s := p.Stats()
	t.Logf("%+v", s)
	if !s.Active || !s.ERLEKnown || s.ERLE < 15 || s.Frames != 2000 {
		t.Errorf("stats %+v: want active, ERLE known and ≥ 15 dB, 2000 frames", s)
	}
	// The room's delay is 120 ms, and the microphone's 20 ms chunk is
	// processed when it ends: the filter's peak says 120 to 150.
	if s.DelayMs < 115 || s.DelayMs > 155 {
		t.Errorf("estimated delay %d ms, want 120 to 150", s.DelayMs)
	}
}

// BenchmarkFrame is the CPU of one 10 ms frame (48 kHz mono) of the whole
// chain: the reference, echo cancellation (200 ms tail), noise suppression
// and AGC. The far end and its echo are made beforehand (4 s, looped), so
// only the processor is timed.
func BenchmarkFrame(b *testing.B) {
	const n = 400
	room, _ := NewEchoPath(simRoom, 48000)
	far := newSpeechLike(3)
	spk, mic := make([][]float32, n), make([][]float32, n)
	for i := range spk {
		spk[i], mic[i] = make([]float32, 480), make([]float32, 480)
		far.fill(spk[i], 0.3)
		room.Play(spk[i])
		room.AddTo(mic[i])
	}
	buf := make([]float32, 480)
	for _, cfg := range []Config{{EchoCancel: true}, {EchoCancel: true, NoiseSuppress: true, GainControl: true}, {NoiseSuppress: true, GainControl: true}} {
		b.Run(fmt.Sprintf("aec=%v,ns=%v,agc=%v", cfg.EchoCancel, cfg.NoiseSuppress, cfg.GainControl), func(b *testing.B) {
			p, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p.Render(spk[i%n])
				copy(buf, mic[i%n])
				if err := p.Process(buf, 48000); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The processor adds no delay for chunks of whole 10 ms frames (the 20 ms
// mediadevices delivers), and less than one frame for other sizes.
func TestAddedLatency(t *testing.T) {
	for _, c := range []struct {
		chunk, want int
	}{{960, 0}, {480, 0}, {1200, 240}} {
		p, err := New(Config{GainControl: false, NoiseSuppress: false, EchoCancel: true})
		if err != nil {
			t.Fatal(err)
		}
		var in, out []float32
		for k := 0; k < 20; k++ {
			x := make([]float32, c.chunk)
			if k == 10 {
				x[7] = 0.5 // an impulse, far from the start
			}
			in = append(in, x...)
			if err := p.Process(x, 48000); err != nil {
				t.Fatal(err)
			}
			out = append(out, x...)
		}
		p.Close()
		at := func(x []float32) int {
			best := 0
			for i := range x {
				if abs(x[i]) > abs(x[best]) {
					best = i
				}
			}
			return best
		}
		if d := at(out) - at(in); d != c.want {
			t.Errorf("chunks of %d: the impulse comes out %d samples late, want %d", c.chunk, d, c.want)
		}
	}
}

func abs(v float32) float32 { return max(v, -v) }

// The speaker's callback (Render), the microphone's reader (Process,
// Skip), the gate (Reset) and roomctl (Stats) on their own goroutines.
func TestConcurrentUse(t *testing.T) {
	p, err := New(Config{EchoCancel: true, NoiseSuppress: true, GainControl: true})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
					f()
				}
			}
		}()
	}
	spk := make([]float32, 480)
	run(func() { p.Render(spk) })
	run(func() { _ = p.Stats() })
	run(func() { time.Sleep(5 * time.Millisecond); p.Reset() })
	mic := make([]float32, 960)
	for i := 0; i < 300; i++ {
		if err := p.Process(mic, 48000); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			p.Skip(960)
		}
	}
	close(done)
	wg.Wait()
	p.Close()
	if err := p.Process(mic, 48000); err != nil {
		t.Fatalf("after Close: %v", err)
	}
}
