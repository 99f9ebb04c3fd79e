package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/agent"
)

const rollSum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// fakeUpdater stands in for the unit's root helper konsult-update: it takes
// roomd's request and writes the state a good install (or a rollback)
// leaves, as decided by outcome for the n-th request (from 1).
type fakeUpdater struct {
	mu       sync.Mutex
	requests int
}

func (f *fakeUpdater) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

func withUpdater(t *testing.T, fu *fakeUpdater, outcome func(n int) bool) unitOpt {
	return func(o *agent.Options, _ *testUnit) {
		dir := t.TempDir()
		o.Update = &agent.UpdateOptions{Dir: dir, Poll: 50 * time.Millisecond}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go func() {
			for ctx.Err() == nil {
				time.Sleep(30 * time.Millisecond)
				b, err := os.ReadFile(filepath.Join(dir, "request"))
				if err != nil || !strings.HasPrefix(string(b), "url=") {
					continue
				}
				os.Remove(filepath.Join(dir, "request"))
				var v string
				for _, l := range strings.Split(string(b), "\n") {
					if s, ok := strings.CutPrefix(l, "version="); ok {
						v = s
					}
				}
				fu.mu.Lock()
				fu.requests++
				n := fu.requests
				fu.mu.Unlock()
				now := time.Now().UTC().Format(time.RFC3339)
				st := "phase=idle\nbooted_slot=B\nbooted_version=" + v + "\nlast_good_version=" + v + "\nlast_good_at=" + now + "\n"
				if !outcome(n) {
					st = "phase=idle\nbooted_slot=A\nbooted_version=2026.1201.1\nrolled_back_version=" + v +
						"\nrolled_back_reason=roomd is not running (after 300s on " + v + ")\nrolled_back_at=" + now + "\nlast_failure=roomd is not running\n"
				}
				tmp := filepath.Join(dir, ".state.tmp")
				if os.WriteFile(tmp, []byte(st), 0o644) == nil {
					os.Rename(tmp, filepath.Join(dir, "state"))
				}
			}
		}()
	}
}

func always(ok bool) func(int) bool { return func(int) bool { return ok } }

func (f *testFleet) rollout(args ...string) (string, error) {
	f.t.Helper()
	out, errOut, err := f.fleetctl(append([]string{"rollout", "--key", f.key}, args...)...)
	f.t.Logf("fleetctl rollout %s:\n%s%s", strings.Join(args, " "), out, errOut)
	return out + errOut, err
}

func rolloutArgs(state string, extra ...string) []string {
	return append([]string{"--group", "ward", "--version", "2026.1203.1", "--bundle", "https://updates.clinic.example/k.raucb",
		"--sha256", rollSum, "--reboot", "now", "--wave-timeout", "20s", "--state", state}, extra...)
}

