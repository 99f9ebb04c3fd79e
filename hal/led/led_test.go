package led

import (
	"errors"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"

	"github.com/konsult/konsult/hal/sim"
)

const tolerance = 40 * time.Millisecond

func newSingle(t *testing.T) (*LED, *sim.Pin) {
	t.Helper()
	p := sim.NewPin("GPIO18", 18, gpio.Low)
	l, err := New(Pins{Single: p})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Halt() })
	return l, p
}

// intervals returns the gaps between level changes recorded after since.
func intervals(p *sim.Pin, since time.Time) ([]time.Duration, []gpio.Level) {
	var ds []time.Duration
	var ls []gpio.Level
	var prev time.Time
	for _, c := range p.History() {
		if c.At.Before(since) {
			continue
		}
		if !prev.IsZero() {
			ds = append(ds, c.At.Sub(prev))
		}
		ls = append(ls, c.Level)
		prev = c.At
	}
	return ds, ls
}

func checkIntervals(t *testing.T, got []time.Duration, want ...time.Duration) {
	t.Helper()
	if len(got) < len(want) {
		t.Fatalf("got %d intervals %v, want at least %d", len(got), got, len(want))
	}
	for i, w := range want {
		if d := got[i] - w; d < -tolerance || d > tolerance {
			t.Errorf("interval %d = %s, want %s ± %s (all: %v)", i, got[i], w, tolerance, got)
		}
	}
}

func TestNewNeedsPins(t *testing.T) {
	if _, err := New(Pins{}); err == nil {
		t.Error("no pins: want error")
	}
	r := sim.NewPin("R", 1, gpio.Low)
	if _, err := New(Pins{R: r, G: r}); err == nil {
		t.Error("partial RGB: want error")
	}
}

func TestNewSwitchesOff(t *testing.T) {
	p := sim.NewPin("GPIO18", 18, gpio.High)
	l, err := New(Pins{Single: p})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Halt()
	if p.Read() != gpio.Low {
		t.Error("LED lit after New")
	}
	if (l.State() != State{}) {
		t.Errorf("state %+v, want off", l.State())
	}
}

func TestOffAndSolid(t *testing.T) {
	l, p := newSingle(t)
	if err := l.Set(State{Pattern: Solid}); err != nil {
		t.Fatal(err)
	}
	if p.Read() != gpio.High {
		t.Fatal("Solid: pin not High on return from Set")
	}
	time.Sleep(50 * time.Millisecond)
	if p.Read() != gpio.High {
		t.Fatal("Solid did not stay High")
	}
	if err := l.Set(State{Pattern: Off}); err != nil {
		t.Fatal(err)
	}
	if p.Read() != gpio.Low {
		t.Fatal("Off: pin not Low")
	}
	if l.State().Pattern != Off {
		t.Errorf("State %v, want off", l.State().Pattern)
	}
}

func TestSlowBlinkTiming(t *testing.T) {
	t.Parallel()
	l, p := newSingle(t)
	start := time.Now()
	if err := l.Set(State{Pattern: SlowBlink}); err != nil {
		t.Fatal(err)
	}
	if p.Read() != gpio.High {
		t.Fatal("blink must start on")
	}
	time.Sleep(1100 * time.Millisecond)
	ds, ls := intervals(p, start)
	checkIntervals(t, ds, 500*time.Millisecond, 500*time.Millisecond)
	if ls[0] != gpio.High || ls[1] != gpio.Low || ls[2] != gpio.High {
		t.Errorf("levels %v, want High, Low, High", ls)
	}
}

