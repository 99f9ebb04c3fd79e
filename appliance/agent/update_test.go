package agent_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/provisioning/fleet"
)

const bundleSum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// updateUnit is a unit with an update folder; window is its
// update.reboot_window and now its clock.
func updateUnit(t *testing.T, window string, now time.Time) (*unit, string) {
	t.Helper()
	u := newUnit(t)
	dir := filepath.Join(t.TempDir(), "update")
	u.opts.Update = &agent.UpdateOptions{Dir: dir, Poll: 50 * time.Millisecond,
		RunningVersion: func() string { return "2026.1201.1\n" },
		Window:         func() string { return window },
		Now:            func() time.Time { return now },
	}
	return u, dir
}

// sendUpdate publishes a signed update command and returns its answer.
func sendUpdate(u *unit, args map[string]any) (string, fleet.CommandResult) {
	u.T.Helper()
	for i := 0; i < 250 && !u.agent.Connected(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	raw := map[string]json.RawMessage{}
	for k, v := range args {
		b, _ := json.Marshal(v)
		raw[k] = b
	}
	// Signed without fleetctl's checks: the unit must refuse on its own.
	p := fleet.CommandPayload{Kind: fleet.KindCommand, Name: fleet.CommandUpdate, Args: raw, Nonce: fleet.NewNonce(),
		IssuedAt: time.Now().Add(-time.Minute), ExpiresAt: time.Now().Add(time.Minute), Target: fleet.Target{Device: unitID}}
	b, _ := json.Marshal(p)
	u.Publish(topics.DeviceCmd(unitID), false, fleet.Sign(u.Key, fleet.DomainCommand, b).Marshal())
	deadline := time.After(5 * time.Second)
	for {
		for _, e := range u.Events() {
			var d fleet.CommandResult
			if (e.Type == fleet.EventCommandDone || e.Type == fleet.EventCommandRefused) && json.Unmarshal(e.Data, &d) == nil && d.Nonce == p.Nonce {
				return e.Type, d
			}
		}
		select {
		case <-deadline:
			u.T.Fatalf("no answer to the update command; events: %s", u.Types())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func goodUpdate() map[string]any {
	return map[string]any{"url": "https://updates.clinic.example/konsult-2026.1203.1.raucb", "version": "2026.1203.1", "sha256": bundleSum, "reboot": "now"}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func TestUpdateCommandWritesRequestWhileIdle(t *testing.T) {
	u, dir := updateUnit(t, "", time.Now())
	u.start()
	typ, res := sendUpdate(u, goodUpdate())
	if typ != fleet.EventCommandDone || !strings.HasPrefix(res.Message, "requested") {
		t.Fatalf("answer %s %+v, want command_done requested", typ, res)
	}
	want := "url=https://updates.clinic.example/konsult-2026.1203.1.raucb\nsha256=" + bundleSum + "\nversion=2026.1203.1\nid="
	if got := readFile(filepath.Join(dir, "request")); !strings.HasPrefix(got, want) || requestID(got) == "" {
		t.Fatalf("request = %q, want %q and an id", got, want)
	}
	u.WaitEvent(fleet.EventUpdateRequested, 2*time.Second)
	if rep := u.agent.Reported().Update; rep == nil || rep.Requested != "2026.1203.1" {
		t.Fatalf("reported update = %+v, want requested 2026.1203.1", rep)
	}
}

func TestUpdateCommandRefusesBadArguments(t *testing.T) {
	u, dir := updateUnit(t, "", time.Now())
	u.start()
	cases := []struct {
		name   string
		change func(map[string]any)
		reason string
		msg    string
	}{
		{"http", func(m map[string]any) { m["url"] = "http://updates.clinic.example/b.raucb" }, "schema", "https"},
		{"credentials", func(m map[string]any) { m["url"] = "https://user:pw@updates.clinic.example/b.raucb" }, "schema", "user name or password"},
		{"presigned query", func(m map[string]any) {
			m["url"] = "https://bucket.example/b.raucb?X-Amz-Signature=0123abcd&X-Amz-Credential=AKIA"
		}, "schema", "query or fragment"},
		{"fragment", func(m map[string]any) { m["url"] = "https://updates.clinic.example/b.raucb#t=1" }, "schema", "query or fragment"},
		{"newline", func(m map[string]any) { m["url"] = "https://u.example/b\nreboot=only" }, "schema", "control characters"},
		{"short hash", func(m map[string]any) { m["sha256"] = bundleSum[:63] }, "schema", "64 lowercase hex"},
		{"upper hash", func(m map[string]any) { m["sha256"] = strings.ToUpper(bundleSum) }, "schema", "64 lowercase hex"},
		{"no version", func(m map[string]any) { delete(m, "version") }, "schema", "version"},
		{"bad version", func(m map[string]any) { m["version"] = "2026.12-rc1" }, "schema", "dotted version"},
		{"bad reboot", func(m map[string]any) { m["reboot"] = "later" }, "schema", `"now" or "window"`},
		{"bad downgrade", func(m map[string]any) { m["downgrade"] = "yes" }, "schema", "true or false"},
		{"extra", func(m map[string]any) { m["script"] = "x" }, "schema", "no argument"},
		{"older", func(m map[string]any) { m["version"] = "2026.1130.1" }, "failed", "not newer than the running 2026.1201.1"},
	}
	for _, c := range cases {
		args := goodUpdate()
		c.change(args)
		typ, res := sendUpdate(u, args)
		if typ != fleet.EventCommandRefused || res.Reason != c.reason || !strings.Contains(res.Message, c.msg) {
			t.Errorf("%s: answer %s %q %q, want refused %s containing %q", c.name, typ, res.Reason, res.Message, c.reason, c.msg)
		}
		if strings.Contains(res.Message, "pw@") || strings.Contains(res.Message, "updates.clinic") || strings.Contains(res.Message, "0123abcd") {
			t.Errorf("%s: the refusal quotes the url: %q", c.name, res.Message)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "request")); !os.IsNotExist(err) {
		t.Fatalf("a refused command wrote a request (%v): %q", err, readFile(filepath.Join(dir, "request")))
	}
	// A downgrade said so is taken.
	args := goodUpdate()
	args["version"], args["downgrade"] = "2026.1130.1", true
	if typ, res := sendUpdate(u, args); typ != fleet.EventCommandDone {
		t.Fatalf("downgrade: answer %s %+v, want done", typ, res)
	}
}

func TestUpdateDeferredDuringCallTakenAtItsEnd(t *testing.T) {
	u, dir := updateUnit(t, "", time.Now())
	u.start()
	u.app.emit(appliance.Event{Type: "state", State: appliance.InCall})
	typ, res := sendUpdate(u, goodUpdate())
	if typ != fleet.EventCommandDone || !strings.HasPrefix(res.Message, "deferred") {
		t.Fatalf("answer %s %+v, want done deferred", typ, res)
	}
	time.Sleep(300 * time.Millisecond) // several polls: none may write it
	if _, err := os.Stat(filepath.Join(dir, "request")); !os.IsNotExist(err) {
		t.Fatalf("the request was written during the call")
	}
	if rep := u.agent.Reported().Update; rep == nil || !rep.Deferred || rep.Requested != "2026.1203.1" {
		t.Fatalf("reported update = %+v, want deferred 2026.1203.1", rep)
	}
	u.app.emit(appliance.Event{Type: "state", State: appliance.Idle})
	ev := u.WaitEvent(fleet.EventUpdateRequested, 2*time.Second)
	var d fleet.UpdateEvent
	if json.Unmarshal(ev.Data, &d); !d.Deferred || d.Version != "2026.1203.1" {
		t.Fatalf("update_requested = %s", ev.Data)
	}
	if got := readFile(filepath.Join(dir, "request")); !strings.HasPrefix(got, "url=https://") {
		t.Fatalf("request after the call = %q", got)
	}
}

// installed makes the state file say konsult-update installed version v.
func installed(t *testing.T, dir, v string) {
	t.Helper()
	st := "phase=installed\npending_version=" + v + "\npending_slot=B\nfrom_version=2026.1201.1\nfrom_slot=A\nbooted_slot=A\nbooted_version=2026.1201.1\n"
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte(st), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "request")) // konsult-update takes it away
}

func TestUpdateRebootWaitsForIdleAndWindow(t *testing.T) {
	noon := time.Date(2026, 12, 2, 12, 0, 0, 0, time.Local)
	u, dir := updateUnit(t, "02:00-04:00", noon)
	u.start()
	args := goodUpdate()
	args["reboot"] = "window"
	if typ, res := sendUpdate(u, args); typ != fleet.EventCommandDone || !strings.Contains(res.Message, "02:00-04:00") {
		t.Fatalf("answer %s %+v", typ, res)
	}
	installed(t, dir, "2026.1203.1")
	time.Sleep(300 * time.Millisecond)
	if got := readFile(filepath.Join(dir, "request")); got != "" {
		t.Fatalf("outside the window the unit asked %q", got)
	}
	if rep := u.agent.Reported().Update; rep == nil || rep.RebootWaiting != "the maintenance window 02:00-04:00" || rep.Slots["B"] != "2026.1203.1" || rep.Slots["A"] != "2026.1201.1" {
		t.Fatalf("reported update = %+v", rep)
	}
}

func TestUpdateRebootNowWaitsForTheCall(t *testing.T) {
	u, dir := updateUnit(t, "02:00-04:00", time.Date(2026, 12, 2, 12, 0, 0, 0, time.Local))
	u.start()
	if typ, res := sendUpdate(u, goodUpdate()); typ != fleet.EventCommandDone {
		t.Fatalf("answer %s %+v", typ, res)
	}
	u.app.emit(appliance.Event{Type: "state", State: appliance.InCall})
	installed(t, dir, "2026.1203.1")
	time.Sleep(300 * time.Millisecond)
	if got := readFile(filepath.Join(dir, "request")); got != "" {
		t.Fatalf("during the call the unit asked %q", got)
	}
	u.app.emit(appliance.Event{Type: "state", State: appliance.Idle})
	eventually(t, 2*time.Second, "reboot=only requested after the call", func() bool {
		return strings.HasPrefix(readFile(filepath.Join(dir, "request")), "reboot=only\nid=")
	})
}

// requestID is the id= of a request roomd wrote.
func requestID(req string) string {
	for _, l := range strings.Split(req, "\n") {
		if id, ok := strings.CutPrefix(l, "id="); ok {
			return id
		}
	}
	return ""
}

func writeState(t *testing.T, dir, st string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte(st), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A call that started before konsult-update could take the call lock
// deferred the reboot (reboot_deferred names roomd's reboot request): the
// unit asks again once it is idle, and only then. A deferral that names
// another request is not this unit's to answer.
func TestUpdateRebootAskedAgainAfterADeferral(t *testing.T) {
	u, dir := updateUnit(t, "", time.Now())
	u.start()
	if typ, res := sendUpdate(u, goodUpdate()); typ != fleet.EventCommandDone {
		t.Fatalf("answer %s %+v", typ, res)
	}
	installed(t, dir, "2026.1203.1")
	var first string
	eventually(t, 2*time.Second, "the reboot asked for", func() bool {
		first = requestID(readFile(filepath.Join(dir, "request")))
		return first != ""
	})
	os.Remove(filepath.Join(dir, "request"))
	base := "phase=installed\npending_version=2026.1203.1\npending_slot=B\nbooted_slot=A\nbooted_version=2026.1201.1\n"
	writeState(t, dir, base+"reboot_deferred=0000\n")
	time.Sleep(300 * time.Millisecond)
	if got := readFile(filepath.Join(dir, "request")); got != "" {
		t.Fatalf("a deferral of another request made the unit ask %q", got)
	}
	u.app.emit(appliance.Event{Type: "state", State: appliance.InCall})
	writeState(t, dir, base+"reboot_deferred="+first+"\n")
	time.Sleep(300 * time.Millisecond)
	if got := readFile(filepath.Join(dir, "request")); got != "" {
		t.Fatalf("during the call that deferred the reboot the unit asked %q", got)
	}
	u.app.emit(appliance.Event{Type: "state", State: appliance.Idle})
	eventually(t, 2*time.Second, "the reboot asked for again after the call", func() bool {
		id := requestID(readFile(filepath.Join(dir, "request")))
		return id != "" && id != first
	})
}

// konsult-update refused the install (failed_request names roomd's
// request): the unit no longer shows that version as requested, and the
// refusal's reason is the reported last failure.
func TestUpdateRefusedIsNoLongerRequested(t *testing.T) {
	u, dir := updateUnit(t, "", time.Now())
	u.start()
	if typ, res := sendUpdate(u, goodUpdate()); typ != fleet.EventCommandDone {
		t.Fatalf("answer %s %+v", typ, res)
	}
	id := requestID(readFile(filepath.Join(dir, "request")))
	if rep := u.agent.Reported().Update; rep == nil || rep.Requested != "2026.1203.1" {
		t.Fatalf("reported update = %+v, want requested", rep)
	}
	os.Remove(filepath.Join(dir, "request"))
	writeState(t, dir, "phase=idle\nbooted_slot=A\nbooted_version=2026.1201.1\npending_version=\n"+
		"last_failure=the bundle's payload does not match its signature\nlast_failure_at=2026-12-03T09:00:00Z\nfailed_request="+id+"\n")
	eventually(t, 3*time.Second, "the refused version no longer requested", func() bool {
		r := u.Reported(unitID).Update
		return r != nil && r.Requested == "" && strings.Contains(r.LastFailure, "does not match its signature")
	})
	if rep := u.agent.Reported().Update; rep.Requested != "" || rep.RebootWaiting != "" {
		t.Fatalf("reported update after the refusal = %+v", rep)
	}
}

func TestUpdateRolledBackReportedOnce(t *testing.T) {
	u, dir := updateUnit(t, "", time.Now())
	st := "phase=idle\nbooted_slot=A\nbooted_version=2026.1201.1\nrolled_back_version=2026.1203.1\n" +
		"rolled_back_reason=roomd is not running (after 300s on 2026.1203.1)\nrolled_back_at=2026-12-02T03:10:00Z\nlast_failure=roomd is not running (after 300s on 2026.1203.1)\n"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte(st), 0o644); err != nil {
		t.Fatal(err)
	}
	u.start()
	ev := u.WaitEvent(fleet.EventUpdateRolledBack, 3*time.Second)
	var rb fleet.UpdateRollback
	if err := json.Unmarshal(ev.Data, &rb); err != nil || rb.Version != "2026.1203.1" || rb.Slot != "B" || !strings.Contains(rb.Reason, "roomd is not running") {
		t.Fatalf("update_rolled_back = %s (%v)", ev.Data, err)
	}
	eventually(t, 3*time.Second, "reported rolled back", func() bool {
		r := u.Reported(unitID).Update
		return r != nil && r.RolledBack != nil && r.RolledBack.Version == "2026.1203.1" && r.LastFailure != ""
	})
	// A restart does not report it again.
	u.stop()
	u.start()
	time.Sleep(500 * time.Millisecond)
	if n := u.Count(fleet.EventUpdateRolledBack); n != 1 {
		t.Fatalf("update_rolled_back sent %d times, want once", n)
	}
}

// The fleet sees an update's progress: the reported document follows
// konsult-update's state file without any command.
func TestUpdateProgressReported(t *testing.T) {
	u, dir := updateUnit(t, "", time.Now())
	u.start()
	eventually(t, 5*time.Second, "connected", u.agent.Connected)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, phase := range []string{"downloading", "installing", "installed"} {
		st := "phase=" + phase + "\npending_version=2026.1203.1\nbooted_slot=A\nbooted_version=2026.1201.1\n"
		if err := os.WriteFile(filepath.Join(dir, "state"), []byte(st), 0o644); err != nil {
			t.Fatal(err)
		}
		eventually(t, 3*time.Second, "reported phase "+phase, func() bool {
			r := u.Reported(unitID).Update
			return r != nil && r.Phase == phase && r.PendingVersion == "2026.1203.1" && r.BootedVersion == "2026.1201.1"
		})
	}
}
