package sim

import (
	"context"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
)

const travel = 60 * time.Millisecond

func waitPos(t *testing.T, b *Board, pos string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for b.Shutter().Position != pos {
		if time.Now().After(deadline) {
			t.Fatalf("position %q, want %q within %s", b.Shutter().Position, pos, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// drain returns the edges queued on a pin.
func drain(p *Pin) []gpio.Level {
	var ls []gpio.Level
	for {
		select {
		case l := <-p.EdgesChan:
			ls = append(ls, l)
		default:
			return ls
		}
	}
}

func TestNewDefaults(t *testing.T) {
	b := New(Config{})
	defer b.Halt()
	if n := b.Names(); len(n) != 28 || n[0] != "GPIO0" || n[27] != "GPIO27" {
		t.Errorf("names %v", n)
	}
	if b.ByName("GPIO99") != nil {
		t.Error("ByName of a missing line must be a nil interface")
	}
	if b.Pin("GPIO17").Number() != 17 {
		t.Error("line number")
	}
	st := b.Shutter()
	want := ShutterState{Actuator: gpio.Low, Position: PosClosed, OpenSensor: gpio.High, ClosedSensor: gpio.Low}
	if st != want {
		t.Errorf("start %+v, want %+v", st, want)
	}
	if b.Pin("GPIO17").Read() != gpio.High {
		t.Error("button not released at start")
	}
}

func TestShutterPhysics(t *testing.T) {
	b := New(Config{Travel: travel})
	defer b.Halt()
	act, openS, closedS := b.Pin("GPIO24"), b.Pin("GPIO5"), b.Pin("GPIO6")
	drain(openS)
	drain(closedS)

	start := time.Now()
	if err := act.Out(gpio.High); err != nil {
		t.Fatal(err)
	}
	if st := b.Shutter(); st.Position != PosOpening || st.ClosedSensor != gpio.High || st.OpenSensor != gpio.High {
		t.Fatalf("after actuator High: %+v", st)
	}
	if e := drain(closedS); len(e) != 1 || e[0] != gpio.High {
		t.Errorf("closed sensor edges %v, want [High]", e)
	}
	waitPos(t, b, PosOpen, time.Second)
	if d := time.Since(start); d < travel {
		t.Errorf("opened after %s, travel is %s", d, travel)
	}
	if openS.Read() != gpio.Low {
		t.Error("open sensor not active")
	}
	if e := drain(openS); len(e) != 1 || e[0] != gpio.Low {
		t.Errorf("open sensor edges %v, want [Low]", e)
	}

	if err := act.Out(gpio.Low); err != nil {
		t.Fatal(err)
	}
	if st := b.Shutter(); st.Position != PosClosing || st.OpenSensor != gpio.High {
		t.Fatalf("after actuator Low: %+v", st)
	}
	waitPos(t, b, PosClosed, time.Second)
	if closedS.Read() != gpio.Low {
		t.Error("closed sensor not active")
	}
}

func TestStuckShutter(t *testing.T) {
	b := New(Config{Travel: travel})
	defer b.Halt()
	if err := b.SetFault(StuckShutter, true); err != nil {
		t.Fatal(err)
	}
	_ = b.Pin("GPIO24").Out(gpio.High)
	time.Sleep(travel + 30*time.Millisecond)
	if st := b.Shutter(); st.Position != PosClosed || st.ClosedSensor != gpio.Low {
		t.Fatalf("stuck shutter moved: %+v", st)
	}
	if err := b.SetFault(StuckShutter, false); err != nil {
		t.Fatal(err)
	}
	waitPos(t, b, PosOpen, time.Second) // follows the actuator once freed
}

func TestSensorDisagreeAndDrift(t *testing.T) {
	b := New(Config{Travel: travel})
	defer b.Halt()
	_ = b.SetFault(SensorDisagree, true)
	if st := b.Shutter(); st.OpenSensor != gpio.Low || st.ClosedSensor != gpio.Low {
		t.Fatalf("disagree: %+v", st)
	}
	_ = b.SetFault(SensorDisagree, false)
	if st := b.Shutter(); st.OpenSensor != gpio.High || st.ClosedSensor != gpio.Low {
		t.Fatalf("after disagree: %+v", st)
	}
	_ = b.SetFault(ShutterDrift, true)
	waitPos(t, b, PosOpen, time.Second)
	if b.Shutter().Actuator != gpio.Low {
		t.Error("drift changed the actuator")
	}
	_ = b.SetFault(ShutterDrift, false)
	waitPos(t, b, PosClosed, time.Second)
	if f := b.Faults(); len(f) != 0 {
		t.Errorf("faults %v", f)
	}
}

func TestSetFaultUnknown(t *testing.T) {
	b := New(Config{})
	err := b.SetFault("gremlins", true)
	if err == nil || !strings.Contains(err.Error(), "stuck_shutter") {
		t.Fatalf("error %v should list valid faults", err)
	}
	_ = b.SetFault(BouncyButtons, true)
	if f := b.Faults(); !f[BouncyButtons] || len(f) != 1 {
		t.Errorf("faults %v", f)
	}
}

func TestSetButtonBouncy(t *testing.T) {
	b := New(Config{})
	p := b.Pin("GPIO17")
	if err := b.SetButton("GPIO17", true); err != nil {
		t.Fatal(err)
	}
	if e := drain(p); len(e) != 1 || e[0] != gpio.Low || p.Read() != gpio.Low {
		t.Fatalf("clean press edges %v", e)
	}
	_ = b.SetButton("GPIO17", false)
	drain(p)
	_ = b.SetFault(BouncyButtons, true)
	_ = b.SetButton("GPIO17", true)
	e := drain(p)
	if len(e) != 5 || e[4] != gpio.Low || p.Read() != gpio.Low {
		t.Fatalf("bouncy press edges %v, want 5 ending Low", e)
	}
	if err := b.SetButton("GPIO99", true); err == nil {
		t.Error("unknown line: want error")
	}
	if err := b.SetButton("GPIO5", true); err == nil {
		t.Error("shutter line as button: want error")
	}
}

func TestPress(t *testing.T) {
	b := New(Config{})
	p := b.Pin("GPIO27")
	start := time.Now()
	if err := b.Press(context.Background(), "GPIO27", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 20*time.Millisecond {
		t.Error("Press returned before hold")
	}
	if e := drain(p); len(e) != 2 || e[0] != gpio.Low || e[1] != gpio.High {
		t.Errorf("edges %v", e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Press(ctx, "GPIO27", time.Hour); err != context.Canceled {
		t.Errorf("cancelled press: %v", err)
	}
	if p.Read() != gpio.High {
		t.Error("button left down after cancelled press")
	}
}

func TestPinInKeepsDrivenLevel(t *testing.T) {
	p := NewPin("GPIO17", 17, gpio.High)
	_ = p.In(gpio.PullDown, gpio.BothEdges)
	if p.Read() != gpio.Low {
		t.Error("undriven pin should follow the pull")
	}
	p.Drive(gpio.High)
	_ = p.In(gpio.PullDown, gpio.BothEdges)
	if p.Read() != gpio.High {
		t.Error("In overrode an externally driven level")
	}
	if len(drain(p)) != 0 {
		t.Error("In should flush queued edges")
	}
}

func TestPinHaltWakesWaiter(t *testing.T) {
	p := NewPin("GPIO17", 17, gpio.High)
	got := make(chan bool)
	go func() { got <- p.WaitForEdge(time.Hour) }()
	time.Sleep(10 * time.Millisecond)
	_ = p.Halt()
	select {
	case ok := <-got:
		if !ok {
			t.Error("WaitForEdge returned false")
		}
	case <-time.After(time.Second):
		t.Fatal("Halt did not wake WaitForEdge")
	}
	if p.WaitForEdge(5 * time.Millisecond) {
		t.Error("WaitForEdge true with no edge")
	}
}

func TestPinHistory(t *testing.T) {
	p := NewPin("GPIO18", 18, gpio.Low)
	_ = p.Out(gpio.Low) // no change: not recorded
	_ = p.Out(gpio.High)
	_ = p.Out(gpio.Low)
	h := p.History()
	if len(h) != 2 || h[0].Level != gpio.High || h[1].Level != gpio.Low || h[1].At.Before(h[0].At) {
		t.Fatalf("history %+v", h)
	}
	for i := range historyCap + 10 {
		_ = p.Out(i%2 == 0)
	}
	if n := len(p.History()); n != historyCap {
		t.Errorf("history length %d, want cap %d", n, historyCap)
	}
	p.ResetHistory()
	if len(p.History()) != 0 {
		t.Error("ResetHistory")
	}
}

func TestHaltStopsPhysics(t *testing.T) {
	b := New(Config{Travel: travel})
	_ = b.Pin("GPIO24").Out(gpio.High)
	if err := b.Halt(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(travel + 30*time.Millisecond)
	if pos := b.Shutter().Position; pos != PosOpening {
		t.Errorf("position %q, want frozen at opening", pos)
	}
}

func TestNotWired(t *testing.T) {
	b := New(Config{OpenSensor: NotWired})
	st := b.Shutter()
	if st.ClosedSensor != gpio.Low || b.Pin("GPIO5").Read() != gpio.High {
		t.Errorf("%+v", st)
	}
	_ = b.Pin("GPIO5").Out(gpio.Low) // now just an ordinary line
	if b.Shutter().Position != PosClosed {
		t.Error("unwired line affected the shutter")
	}
}
