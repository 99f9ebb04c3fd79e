package shutter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"

	"github.com/konsult/konsult/hal/sim"
)

const (
	travel  = 80 * time.Millisecond
	timeout = 250 * time.Millisecond
)

func setup(t *testing.T) (*Shutter, *sim.Board) {
	t.Helper()
	t.Parallel()
	b := sim.New(sim.Config{Travel: travel})
	s, err := New(Config{
		Actuator:     b.ByName("GPIO24"),
		OpenSensor:   b.ByName("GPIO5"),
		ClosedSensor: b.ByName("GPIO6"),
		Timeout:      timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Halt()
		_ = b.Halt()
	})
	return s, b
}

func waitFault(t *testing.T, s *Shutter, kind FaultKind, cleared bool) Fault {
	t.Helper()
	deadline := time.After(time.Second)
	for {
		select {
		case f, ok := <-s.Faults():
			if !ok {
				t.Fatal("faults closed")
			}
			if f.Kind == kind && f.Cleared == cleared {
				return f
			}
			t.Logf("skipping %+v", f)
		case <-deadline:
			t.Fatalf("no fault %v (cleared=%v) within 1s", kind, cleared)
		}
	}
}

func noFault(t *testing.T, s *Shutter, d time.Duration) {
	t.Helper()
	select {
	case f := <-s.Faults():
		t.Fatalf("unexpected fault %+v", f)
	case <-time.After(d):
	}
}

func TestOpenCloseConfirmed(t *testing.T) {
	s, b := setup(t)
	if s.Position() != Closed || s.Target() != Closed || !s.Confirmed() {
		t.Fatalf("start: position %v target %v confirmed %v", s.Position(), s.Target(), s.Confirmed())
	}
	start := time.Now()
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < travel {
		t.Errorf("Open returned after %s, before the %s travel", d, travel)
	}
	st := b.Shutter()
	if st.OpenSensor != gpio.Low || st.ClosedSensor != gpio.High || st.Actuator != gpio.High || st.Position != sim.PosOpen {
		t.Errorf("after Open: %+v", st)
	}
	if s.Position() != Open || s.Target() != Open || s.Moving() {
		t.Errorf("position %v target %v moving %v", s.Position(), s.Target(), s.Moving())
	}

	start = time.Now()
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < travel {
		t.Errorf("Close returned after %s, before the %s travel", d, travel)
	}
	if st := b.Shutter(); st.ClosedSensor != gpio.Low || st.Actuator != gpio.Low {
		t.Errorf("after Close: %+v", st)
	}
	if s.Position() != Closed {
		t.Errorf("position %v", s.Position())
	}
	noFault(t, s, 30*time.Millisecond)
}

func TestOpenTimeoutWhenStuck(t *testing.T) {
	s, b := setup(t)
	if err := b.SetFault(sim.StuckShutter, true); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := s.Open(context.Background())
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Open: %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d < timeout || d > timeout+200*time.Millisecond {
		t.Errorf("timed out after %s, want about %s", d, timeout)
	}
	if !strings.HasPrefix(err.Error(), "open shutter: ") {
		t.Errorf("error lacks context: %v", err)
	}
	if b.Shutter().Actuator != gpio.Low {
		t.Error("actuator not driven back Low after timeout")
	}
	if s.Target() != Closed {
		t.Errorf("target %v after failed open, want closed", s.Target())
	}
	f := waitFault(t, s, Timeout, false)
	if !strings.Contains(f.Detail, "GPIO6") {
		t.Errorf("detail %q should name the closed sensor pin", f.Detail)
	}

	// Fixed: the next confirmed move clears the fault.
	if err := b.SetFault(sim.StuckShutter, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFault(t, s, Timeout, true)
}

func TestCloseTimeoutWhenStuckOpen(t *testing.T) {
	s, b := setup(t)
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.SetFault(sim.StuckShutter, true); err != nil {
		t.Fatal(err)
	}
	err := s.Close(context.Background())
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Close: %v, want ErrTimeout", err)
	}
	if b.Shutter().Actuator != gpio.Low {
		t.Error("actuator not Low after failed Close")
	}
	f := waitFault(t, s, Timeout, false)
	if !strings.Contains(f.Detail, "open sensor GPIO5 still active") {
		t.Errorf("detail %q", f.Detail)
	}
}

func TestSensorDisagreement(t *testing.T) {
	s, b := setup(t)
	if err := b.SetFault(sim.SensorDisagree, true); err != nil {
		t.Fatal(err)
	}
	f := waitFault(t, s, SensorsDisagree, false)
	if !strings.Contains(f.Detail, "GPIO5") || !strings.Contains(f.Detail, "GPIO6") {
		t.Errorf("detail %q should name both pins", f.Detail)
	}
	if s.Position() != Disagree {
		t.Errorf("position %v", s.Position())
	}
	if err := s.Open(context.Background()); !errors.Is(err, ErrDisagree) {
		t.Fatalf("Open: %v, want ErrDisagree", err)
	}
	if b.Shutter().Actuator != gpio.Low {
		t.Error("actuator not Low after disagreement")
	}
	time.Sleep(travel + 30*time.Millisecond) // let it close again
	if err := b.SetFault(sim.SensorDisagree, false); err != nil {
		t.Fatal(err)
	}
	waitFault(t, s, SensorsDisagree, true)
	if s.Position() != Closed {
		t.Errorf("position %v after clearing", s.Position())
	}
}

