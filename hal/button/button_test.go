package button

import (
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"

	"github.com/konsult/konsult/hal/sim"
)

func newTestPin() *gpiotest.Pin {
	return &gpiotest.Pin{N: "GPIO17", Num: 17, L: gpio.High, EdgesChan: make(chan gpio.Level, 64)}
}

// train sends levels as edges with gaps between them, like a bouncing contact.
func train(p *gpiotest.Pin, gap time.Duration, levels ...gpio.Level) {
	for i, l := range levels {
		if i > 0 {
			time.Sleep(gap)
		}
		p.EdgesChan <- l
	}
}

func next(t *testing.T, b *Button, within time.Duration) Event {
	t.Helper()
	select {
	case e, ok := <-b.Events():
		if !ok {
			t.Fatal("events closed")
		}
		return e
	case <-time.After(within):
		t.Fatalf("no event within %s", within)
	}
	return Event{}
}

func quiet(t *testing.T, b *Button, d time.Duration) {
	t.Helper()
	select {
	case e := <-b.Events():
		t.Fatalf("unexpected event %+v", e)
	case <-time.After(d):
	}
}

func mustNew(t *testing.T, pin gpio.PinIn, cfg Config) *Button {
	t.Helper()
	b, err := New(pin, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Halt() })
	return b
}

const L, H = gpio.Low, gpio.High

func TestBounceTrainGivesOneDownOneUp(t *testing.T) {
	p := newTestPin()
	b := mustNew(t, p, Config{Name: "join", Debounce: 20 * time.Millisecond, LongPress: time.Second})

	start := time.Now()
	go func() {
		// Mixed 1–5 ms gaps, ending Low (pressed).
		for i, l := range []gpio.Level{L, H, L, H, L} {
			p.EdgesChan <- l
			time.Sleep(time.Duration(1+i) * time.Millisecond)
		}
	}()
	e := next(t, b, 300*time.Millisecond)
	if e.Kind != Down || e.Button != "join" {
		t.Fatalf("got %+v, want join down", e)
	}
	if e.At.Before(start) {
		t.Errorf("At %v before the press started", e.At)
	}
	quiet(t, b, 60*time.Millisecond)

	go train(p, 2*time.Millisecond, H, L, H, L, H)
	if e := next(t, b, 300*time.Millisecond); e.Kind != Short {
		t.Fatalf("got %v, want short", e.Kind)
	}
	up := next(t, b, 100*time.Millisecond)
	if up.Kind != Up || up.Held <= 0 || up.Held >= time.Second {
		t.Fatalf("got %+v, want up with 0 < held < 1s", up)
	}
	quiet(t, b, 60*time.Millisecond)
}

func TestBounceBackToReleasedGivesNothing(t *testing.T) {
	p := newTestPin()
	b := mustNew(t, p, Config{Name: "join", Debounce: 10 * time.Millisecond})
	go train(p, time.Millisecond, L, H, L, H)
	quiet(t, b, 80*time.Millisecond)
}

func TestShortPress(t *testing.T) {
	p := newTestPin()
	b := mustNew(t, p, Config{Name: "mute", Debounce: 5 * time.Millisecond, LongPress: 200 * time.Millisecond})
	p.EdgesChan <- L
	pressed := time.Now()
	down := next(t, b, 100*time.Millisecond)
	time.Sleep(40 * time.Millisecond)
	// The press lasts as long as the test really held it: a loaded
	// machine (CI saw 195 ms) oversleeps, and the button must measure that.
	gap := time.Since(pressed)
	p.EdgesChan <- H
	if gap >= 150*time.Millisecond {
		t.Skipf("the test slept %s for a 40 ms press: too loaded to tell a short press", gap)
	}
	short := next(t, b, 100*time.Millisecond)
	up := next(t, b, 100*time.Millisecond)
	if down.Kind != Down || short.Kind != Short || up.Kind != Up {
		t.Fatalf("got %v %v %v, want down short up", down.Kind, short.Kind, up.Kind)
	}
	if up.Held < gap-10*time.Millisecond || up.Held > gap+60*time.Millisecond {
		t.Errorf("held %s, want about the %s the pin was held", up.Held, gap.Round(time.Millisecond))
	}
	if short.Held != up.Held {
		t.Errorf("short held %s != up held %s", short.Held, up.Held)
	}
}

func TestLongPress(t *testing.T) {
	p := newTestPin()
	const long = 100 * time.Millisecond
	b := mustNew(t, p, Config{Name: "leave", Debounce: 5 * time.Millisecond, LongPress: long})
	p.EdgesChan <- L
	down := next(t, b, 100*time.Millisecond)
	if down.Kind != Down {
		t.Fatalf("got %v, want down", down.Kind)
	}
	lp := next(t, b, 300*time.Millisecond)
	if lp.Kind != Long {
		t.Fatalf("got %v, want long", lp.Kind)
	}
	if d := lp.At.Sub(down.At); d < long {
		t.Errorf("long after %s, want >= %s", d, long)
	}
	quiet(t, b, 150*time.Millisecond) // Long is sent once
	p.EdgesChan <- H
	up := next(t, b, 100*time.Millisecond)
	if up.Kind != Up || up.Held < long+150*time.Millisecond {
		t.Fatalf("got %+v, want up held >= 250ms (no short after long)", up)
	}
	quiet(t, b, 30*time.Millisecond)
}

