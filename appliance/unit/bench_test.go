package unit

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/hal/sim"
)

// benchUnit is the whole simulated unit in-process (sim board, debounced
// buttons, machine, LED, gate), so latencies are measured from the GPIO edge.
func benchUnit(b *testing.B, debounce time.Duration) (*parts, func()) {
	b.Helper()
	cfg, err := config.Load("")
	if err != nil {
		b.Fatal(err)
	}
	cfg.Buttons.Debounce.Duration = debounce
	cfg.Sim.Travel.Duration = 5 * time.Millisecond
	cfg.Sim.JoinDelay.Duration = time.Millisecond
	u := New(Deps{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Simulate: true})
	if err := u.Apply(cfg); err != nil {
		b.Fatal(err)
	}
	return u.parts(), func() { _ = u.Close() }
}

func (p *parts) line(r board.Role) string { return p.profile.Pins[r] }

func waitState(b *testing.B, u *parts, s appliance.State) {
	deadline := time.Now().Add(5 * time.Second)
	for u.machine.Status().State != s {
		if time.Now().After(deadline) {
			b.Fatalf("state %s, want %s", u.machine.Status().State, s)
		}
		time.Sleep(time.Millisecond)
	}
}

func firstHigh(b *testing.B, p *sim.Pin) time.Time {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, c := range p.History() {
			if c.Level == gpio.High {
				return c.At
			}
		}
		time.Sleep(time.Millisecond)
	}
	b.Fatal("LED never lit")
	return time.Time{}
}

func pressRelease(b *testing.B, u *parts, r board.Role, down bool) {
	if err := u.simBoard.SetButton(u.line(r), down); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkButtonEdgeToLED: JOIN pressed (GPIO edge) → the LED line changes
// (off → busy blink). Includes the debounce time.
func BenchmarkButtonEdgeToLED(b *testing.B) {
	for _, db := range []time.Duration{30 * time.Millisecond, time.Millisecond} {
		b.Run("debounce="+db.String(), func(b *testing.B) {
			u, stop := benchUnit(b, db)
			defer stop()
			ledPin := u.simBoard.Pin(u.line(board.LED))
			var total time.Duration
			for b.Loop() {
				waitState(b, u, appliance.Idle)
				ledPin.ResetHistory()
				start := time.Now()
				pressRelease(b, u, board.Join, true)
				// The sim pin stamps every change; wait coarsely, measure exactly.
				lit := firstHigh(b, ledPin)
				total += lit.Sub(start)
				pressRelease(b, u, board.Join, false)
				waitState(b, u, appliance.InCall)
				pressRelease(b, u, board.Leave, true)
				time.Sleep(2*db + 5*time.Millisecond)
				pressRelease(b, u, board.Leave, false)
				time.Sleep(2*db + 5*time.Millisecond)
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs/edge→LED")
		})
	}
}

// BenchmarkButtonEdgeToGate: PRIVACY pressed in a call (GPIO edge) → the
// privacy gate has shut (no frame can reach an encoder any more).
func BenchmarkButtonEdgeToGate(b *testing.B) {
	for _, db := range []time.Duration{30 * time.Millisecond, time.Millisecond} {
		b.Run("debounce="+db.String(), func(b *testing.B) {
			u, stop := benchUnit(b, db)
			defer stop()
			pressRelease(b, u, board.Join, true)
			waitState(b, u, appliance.InCall)
			pressRelease(b, u, board.Join, false)
			var total time.Duration
			for b.Loop() {
				for !u.gate.State().Video { // wait until live again
					time.Sleep(time.Millisecond)
				}
				changed := u.gate.Changed()
				start := time.Now()
				pressRelease(b, u, board.Privacy, true)
				<-changed
				total += time.Since(start)
				if u.gate.State().Live() {
					b.Fatal("privacy did not shut the gate")
				}
				pressRelease(b, u, board.Privacy, false)
				time.Sleep(2*db + 5*time.Millisecond)
				pressRelease(b, u, board.Privacy, true) // privacy off again
				time.Sleep(2*db + 5*time.Millisecond)
				pressRelease(b, u, board.Privacy, false)
				time.Sleep(2*db + 5*time.Millisecond) // else the next press is a bounce
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs/edge→gate")
		})
	}
}