func TestDriftRaisesMovedByItself(t *testing.T) {
	s, b := setup(t)
	if err := b.SetFault(sim.ShutterDrift, true); err != nil {
		t.Fatal(err)
	}
	f := waitFault(t, s, MovedByItself, false)
	if !strings.Contains(f.Detail, "commanded closed") {
		t.Errorf("detail %q", f.Detail)
	}
	noFault(t, s, travel+30*time.Millisecond) // reaching open is the same fault
	if s.Position() != Open {
		t.Errorf("position %v after drift", s.Position())
	}
	if err := b.SetFault(sim.ShutterDrift, false); err != nil {
		t.Fatal(err)
	}
	waitFault(t, s, MovedByItself, true)
}

func TestSlowShutterFailClosedIsNotMovedByItself(t *testing.T) {
	t.Parallel()
	b := sim.New(sim.Config{Travel: 150 * time.Millisecond})
	s, err := New(Config{
		Actuator:     b.ByName("GPIO24"),
		OpenSensor:   b.ByName("GPIO5"),
		ClosedSensor: b.ByName("GPIO6"),
		Timeout:      60 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Halt()
	// Times out mid-travel; the fail-closed move back must not look like
	// the shutter moving by itself.
	if err := s.Open(context.Background()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Open: %v, want ErrTimeout", err)
	}
	if f := waitFault(t, s, Timeout, false); !strings.Contains(f.Detail, "open sensor GPIO5 still inactive") {
		t.Errorf("detail %q", f.Detail)
	}
	select {
	case f := <-s.Faults():
		if f.Kind != Timeout || !f.Cleared {
			t.Fatalf("got %+v, want timeout cleared once closed again", f)
		}
	case <-time.After(time.Second):
		t.Fatal("timeout never cleared")
	}
	if s.Position() != Closed {
		t.Errorf("position %v", s.Position())
	}
	noFault(t, s, 30*time.Millisecond)
}

func TestContextCancel(t *testing.T) {
	s, b := setup(t)
	if err := b.SetFault(sim.StuckShutter, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := s.Open(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open: %v, want deadline exceeded", err)
	}
	if b.Shutter().Actuator != gpio.Low {
		t.Error("actuator not Low after cancelled Open")
	}
}

func TestNoSensors(t *testing.T) {
	t.Parallel()
	b := sim.New(sim.Config{OpenSensor: sim.NotWired, ClosedSensor: sim.NotWired})
	s, err := New(Config{Actuator: b.ByName("GPIO24")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Halt()
	if s.Confirmed() {
		t.Error("Confirmed with no sensors")
	}
	start := time.Now()
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("Open without sensors took %s", d)
	}
	if b.Shutter().Actuator != gpio.High || s.Position() != Unknown {
		t.Errorf("actuator %v position %v", b.Shutter().Actuator, s.Position())
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.Shutter().Actuator != gpio.Low {
		t.Error("actuator not Low after Close")
	}
}

func TestServo(t *testing.T) {
	t.Parallel()
	p := sim.NewPin("GPIO24", 24, gpio.Low)
	sv := &Servo{OpenDuty: gpio.DutyMax / 10, ClosedDuty: gpio.DutyMax / 20, Frequency: 50 * physic.Hertz}
	s, err := New(Config{Actuator: p, Servo: sv})
	if err != nil {
		t.Fatal(err)
	}
	if p.Duty() != sv.ClosedDuty {
		t.Errorf("duty %v after New, want closed %v", p.Duty(), sv.ClosedDuty)
	}
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p.Duty() != sv.OpenDuty {
		t.Errorf("duty %v after Open, want %v", p.Duty(), sv.OpenDuty)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p.Duty() != sv.ClosedDuty {
		t.Errorf("duty %v after Close, want %v", p.Duty(), sv.ClosedDuty)
	}
	if err := s.Halt(); err != nil {
		t.Fatal(err)
	}
	if p.Read() != gpio.Low {
		t.Error("servo pin not released on Halt")
	}
}

func TestHalt(t *testing.T) {
	s, b := setup(t)
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Halt(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Halt took %s", d)
	}
	if b.Shutter().Actuator != gpio.Low {
		t.Error("actuator not released on Halt")
	}
	for range s.Faults() {
	}
	if err := s.Open(context.Background()); !errors.Is(err, ErrHalted) {
		t.Errorf("Open after Halt: %v", err)
	}
	// Sensor changes after Halt must not send on the closed channel.
	if err := b.SetFault(sim.SensorDisagree, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("no actuator: want error")
	}
}

func TestStrings(t *testing.T) {
	if Open.String() != "open" || Disagree.String() != "disagree" || MovedByItself.String() != "moved_by_itself" {
		t.Error("bad String")
	}
}