func TestFastBlinkTiming(t *testing.T) {
	t.Parallel()
	l, p := newSingle(t)
	start := time.Now()
	if err := l.Set(State{Pattern: FastBlink}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(560 * time.Millisecond)
	ds, _ := intervals(p, start)
	checkIntervals(t, ds, 125*time.Millisecond, 125*time.Millisecond, 125*time.Millisecond, 125*time.Millisecond)
}

// Beacon is a short flash every 2 s: on 100 ms, off 1.9 s, then on again.
func TestBeaconTiming(t *testing.T) {
	t.Parallel()
	l, p := newSingle(t)
	start := time.Now()
	if err := l.Set(State{Pattern: Beacon}); err != nil {
		t.Fatal(err)
	}
	if p.Read() != gpio.High {
		t.Fatal("beacon must start with its flash")
	}
	time.Sleep(2150 * time.Millisecond)
	ds, ls := intervals(p, start)
	checkIntervals(t, ds, 100*time.Millisecond, 1900*time.Millisecond)
	if ls[0] != gpio.High || ls[1] != gpio.Low || ls[2] != gpio.High {
		t.Errorf("levels %v, want High, Low, High", ls)
	}
	if Beacon.String() != "beacon" {
		t.Errorf("Beacon.String() = %q", Beacon.String())
	}
}

func TestPatternChangeCancelsOldTimer(t *testing.T) {
	t.Parallel()
	l, p := newSingle(t)
	if err := l.Set(State{Pattern: SlowBlink}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(450 * time.Millisecond)
	if err := l.Set(State{Pattern: Solid}); err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	time.Sleep(200 * time.Millisecond) // past the slow blink's 500ms toggle
	if ds, ls := intervals(p, since); len(ls) != 0 || p.Read() != gpio.High {
		t.Errorf("Solid changed after Set: %v %v", ds, ls)
	}
}

func TestPulseUsesPWM(t *testing.T) {
	t.Parallel()
	l, p := newSingle(t)
	if !l.HasPWM() {
		t.Fatal("sim pin does PWM; HasPWM false")
	}
	if err := l.Set(State{Pattern: Pulse}); err != nil {
		t.Fatal(err)
	}
	if p.Duty() != gpio.DutyMax {
		t.Fatalf("duty %v on Set, want max", p.Duty())
	}
	// Sample over a bit more than half a period: it must dim towards 0,
	// then brighten again.
	var duties []gpio.Duty
	for range 24 {
		time.Sleep(50 * time.Millisecond)
		duties = append(duties, p.Duty())
	}
	minI := 0
	for i, d := range duties {
		if d < duties[minI] {
			minI = i
		}
	}
	if duties[minI] > gpio.DutyMax/5 {
		t.Errorf("never dimmed below 20%%: %v", duties)
	}
	if minI == 0 || minI == len(duties)-1 || duties[len(duties)-1] <= duties[minI] {
		t.Errorf("not a triangle (min at %d): %v", minI, duties)
	}
	p.Lock()
	f := p.F
	p.Unlock()
	if f != PWMFrequency {
		t.Errorf("frequency %v, want %v", f, PWMFrequency)
	}
}

// noPWM is a pin whose driver can't do PWM, like gpioioctl.
type noPWM struct{ *sim.Pin }

func (noPWM) PWM(gpio.Duty, physic.Frequency) error { return errors.New("no PWM on this line") }

func TestPulseFallsBackToHeartbeat(t *testing.T) {
	t.Parallel()
	p := sim.NewPin("GPIO18", 18, gpio.Low)
	l, err := New(Pins{Single: noPWM{p}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Halt()
	if l.HasPWM() {
		t.Fatal("HasPWM true on a pin whose PWM fails")
	}
	start := time.Now()
	if err := l.Set(State{Pattern: Pulse}); err != nil {
		t.Fatal(err)
	}
	if p.Read() != gpio.High {
		t.Fatal("heartbeat must start on")
	}
	time.Sleep(1150 * time.Millisecond)
	ds, ls := intervals(p, start)
	ms := time.Millisecond
	checkIntervals(t, ds, 100*ms, 100*ms, 100*ms, 700*ms)
	if len(ls) < 5 || ls[0] != gpio.High || ls[1] != gpio.Low || ls[2] != gpio.High || ls[3] != gpio.Low || ls[4] != gpio.High {
		t.Errorf("levels %v, want High Low High Low High", ls)
	}
}

func TestRGBColours(t *testing.T) {
	r := sim.NewPin("GPIO12", 12, gpio.Low)
	g := sim.NewPin("GPIO13", 13, gpio.Low)
	b := sim.NewPin("GPIO19", 19, gpio.Low)
	l, err := New(Pins{R: r, G: g, B: b})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Halt()
	cases := []struct {
		c       Color
		r, g, b gpio.Level
	}{
		{White, true, true, true},
		{Red, true, false, false},
		{Green, false, true, false},
		{Blue, false, false, true},
		{Amber, true, true, false},
	}
	for _, c := range cases {
		if err := l.Set(State{Pattern: Solid, Color: c.c}); err != nil {
			t.Fatal(err)
		}
		if r.Read() != c.r || g.Read() != c.g || b.Read() != c.b {
			t.Errorf("%v: r=%v g=%v b=%v, want %v %v %v", c.c, r.Read(), g.Read(), b.Read(), c.r, c.g, c.b)
		}
	}
	if err := l.Set(State{Pattern: Off, Color: Red}); err != nil {
		t.Fatal(err)
	}
	if r.Read() || g.Read() || b.Read() {
		t.Error("Off left a colour lit")
	}
}

func TestHalt(t *testing.T) {
	p := sim.NewPin("GPIO18", 18, gpio.Low)
	l, err := New(Pins{Single: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Set(State{Pattern: FastBlink}); err != nil {
		t.Fatal(err)
	}
	if err := l.Halt(); err != nil {
		t.Fatal(err)
	}
	if p.Read() != gpio.Low {
		t.Fatal("LED lit after Halt")
	}
	since := time.Now()
	time.Sleep(200 * time.Millisecond)
	if _, ls := intervals(p, since); len(ls) != 0 {
		t.Errorf("pin changed after Halt: %v", ls)
	}
	if err := l.Set(State{Pattern: Solid}); !errors.Is(err, ErrHalted) {
		t.Errorf("Set after Halt: %v, want ErrHalted", err)
	}
	if err := l.Halt(); err != nil {
		t.Errorf("second Halt: %v", err)
	}
}

func TestStrings(t *testing.T) {
	if Pulse.String() != "pulse" || Amber.String() != "amber" || Pattern(9).String() != "pattern(9)" {
		t.Error("bad String")
	}
}

// BenchmarkSetPattern measures Set until the pin shows the new state.
func BenchmarkSetPattern(b *testing.B) {
	p := sim.NewPin("GPIO18", 18, gpio.Low)
	l, err := New(Pins{Single: p})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Halt()
	states := []State{{Pattern: Solid}, {Pattern: Off}}
	i := 0
	for b.Loop() {
		s := states[i%2]
		if err := l.Set(s); err != nil {
			b.Fatal(err)
		}
		if got := p.Read(); got != (s.Pattern == Solid) {
			b.Fatalf("pin %v after Set(%v)", got, s.Pattern)
		}
		i++
	}
}
