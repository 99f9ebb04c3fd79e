package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/hal/sim"
)

// benchUnit is the whole simulated unit in-process (sim board, debounced
// buttons, machine, LED, gate), so latencies are measured from the GPIO edge.
func benchUnit(b *testing.B, debounce time.Duration) (*unit, func()) {
	b.Helper()
	cfg, err := loadConfig("")
	if err != nil {
		b.Fatal(err)
	}
	cfg.Buttons.Debounce.Duration = debounce
	cfg.Sim.Travel.Duration = 5 * time.Millisecond
	cfg.Sim.JoinDelay.Duration = time.Millisecond
	u, err := openUnit(cfg, true, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.machine.Run(ctx) }()
	u.pumpButtons(ctx)
	<-u.machine.Ready()
	return u, func() { cancel(); <-done; u.halt() }
}

func (u *unit) line(r board.Role) string { return u.profile.Pins[r] }

func waitState(b *testing.B, u *unit, s appliance.State) {
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

func pressRelease(b *testing.B, u *unit, r board.Role, down bool) {
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

// BenchmarkStartToReady: `roomd --sim` as a process, from exec to "roomd
// ready" on stdout; also reports its idle resident memory.
func BenchmarkStartToReady(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "roomd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	var total time.Duration
	var rssKB int
	i := 0
	for b.Loop() {
		i++
		sock := filepath.Join(dir, "s"+strconv.Itoa(i))
		cmd := exec.Command(bin, "--sim", "--socket", sock, "--http", "off")
		out, _ := cmd.StdoutPipe()
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() && !strings.HasPrefix(sc.Text(), "roomd ready") {
		}
		total += time.Since(start)
		if i == 1 {
			time.Sleep(time.Second) // settle, then measure idle memory
			rssKB = vmRSS(b, cmd.Process.Pid)
		}
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/start→ready")
	b.ReportMetric(float64(rssKB), "idle-RSS-KB")
}

func vmRSS(b *testing.B, pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}
