package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/provisioning/fleet"
)

var killCount = flag.Int("kill-count", 200, "how many times TestFleetKill9 SIGKILLs roomd (the issue asks for at least 200)")

// joinLine is the join button's pin in config version v; every version
// moves it, so the local status tells which config the unit runs.
func joinLine(v int) string {
	lines := []string{"GPIO26", "GPIO16", "GPIO20", "GPIO21", "GPIO12", "GPIO13"}
	return lines[v%len(lines)]
}

// TestFleetKill9 runs the real roomd binary against real Mosquitto, pushes
// a new config at every start and SIGKILLs roomd at random moments: during
// startup, while the config arrives, while it is stored, while the unit is
// re-opened, before and after it is confirmed. Every time roomd must come
// back up on a valid config, the old or the new one, and report which.
func TestFleetKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds roomd and kills it hundreds of times")
	}
	f := newFleetSide(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "roomd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build roomd: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "roomd.toml")
	if err := os.WriteFile(cfgPath, []byte(f.unitConfig(filepath.Join(dir, "state"))), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "roomd.sock")
	api := localapi.Dial(sock)
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d, %d kills", seed, *killCount)

	pushed := 0  // latest version published
	applied := 0 // lowest version the unit may report: it never goes back
	var kills, earlyKills, rolledBack, ready, broken int
	begin := time.Now()
	type proc struct {
		cmd    *exec.Cmd
		exited chan struct{}
	}
	start := func() (proc, *syncbuf.Buffer) {
		logs := &syncbuf.Buffer{}
		cmd := exec.Command(bin, "--sim", "--config", cfgPath, "--socket", sock, "--http", "off")
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := proc{cmd, make(chan struct{})}
		go func() { _ = cmd.Wait(); close(p.exited) }()
		return p, logs
	}
	kill := func(p proc) {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		kills++
	}
	waitReady := func(p proc, logs *syncbuf.Buffer, i int) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !strings.Contains(logs.String(), "roomd ready") {
			exited := false
			select {
			case <-p.exited:
				exited = true
			default:
			}
			if exited || time.Now().After(deadline) {
				kill(p)
				t.Fatalf("kill %d: roomd did not come back up after %d kills:\n%s", i, kills, logs)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	// check reads the unit's status and checks it runs a config that was
	// pushed, no older than the last one it ran, and that what it runs
	// matches what it reports. Right after a start the agent may be applying
	// the retained config just then, which for a moment shows the new
	// version with the old pins; a crash that left them apart would not
	// heal, so the check waits up to 2 s for them to agree.
	check := func(i int, logs *syncbuf.Buffer) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			problem, v, rb := checkOnce(t, api, applied, pushed)
			if problem == "" {
				applied = v
				if rb {
					rolledBack++
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: %s\nroomd log:\n%s", i, problem, logs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	for i := 1; i <= *killCount; i++ {
		cmd, logs := start()
		if rng.IntN(5) == 0 {
			// During startup: opening the store, booting on a pending
			// config, rolling back, connecting.
			time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
			kill(cmd)
			earlyKills++
			continue
		}
		waitReady(cmd, logs, i)
		ready++
		check(i, logs)
		pushed++
		toml := fmt.Sprintf("[pins]\njoin = %q\n", joinLine(pushed))
		if rng.IntN(25) == 0 {
			// A config that loses the broker: the unit must roll it back,
			// by the confirm timeout or, killed again and again, at boot.
			toml += "[fleet]\nbroker = \"mqtts://127.0.0.1:1\"\n"
			broken++
		}
		f.push(signed{version: uint64(pushed), target: devTarget, toml: toml})
		time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
		kill(cmd)
	}

	// Once left alone, the unit settles on the newest config and confirms it.
	cmd, logs := start()
	defer kill(cmd)
	waitReady(cmd, logs, *killCount+1)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var s status
		if err := api.Status(context.Background(), &s); err != nil {
			t.Fatal(err)
		}
		v := int(s.Fleet.Versions["device:room-1"])
		onLastGood := s.Fleet.LastRollback != nil && s.Fleet.LastRollback.ToGeneration == s.Fleet.Generation
		settled := v == pushed && !s.Fleet.Pending && s.Fleet.Connected && (pin(s, "join") == joinLine(pushed) || onLastGood)
		if settled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the kills the unit did not settle on version %d: reports %d, pending %v, join %s\n%s",
				pushed, v, s.Fleet.Pending, pin(s, "join"), logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.WaitEvent(fleet.EventStarted, 10*time.Second)
	t.Logf("%d kills (%d during startup) in %s; %d starts checked, %d of them after a rollback; %d versions pushed, %d of them losing the broker; %d started and %d config_rolled_back events reached the fleet",
		kills, earlyKills, time.Since(begin).Round(time.Millisecond), ready, rolledBack, pushed, broken,
		f.Distinct(fleet.EventStarted), f.Distinct(fleet.EventConfigRolledBack))
}

// checkOnce reads the status once; it returns what is wrong ("" if
// nothing), the version the unit reports and whether it is on a rolled-back
// config.
func checkOnce(t *testing.T, api *localapi.Client, applied, pushed int) (string, int, bool) {
	t.Helper()
	var s status
	if err := api.Status(context.Background(), &s); err != nil {
		return fmt.Sprintf("status: %v", err), 0, false
	}
	if s.Fleet == nil {
		return "no fleet in the status", 0, false
	}
	v := int(s.Fleet.Versions["device:room-1"])
	if v < applied || v > pushed {
		return fmt.Sprintf("reports version %d, want the old (%d) or a newer pushed one (up to %d)", v, applied, pushed), v, false
	}
	got := pin(s, "join")
	switch {
	case v == 0:
		if got != "GPIO17" {
			return fmt.Sprintf("no config applied, yet join is on %s", got), v, false
		}
	case s.Fleet.LastRollback != nil && s.Fleet.LastRollback.ToGeneration == s.Fleet.Generation:
		// On the last known good: some earlier config.
		for w := 0; w <= v; w++ {
			if w == 0 && got == "GPIO17" || w > 0 && got == joinLine(w) {
				return "", v, true
			}
		}
		return fmt.Sprintf("rolled back, but join is on %s, which no earlier config set", got), v, true
	case got != joinLine(v):
		return fmt.Sprintf("reports version %d but runs join on %s, want %s", v, got, joinLine(v)), v, false
	}
	return "", v, false
}