func TestActiveHigh(t *testing.T) {
	p := newTestPin()
	b := mustNew(t, p, Config{Name: "privacy", Debounce: 5 * time.Millisecond, ActiveHigh: true})
	if p.P != gpio.PullDown {
		t.Fatalf("pull %v, want pull-down", p.P)
	}
	p.EdgesChan <- H
	if e := next(t, b, 100*time.Millisecond); e.Kind != Down {
		t.Fatalf("got %v, want down on High", e.Kind)
	}
}

func TestPullUpByDefault(t *testing.T) {
	p := newTestPin()
	p.L = L
	mustNew(t, p, Config{})
	if p.P != gpio.PullUp {
		t.Fatalf("pull %v, want pull-up", p.P)
	}
}

func TestHeldAtStartIsIgnoredUntilReleased(t *testing.T) {
	pin := sim.NewPin("GPIO17", 17, H)
	pin.Drive(L)
	b := mustNew(t, pin, Config{Name: "join", Debounce: 5 * time.Millisecond, LongPress: 50 * time.Millisecond})
	quiet(t, b, 100*time.Millisecond) // no Long for a button stuck at boot
	pin.Drive(H)
	quiet(t, b, 40*time.Millisecond) // and no Up
	pin.Drive(L)
	if e := next(t, b, 100*time.Millisecond); e.Kind != Down {
		t.Fatalf("got %v, want down", e.Kind)
	}
}

func TestHaltInterruptsSimPin(t *testing.T) {
	pin := sim.NewPin("GPIO17", 17, H)
	b, err := New(pin, Config{Name: "join"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // let it block in WaitForEdge
	start := time.Now()
	if err := b.Halt(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Halt took %s", d)
	}
	select {
	case <-b.done:
	default:
		t.Error("watcher still running after Halt on an interruptible pin")
	}
	if _, ok := <-b.Events(); ok {
		t.Error("Events not closed")
	}
	if err := b.Halt(); err != nil {
		t.Errorf("second Halt: %v", err)
	}
}

func TestHaltPromptOnUninterruptiblePin(t *testing.T) {
	p := newTestPin()
	b, err := New(p, Config{Name: "join"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // let it block in WaitForEdge
	start := time.Now()
	if err := b.Halt(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Halt took %s", d)
	}
	if _, ok := <-b.Events(); ok {
		t.Error("Events not closed")
	}
	// A late edge wakes the stranded watcher, which must exit without
	// sending on the closed channel (that would panic).
	p.EdgesChan <- L
	select {
	case <-b.done:
	case <-time.After(time.Second):
		t.Error("watcher did not exit after its wait returned")
	}
}

func TestHaltWithFullEventsChannel(t *testing.T) {
	pin := sim.NewPin("GPIO17", 17, H)
	b, err := New(pin, Config{Name: "join", Debounce: time.Millisecond, LongPress: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads: 3 events per press fill the buffer and block the watcher.
	for range EventBuffer/3 + 2 {
		pin.Drive(L)
		time.Sleep(4 * time.Millisecond)
		pin.Drive(H)
		time.Sleep(4 * time.Millisecond)
	}
	start := time.Now()
	if err := b.Halt(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Halt took %s", d)
	}
	n := 0
	for range b.Events() {
		n++
	}
	if n != EventBuffer {
		t.Errorf("drained %d buffered events, want %d", n, EventBuffer)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(nil, Config{Name: "join"}); err == nil {
		t.Error("nil pin: want error")
	}
	p := &gpiotest.Pin{N: "GPIO17"} // no EdgesChan: In with edges fails
	if _, err := New(p, Config{Name: "join"}); err == nil {
		t.Error("In failure: want error")
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Down: "down", Long: "long", Up: "up", Short: "short", 0: "unknown"} {
		if k.String() != want {
			t.Errorf("%d: %q, want %q", k, k.String(), want)
		}
	}
}

// BenchmarkEdgeToEvent measures from the edge that starts a (clean) press
// to the Down event, with a 1ms debounce: the debounce dominates.
func BenchmarkEdgeToEvent(b *testing.B) {
	pin := sim.NewPin("GPIO17", 17, H)
	btn, err := New(pin, Config{Name: "join", Debounce: time.Millisecond, LongPress: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = btn.Halt() }()
	var total time.Duration
	for b.Loop() {
		start := time.Now()
		pin.Drive(L)
		for e := range btn.Events() {
			if e.Kind == Down {
				break
			}
		}
		total += time.Since(start)
		pin.Drive(H)
		for e := range btn.Events() {
			if e.Kind == Up {
				break
			}
		}
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs/edge-to-down")
}
