package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/provisioning/link"
)

// startWatch runs fleetctl watch in the background and waits until it is
// subscribed. The returned func waits for it to end.
func (f *testFleet) startWatch(args ...string) (stdout *syncbuf.Buffer, wait func() error) {
	t := f.t
	t.Helper()
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	go func() { done <- run(ctx, append(append([]string{"watch"}, args...), f.conn()...), stdout, stderr) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "watching events of") {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("watch ended early: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch never subscribed: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return stdout, func() error {
		defer cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			t.Fatalf("watch did not stop; so far:\n%s", stdout.String())
		}
		return nil
	}
}

func TestWatchAGroup(t *testing.T) {
	units := map[string][]string{"room-11": {"clinic-a"}, "room-20": {"clinic-b"}}
	f := startFleet(t, units)
	f.startUnit("room-11", units["room-11"])
	f.startUnit("room-20", units["room-20"])
	out, wait := f.startWatch("--group", "clinic-a", "--count", "3")

	// QoS 1 may deliver an event twice; both copies carry the same id.
	admin := f.b.Client(t, "fleet-admin")
	dup := `{"id":"5f1c0de5a1","type":"button","at":"2026-11-23T10:00:00Z","data":{"which":"join","kind":"down"}}`
	for range 2 {
		tok := admin.Publish(link.Topics{}.Events("room-11"), 1, false, dup)
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	if _, _, err := f.fleetctl("cmd", "--key", f.key, "--device", "room-20", "identify"); err != nil {
		t.Fatalf("cmd identify room-20: %v", err)
	}
	if _, _, err := f.fleetctl("cmd", "--key", f.key, "--device", "room-11", "identify", "--seconds", "2"); err != nil {
		t.Fatalf("cmd identify room-11: %v", err)
	}
	if _, _, err := f.fleetctl("push", "--key", f.key, "--group", "clinic-a", "--version", "1", writeConfig(t, "[call]\nmax_length = \"1h\"\n")); err != nil {
		t.Fatalf("push: %v", err)
	}
	if err := wait(); err != nil {
		t.Fatalf("watch: %v", err)
	}
	// watch ran while cmd and push connected as the same fleet manager:
	// each fleetctl has a client id of its own, none closed another.
	if log := f.b.Log(); strings.Contains(log, "already connected, closing old connection") {
		t.Fatalf("one fleetctl threw another off the broker:\n%s", log)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	t.Logf("fleetctl watch --group clinic-a:\n%s", out.String())
	if len(lines) != 3 {
		t.Fatalf("watch printed %d lines, want 3 (the duplicate dropped, room-20 left out):\n%s", len(lines), out.String())
	}
	for i, want := range [][]string{
		{"room-11", "button", "kind=down which=join"},
		{"room-11", "command_done", "name=identify", "nonce="},
		{"room-11", "config_applied", "target=group:clinic-a", "version=1"},
	} {
		f := strings.Fields(lines[i])
		if len(f) < 4 || f[2] != want[0] || f[3] != want[1] {
			t.Errorf("line %d %q: want unit %s, type %s", i, lines[i], want[0], want[1])
		}
		for _, w := range want[2:] {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q does not show %s", i, lines[i], w)
			}
		}
	}
	if !strings.HasPrefix(lines[0], time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC).Local().Format("2006-01-02 15:04:05")) {
		t.Errorf("line 0 does not start with the unit's time: %q", lines[0])
	}
}

func TestWatchTypeAsJSON(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	f.startUnit("room-12", nil)
	out, wait := f.startWatch("--device", "room-12", "--type", "config_rejected,config_applied", "--count", "1", "--json")
	if _, _, err := f.fleetctl("cmd", "--key", f.key, "--device", "room-12", "identify"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "7", writeConfig(t, "[conference]\nroom = \"x\"\n")); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	var ev struct {
		Unit string
		ID   string
		Type string
		At   time.Time
		Data struct {
			Target  string
			Version uint64
		}
	}
	if err := json.Unmarshal([]byte(out.String()), &ev); err != nil {
		t.Fatalf("watch --json printed %q: %v", out.String(), err)
	}
	if ev.Unit != "room-12" || ev.Type != "config_applied" || ev.ID == "" || ev.At.IsZero() || ev.Data.Target != "device:room-12" || ev.Data.Version != 7 {
		t.Fatalf("event %+v", ev)
	}
}

// A connection that drops mid-watch comes back by itself.
func TestWatchSurvivesABrokerRestart(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	f.startUnit("room-12", nil)
	out, wait := f.startWatch("--device", "room-12", "--type", "command_done", "--count", "1")
	f.b.Stop()
	f.b.Restart()
	// The unit and watch reconnect with backoff; send until it is seen.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "command_done") && time.Now().Before(deadline) {
		f.fleetctl("cmd", "--key", f.key, "--device", "room-12", "report-now", "--wait", "2s")
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "name=report-now") {
		t.Fatalf("after the restart watch printed %q", out.String())
	}
}