// A canary that rolls back stops the rollout after the first wave: no
// other unit is sent the update.
func TestRolloutCanaryFailureStops(t *testing.T) {
	ids := []string{"room-1", "room-2", "room-3", "room-4"}
	units := map[string][]string{}
	for _, id := range ids {
		units[id] = []string{"ward"}
	}
	f := startFleet(t, units)
	ups := map[string]*fakeUpdater{}
	for i, id := range ids {
		ups[id] = &fakeUpdater{}
		f.startUnit(id, []string{"ward"}, withUpdater(t, ups[id], always(i != 0)))
	}
	state := filepath.Join(t.TempDir(), "rollout.json")
	out, err := f.rollout(rolloutArgs(state)...)
	if err == nil || !strings.Contains(out, "STOPPED: wave 1: 1 of 1 units failed") || !strings.Contains(out, "rolled back: roomd is not running") {
		t.Fatalf("rollout with a failing canary: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	for _, id := range ids[1:] {
		if n := ups[id].count(); n != 0 {
			t.Errorf("%s was sent the update %d times after the canary failed", id, n)
		}
	}
}

// A later wave over the threshold stops the rollout; resumed, it resends
// only to the units that are not good and finishes.
func TestRolloutThresholdStopsAndResumes(t *testing.T) {
	ids := []string{"room-1", "room-2", "room-3", "room-4", "room-5"}
	units := map[string][]string{}
	for _, id := range ids {
		units[id] = []string{"ward"}
	}
	f := startFleet(t, units)
	ups := map[string]*fakeUpdater{}
	for _, id := range ids {
		ups[id] = &fakeUpdater{}
		ok := always(true)
		if id == "room-3" {
			ok = func(n int) bool { return n > 1 } // the first download was bad
		}
		f.startUnit(id, []string{"ward"}, withUpdater(t, ups[id], ok))
	}
	state := filepath.Join(t.TempDir(), "rollout.json")
	out, err := f.rollout(rolloutArgs(state, "--waves", "1,100%", "--threshold", "10%")...)
	if err == nil || !strings.Contains(out, "STOPPED: wave 2: 1 of 4 units failed") {
		t.Fatalf("rollout with 25%% failing in wave 2: %v", err)
	}
	var o, e bytes.Buffer
	err = run(context.Background(), []string{"rollout", "status", "--state", state}, &o, &e)
	st := o.String() + e.String()
	if err != nil || !strings.Contains(st, "wave 1  [####################] 1/1 good") || !strings.Contains(st, "3/4 good, 1 failed") {
		t.Fatalf("rollout status after the stop: %v\n%s", err, st)
	}
	// fleetctl status shows each unit's system and the rollback.
	sout, serr, err := f.fleetctl("status")
	if err != nil {
		t.Fatalf("fleetctl status: %v %s", err, serr)
	}
	for _, l := range strings.Split(sout, "\n") {
		switch {
		case strings.HasPrefix(l, "room-3 "):
			if !strings.Contains(l, "2026.1201.1 (A)") || !strings.Contains(l, "rolled back update 2026.1203.1: roomd is not running") {
				t.Errorf("fleetctl status for the unit that rolled back: %q", l)
			}
		case strings.HasPrefix(l, "room-"):
			if !strings.Contains(l, "2026.1203.1 (B)") || strings.Contains(l, "rolled back") {
				t.Errorf("fleetctl status for a unit that took the update: %q", l)
			}
		}
	}
	out, err = f.rollout("--resume", "--state", state)
	if err != nil || !strings.Contains(out, "done: every unit reports the version good") {
		t.Fatalf("resumed rollout: %v", err)
	}
	for _, id := range ids {
		want := 1
		if id == "room-3" {
			want = 2
		}
		if n := ups[id].count(); n != want {
			t.Errorf("%s got the update %d times, want %d", id, n, want)
		}
	}
}

// A wave goes out at once: fleetctl sends a wave's commands on one broker
// connection and waits for the whole wave together, instead of a
// connection, a view of the whole fleet and up to 15 s of waiting per unit
// (a thousand-unit wave took hours that way). Counted from Mosquitto's
// own connection log.
func TestRolloutWaveSentOnOneConnection(t *testing.T) {
	var ids []string
	units := map[string][]string{}
	for i := 1; i <= 8; i++ {
		id := fmt.Sprintf("room-%d", i)
		ids = append(ids, id)
		units[id] = []string{"ward"}
	}
	f := startFleet(t, units)
	ups := map[string]*fakeUpdater{}
	for _, id := range ids {
		ups[id] = &fakeUpdater{}
		f.startUnit(id, []string{"ward"}, withUpdater(t, ups[id], always(true)))
	}
	before := strings.Count(f.b.Log(), "as konsult/fleetctl/")
	state := filepath.Join(t.TempDir(), "rollout.json")
	out, err := f.rollout(rolloutArgs(state, "--waves", "1,100%")...)
	if err != nil || !strings.Contains(out, "done: every unit reports the version good") {
		t.Fatalf("rollout: %v", err)
	}
	for _, id := range ids {
		if n := ups[id].count(); n != 1 {
			t.Errorf("%s got the update %d times, want 1", id, n)
		}
	}
	// The first view, then per wave one connection to send and one to
	// watch: 5. One per unit would be 11.
	if n := strings.Count(f.b.Log(), "as konsult/fleetctl/") - before; n > 5 {
		t.Errorf("fleetctl connected %d times for 2 waves of 8 units; want at most 5 (one send and one watch a wave)", n)
	}
}
