package unit

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/internal/syncbuf"
)

// simUnit is a Unit on the simulated board, its shutter and conference
// fast, with its log.
func simUnit(t *testing.T, reset *ResetPlan) (*Unit, *syncbuf.Buffer) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	u := New(Deps{Log: slog.New(slog.NewTextHandler(logs, nil)), Simulate: true, Version: "test", Reset: reset})
	t.Cleanup(func() {
		_ = u.Close()
		if t.Failed() {
			t.Logf("unit log:\n%s", logs.String())
		}
	})
	return u, logs
}

func simConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "roomd.toml")
	text := "[sim]\ntravel = \"5ms\"\njoin_delay = \"1ms\"\n" + extra
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := config.ReadLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Local{File: f, Socket: filepath.Join(dir, "roomd.sock")}.Config(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func waitUnit(t *testing.T, u *Unit, s appliance.State) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for u.MachineStatus().State != s {
		if time.Now().After(deadline) {
			t.Fatalf("state %s, want %s", u.MachineStatus().State, s)
		}
		time.Sleep(time.Millisecond)
	}
}

func joinPin(u *Unit) string {
	for _, p := range u.Status().(Status).Pins {
		if p.Role == "join" {
			return p.Line
		}
	}
	return ""
}

// The flags win over every config: the socket, and api.http "off".
func TestLocalFlagsWin(t *testing.T) {
	c, err := Local{Socket: "/tmp/x.sock", HTTP: "off"}.Config([]byte("[log]\nlevel = \"debug\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.API.Socket != "/tmp/x.sock" || c.API.HTTP != "" || c.Log.Level != "debug" {
		t.Fatalf("api %+v log %q", c.API, c.Log.Level)
	}
}

// A config that does not open the unit leaves it on the one it ran, and
// says why.
func TestApplyFallsBackToThePreviousConfig(t *testing.T) {
	u, _ := simUnit(t, nil)
	if err := u.Apply(simConfig(t, "")); err != nil {
		t.Fatal(err)
	}
	before := joinPin(u)
	bad := simConfig(t, "[pins]\njoin = \"GPIO99\"\n")
	err := u.Apply(bad)
	if err == nil || !strings.Contains(err.Error(), "GPIO99") {
		t.Fatalf("Apply with a pin the board lacks: %v", err)
	}
	if got := joinPin(u); got != before || u.Running().Pins["join"] == "GPIO99" {
		t.Fatalf("after the failed apply join is on %s (config %v), want %s", got, u.Running().Pins, before)
	}
	waitUnit(t, u, appliance.Idle)
}

// A config change in a call hangs up first (invariant 4), waiting on the
// machine's Settled rather than polling, and streams follow the new parts.
func TestApplyInACallLeavesFirst(t *testing.T) {
	u, logs := simUnit(t, nil)
	if err := u.Apply(simConfig(t, "")); err != nil {
		t.Fatal(err)
	}
	events, cancel := u.Subscribe(64)
	defer cancel()
	ctx := context.Background()
	if err := u.Do(ctx, appliance.ActJoin, "test"); err != nil {
		t.Fatal(err)
	}
	waitUnit(t, u, appliance.InCall)
	if err := u.Apply(simConfig(t, "[pins]\njoin = \"GPIO26\"\n")); err != nil {
		t.Fatal(err)
	}
	if joinPin(u) != "GPIO26" {
		t.Fatalf("join on %s after the change", joinPin(u))
	}
	if !strings.Contains(logs.String(), "source=\"config change\"") && !strings.Contains(logs.String(), "reason=\"config change\"") {
		t.Fatalf("no LEAVE for the config change in the log:\n%s", logs.String())
	}
	hellos, left := 0, false
	timeout := time.After(5 * time.Second)
	for hellos < 2 {
		select {
		case ev := <-events:
			if ev.Type == "hello" {
				hellos++
			}
			if ev.Type == "action" && ev.Detail == string(appliance.ActLeave) {
				left = true
			}
		case <-timeout:
			t.Fatalf("the stream did not follow the new parts (hellos %d)", hellos)
		}
	}
	if !left {
		t.Fatal("the call was not left before the parts were swapped")
	}
	waitUnit(t, u, appliance.Idle)
}

// A factory reset is asked for, wiped only once the unit is closed, and
// leaves the marker for the journal's vacuum.
func TestFactoryResetWipesOnlyAfterClose(t *testing.T) {
	root := t.TempDir()
	plan := &ResetPlan{IdentityDir: filepath.Join(root, "identity"), StateDir: filepath.Join(root, "fleet")}
	for _, d := range []string{plan.IdentityDir, plan.StateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	u, _ := simUnit(t, plan)
	if err := u.Apply(simConfig(t, "")); err != nil {
		t.Fatal(err)
	}
	if err := u.FactoryReset(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-u.ResetRequested():
	case <-time.After(time.Second):
		t.Fatal("no reset request")
	}
	if err := u.Wipe(); err == nil {
		t.Fatal("Wipe ran while the unit was running")
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := u.Wipe(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{plan.IdentityDir, plan.StateDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("%s still there: %v", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, ResetMarker)); err != nil {
		t.Fatalf("no reset marker: %v", err)
	}
}

// Without a reset plan the API's factory reset is refused and the
// buttons' hold does nothing.
func TestNoResetPlanRefuses(t *testing.T) {
	u, _ := simUnit(t, nil)
	if err := u.Apply(simConfig(t, "")); err != nil {
		t.Fatal(err)
	}
	if err := u.FactoryReset(context.Background()); err == nil {
		t.Fatal("factory reset accepted without a plan")
	}
}
