package agent_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/fleet"
)

var (
	dev = fleet.Target{Device: unitID}
	grp = fleet.Target{Group: group}
)

// A group config and a device config merge into the effective config the
// unit runs; each apply is reported with its target, version and
// generation, and the reported document lists the versions.
func TestPushToGroupAndDeviceMerges(t *testing.T) {
	u := newUnit(t)
	if got := u.start(); got != "" {
		t.Fatalf("fresh unit applied %q, want the local config only (empty)", got)
	}
	st := fleettest.Data[fleet.Started](t, u.WaitEvent(fleet.EventStarted, 5*time.Second))
	if st.Generation != 0 || st.Pending || st.RolledBack || st.Version != "test-1" {
		t.Fatalf("started = %+v, want generation 0, not pending, not rolled back, version test-1", st)
	}

	u.push(cfg{version: 1, target: grp, toml: "[call]\nmax_length = \"2h\"\n[log]\nlevel = \"debug\"\n"})
	eff := u.nextApplied(5 * time.Second)
	if !strings.Contains(eff, `max_length = "2h"`) || !strings.Contains(eff, `level = "debug"`) {
		t.Fatalf("group config not applied: %q", eff)
	}
	ap := fleettest.Data[fleet.ConfigApplied](t, u.WaitEvent(fleet.EventConfigApplied, 5*time.Second))
	if ap != (fleet.ConfigApplied{Target: "group:ward-a", Version: 1, Generation: 1}) {
		t.Fatalf("config_applied = %+v", ap)
	}

	u.push(cfg{version: 7, target: dev, toml: "[log]\nlevel = \"warn\"\n"})
	eff = u.nextApplied(5 * time.Second)
	if !strings.Contains(eff, `max_length = "2h"`) || !strings.Contains(eff, `level = "warn"`) || strings.Contains(eff, "debug") {
		t.Fatalf("effective config is not group overlaid by device: %q", eff)
	}
	ap = fleettest.Data[fleet.ConfigApplied](t, u.WaitEvent(fleet.EventConfigApplied, 5*time.Second))
	if ap != (fleet.ConfigApplied{Target: "device:unit-1", Version: 7, Generation: 2}) {
		t.Fatalf("config_applied = %+v", ap)
	}
	eventually(t, 5*time.Second, "reported shows both versions, confirmed", func() bool {
		r := u.Reported(unitID)
		return r.Versions["group:ward-a"] == 1 && r.Versions["device:unit-1"] == 7 && r.Generation == 2 && !r.Pending
	})
	eventually(t, 5*time.Second, "status shows generation 2", func() bool {
		s := u.Status(unitID)
		return s.Online && s.ConfigGeneration == 2 && s.Version == "test-1" && s.State == "idle"
	})

	// The broker hands the retained configs over again on every reconnect:
	// not applied again, and not reported as stale.
	u.restartBroker()
	eventually(t, 10*time.Second, "reconnected", u.agent.Connected)
	time.Sleep(500 * time.Millisecond)
	u.noApplied(200 * time.Millisecond)
	if n := u.Count(fleet.EventConfigRejected); n != 0 {
		t.Fatalf("re-delivered retained configs were reported as rejected (%d times)", n)
	}

	// A restart of roomd comes up on the stored config.
	u.stop()
	if got := u.start(); got != eff {
		t.Fatalf("after restart applied %q, want %q", got, eff)
	}
	st = fleettest.Data[fleet.Started](t, u.WaitEvent(fleet.EventStarted, 5*time.Second))
	if st.Generation != 2 || st.Pending || st.Versions["device:unit-1"] != 7 {
		t.Fatalf("started after restart = %+v", st)
	}
}

// Every rejection reason is reported with the config's target and version,
// shows in the reported document, and nothing of the config is applied.
func TestRejectionsApplyNothing(t *testing.T) {
	u := newUnit(t)
	u.start()
	u.push(cfg{version: 5, target: dev, toml: "[log]\nlevel = \"warn\"\n"})
	u.nextApplied(5 * time.Second)

	_, other, _ := ed25519.GenerateKey(rand.Reader)
	past := time.Now().Add(-3 * time.Hour)
	cases := []struct {
		name   string
		c      cfg
		reason fleet.Reason
	}{
		{"bad signature", cfg{version: 6, target: dev, toml: "[log]\nlevel = \"debug\"\n", tamper: true}, fleet.ReasonBadSignature},
		{"unknown key", cfg{version: 6, target: dev, toml: "[log]\nlevel = \"debug\"\n", priv: other}, fleet.ReasonUnknownKey},
		{"stale version", cfg{version: 5, target: dev, toml: "[log]\nlevel = \"debug\"\n"}, fleet.ReasonStaleVersion},
		{"older version", cfg{version: 4, target: dev, toml: "[log]\nlevel = \"debug\"\n"}, fleet.ReasonStaleVersion},
		{"another device", cfg{version: 6, target: fleet.Target{Device: "unit-2"}, topicFor: &dev, toml: "[log]\nlevel = \"debug\"\n"}, fleet.ReasonWrongTarget},
		{"group config on the device topic", cfg{version: 6, target: grp, topicFor: &dev, toml: "[log]\nlevel = \"debug\"\n"}, fleet.ReasonWrongTarget},
		{"expired", cfg{version: 6, target: dev, toml: "[log]\nlevel = \"debug\"\n", issued: past, expires: past.Add(time.Hour)}, fleet.ReasonExpired},
		{"not valid TOML for the schema", cfg{version: 6, target: dev, toml: "[log]\nbad = \"x\"\n"}, fleet.ReasonSchema},
		{"schema: a value where a table belongs", cfg{version: 6, target: dev, toml: "log = 1\n"}, fleet.ReasonSchema},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u.T = t
			u.push(tc.c)
			e := u.WaitEvent(fleet.EventConfigRejected, 5*time.Second)
			r := fleettest.Data[fleet.Rejection](t, e)
			if r.Reason != string(tc.reason) || r.Target != "device:unit-1" || r.Message == "" {
				t.Fatalf("config_rejected = %+v, want reason %s for device:unit-1 with a message", r, tc.reason)
			}
			if tc.reason != fleet.ReasonBadSignature && r.Version != tc.c.version {
				t.Fatalf("rejection names version %d, want %d", r.Version, tc.c.version)
			}
			u.noApplied(100 * time.Millisecond)
			eventually(t, 5*time.Second, "reported last_rejection", func() bool {
				rep := u.Reported(unitID)
				return rep.LastRejection != nil && rep.LastRejection.Reason == string(tc.reason) &&
					rep.Versions["device:unit-1"] == 5 && rep.Generation == 1
			})
		})
	}
	u.T = t
	// Still on version 5: a restart applies what was accepted, nothing else.
	u.stop()
	if got := u.start(); !strings.Contains(got, "warn") {
		t.Fatalf("after the rejections the unit runs %q, want version 5 (level warn)", got)
	}
}

// A config that arrives during a call waits for the call to end; an urgent
// one is applied at once.
func TestConfigWaitsForTheCallUnlessUrgent(t *testing.T) {
	u := newUnit(t)
	u.start()
	eventually(t, 5*time.Second, "connected", u.agent.Connected)
	u.app.emit(appliance.Event{Type: "state", State: appliance.InCall})

	u.push(cfg{version: 1, target: dev, toml: "[log]\nlevel = \"warn\"\n"})
	d := fleettest.Data[fleet.ConfigApplied](t, u.WaitEvent(fleet.EventConfigDeferred, 5*time.Second))
	if d.Version != 1 {
		t.Fatalf("config_deferred = %+v", d)
	}
	u.noApplied(time.Second)
	if n := u.Count(fleet.EventConfigApplied); n != 0 {
		t.Fatal("config_applied reported while the call is still up")
	}
	if r := u.agent.Reported(); !r.Deferred || r.Versions["device:unit-1"] != 1 {
		t.Fatalf("reported during the call: %+v, want version 1 deferred", r)
	}
	u.app.emit(appliance.Event{Type: "state", State: appliance.Leaving})
	u.noApplied(300 * time.Millisecond)
	u.app.emit(appliance.Event{Type: "state", State: appliance.Idle})
	if eff := u.nextApplied(5 * time.Second); !strings.Contains(eff, "warn") {
		t.Fatalf("applied %q after the call", eff)
	}
	u.WaitEvent(fleet.EventConfigApplied, 5*time.Second)
	if r := u.agent.Reported(); r.Deferred {
		t.Fatal("still deferred after the call ended")
	}

	u.app.emit(appliance.Event{Type: "state", State: appliance.InCall})
	u.push(cfg{version: 2, target: dev, urgent: true, toml: "[log]\nlevel = \"error\"\n"})
	if eff := u.nextApplied(5 * time.Second); !strings.Contains(eff, "error") {
		t.Fatalf("urgent config: applied %q", eff)
	}
	ap := fleettest.Data[fleet.ConfigApplied](t, u.WaitEvent(fleet.EventConfigApplied, 5*time.Second))
	if !ap.Urgent || ap.Version != 2 {
		t.Fatalf("config_applied = %+v, want urgent version 2", ap)
	}
}

// A config that moves the unit to a broker it cannot reach is rolled back
// by itself within the confirm timeout; the unit comes back on its old
// config and says so. The rolled-back config, still retained on the broker,
// is neither applied again nor reported as stale.
func TestConfigThatLosesTheBrokerRollsBack(t *testing.T) {
	u := newUnit(t)
	u.start()
	u.push(cfg{version: 1, target: dev, toml: "[log]\nlevel = \"warn\"\n"})
	good := u.nextApplied(5 * time.Second)
	eventually(t, 5*time.Second, "confirmed", func() bool { r := u.Reported(unitID); return r.Generation == 1 && !r.Pending })

	u.push(cfg{version: 2, target: dev, toml: "[fleet]\nbroker = \"mqtts://127.0.0.1:1\"\n"})
	if bad := u.nextApplied(5 * time.Second); !strings.Contains(bad, "127.0.0.1:1") {
		t.Fatalf("applied %q, want the dead broker", bad)
	}
	start := time.Now()
	if back := u.nextApplied(10 * time.Second); back != good {
		t.Fatalf("rolled back to %q, want %q", back, good)
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("rolled back after %s, before the 1.5 s confirm timeout", took)
	}
	rb := fleettest.Data[fleet.Rollback](t, u.WaitEvent(fleet.EventConfigRolledBack, 10*time.Second))
	if rb.FromGeneration != 2 || rb.ToGeneration != 3 || rb.Versions["device:unit-1"] != 2 || !strings.Contains(rb.Reason, "broker") {
		t.Fatalf("config_rolled_back = %+v", rb)
	}
	eventually(t, 10*time.Second, "reported shows the rollback", func() bool {
		r := u.Reported(unitID)
		return r.LastRollback != nil && r.Generation == 3 && !r.Pending && r.Versions["device:unit-1"] == 2
	})
	time.Sleep(time.Second)
	u.noApplied(100 * time.Millisecond)
	if n := u.Count(fleet.EventConfigRejected); n != 0 {
		t.Fatalf("the rolled-back retained config was reported rejected %d times", n)
	}
	// The fleet retries with a higher version.
	u.push(cfg{version: 3, target: dev, toml: "[log]\nlevel = \"error\"\n"})
	if eff := u.nextApplied(5 * time.Second); !strings.Contains(eff, "error") {
		t.Fatalf("retry applied %q", eff)
	}
}

// A config roomd cannot run (a bad pin, say) is rolled back at once.
func TestConfigRoomdCannotRunRollsBack(t *testing.T) {
	u := newUnit(t)
	u.applyErr = func(eff string) error {
		if strings.Contains(eff, "GPIO99") {
			return errApply
		}
		return nil
	}
	u.start()
	u.push(cfg{version: 1, target: dev, toml: "[pins]\njoin = \"GPIO99\"\n"})
	if eff := u.nextApplied(5 * time.Second); eff != "" {
		t.Fatalf("after the failed apply the unit runs %q, want its previous (empty) config", eff)
	}
	rb := fleettest.Data[fleet.Rollback](t, u.WaitEvent(fleet.EventConfigRolledBack, 5*time.Second))
	if !strings.Contains(rb.Reason, "GPIO99") || rb.Versions["device:unit-1"] != 1 {
		t.Fatalf("config_rolled_back = %+v, want the reason from roomd", rb)
	}
	if n := u.Count(fleet.EventConfigApplied); n != 0 {
		t.Fatal("a config that did not run was reported applied")
	}
}

// Commands are carried out once; a replay, an expired command or one
// signed by another key is refused and reported.
func TestCommands(t *testing.T) {
	u := newUnit(t)
	u.start()
	eventually(t, 5*time.Second, "connected", u.agent.Connected)
	now := time.Now()
	exp := now.Add(5 * time.Minute)
	cmdTopic := topics.DeviceCmd(unitID)

	secs := json.RawMessage("7")
	u.Publish(cmdTopic, false, u.command(fleet.CommandIdentify, map[string]json.RawMessage{"seconds": secs}, now, exp, ""))
	done := fleettest.Data[fleet.CommandResult](t, u.WaitEvent(fleet.EventCommandDone, 5*time.Second))
	if done.Name != "identify" || len(done.Nonce) != 32 {
		t.Fatalf("command_done = %+v", done)
	}
	if _, ids := u.app.asked(); len(ids) != 1 || ids[0] != 7*time.Second {
		t.Fatalf("identify asked the appliance for %v, want [7s]", ids)
	}

	join := u.command(fleet.CommandJoin, nil, now, exp, "")
	u.Publish(cmdTopic, false, join)
	u.WaitEvent(fleet.EventCommandDone, 5*time.Second)
	u.Publish(cmdTopic, false, join) // replayed
	ref := fleettest.Data[fleet.CommandResult](t, u.WaitEvent(fleet.EventCommandRefused, 5*time.Second))
	if ref.Reason != string(fleet.ReasonReplayed) || ref.Name != "join" {
		t.Fatalf("replay: command_refused = %+v", ref)
	}
	if acts, _ := u.app.asked(); len(acts) != 1 || acts[0] != appliance.ActJoin {
		t.Fatalf("appliance was asked %v, want exactly one join", acts)
	}

	old := now.Add(-time.Hour)
	u.Publish(cmdTopic, false, u.command(fleet.CommandLeave, nil, old, old.Add(10*time.Minute), ""))
	ref = fleettest.Data[fleet.CommandResult](t, u.WaitEvent(fleet.EventCommandRefused, 5*time.Second))
	if ref.Reason != string(fleet.ReasonExpired) || ref.Name != "leave" {
		t.Fatalf("expired: command_refused = %+v", ref)
	}

	// The replay guard survives a restart.
	u.stop()
	u.start()
	eventually(t, 5*time.Second, "connected", u.agent.Connected)
	u.Publish(cmdTopic, false, join)
	ref = fleettest.Data[fleet.CommandResult](t, u.WaitEvent(fleet.EventCommandRefused, 5*time.Second))
	if ref.Reason != string(fleet.ReasonReplayed) {
		t.Fatalf("replay after restart: command_refused = %+v", ref)
	}

	u.Publish(cmdTopic, false, u.command(fleet.CommandReportNow, nil, now, exp, ""))
	u.WaitEvent(fleet.EventCommandDone, 5*time.Second)
	if acts, _ := u.app.asked(); len(acts) != 1 {
		t.Fatalf("after the refusals the appliance was asked %v", acts)
	}
}

// Appliance events reach the fleet in the contract's shapes.
func TestApplianceEventsForwarded(t *testing.T) {
	u := newUnit(t)
	u.start()
	eventually(t, 5*time.Second, "connected", u.agent.Connected)
	for _, ev := range []appliance.Event{
		{Type: "button", Detail: "join:down"},
		{Type: "call", Detail: "joined", Meeting: "m-1a2b"},
		{Type: "state", State: appliance.InCall},
		{Type: "fault", Detail: "shutter", Reason: "sensors disagree"},
		{Type: "fault", Detail: "camera", Reason: "camera disconnected"},
		{Type: "call", Detail: "left", Meeting: "m-1a2b", Reason: "fault"},
		{Type: "fault_cleared", Detail: "camera"},
	} {
		u.app.emit(ev)
	}
	b := fleettest.Data[fleet.Button](t, u.WaitEvent(fleet.EventButton, 5*time.Second))
	if b != (fleet.Button{Which: "join", Kind: "down"}) {
		t.Fatalf("button = %+v", b)
	}
	if c := fleettest.Data[fleet.Call](t, u.WaitEvent(fleet.EventCallJoined, 5*time.Second)); c.Meeting != "m-1a2b" {
		t.Fatalf("call_joined = %+v", c)
	}
	if s := fleettest.Data[fleet.State](t, u.WaitEvent(fleet.EventState, 5*time.Second)); s.State != "in_call" {
		t.Fatalf("state = %+v", s)
	}
	if f := fleettest.Data[fleet.Fault](t, u.WaitEvent(fleet.EventShutterFault, 5*time.Second)); f.Source != "shutter" || f.Reason == "" {
		t.Fatalf("shutter_fault = %+v", f)
	}
	u.WaitEvent(fleet.EventCameraLost, 5*time.Second)
	if c := fleettest.Data[fleet.Call](t, u.WaitEvent(fleet.EventCallLeft, 5*time.Second)); c.Meeting != "m-1a2b" || c.Reason != "fault" {
		t.Fatalf("call_left = %+v", c)
	}
	u.WaitEvent(fleet.EventFaultCleared, 5*time.Second)
	eventually(t, 5*time.Second, "status in_call", func() bool { return u.Status(unitID).State == "in_call" })
}

// Invariant 7: secrets in a config never reach events, reported state,
// status or the log — not through a rejection that quotes them, nor a call
// error that echoes them.
func TestSecretsNeverLeave(t *testing.T) {
	u := newUnit(t)
	u.start()
	const token = "tok-9f8e7d6c5b4a"
	const secret = "s3cr3t-Passw0rd"
	const url = "https://user:hunter2hunter@livekit.example"
	u.push(cfg{version: 1, target: dev, toml: fmt.Sprintf("[conference]\ntoken = %q\napi_secret = %q\nurl = %q\n", token, secret, url)})
	u.nextApplied(5 * time.Second)
	u.WaitEvent(fleet.EventConfigApplied, 5*time.Second)
	// The validator quotes the value it refuses.
	u.push(cfg{version: 2, target: dev, toml: fmt.Sprintf("[conference]\nbad = %q\n", secret+"-2")})
	u.WaitEvent(fleet.EventConfigRejected, 5*time.Second)
	// A lower layer that echoes a token in an error.
	u.app.emit(appliance.Event{Type: "fault", Detail: "call", Reason: "join failed: 401 token " + token + " rejected by " + url})
	u.app.emit(appliance.Event{Type: "call", Detail: "left", Meeting: "m-1", Reason: "server said " + secret})
	u.WaitEvent(fleet.EventCallLeft, 5*time.Second)
	u.Publish(topics.DeviceCmd(unitID), false, u.command(fleet.CommandReportNow, nil, time.Now(), time.Now().Add(time.Minute), ""))
	u.WaitEvent(fleet.EventCommandDone, 5*time.Second)

	var out []string
	for _, e := range u.Events() {
		out = append(out, e.Raw)
	}
	for _, b := range u.Retained() {
		out = append(out, string(b))
	}
	out = append(out, u.logs.String())
	whole := strings.Join(out, "\n")
	if !strings.Contains(whole, "[redacted]") {
		t.Fatal("nothing was redacted: the test did not push secrets through")
	}
	for _, s := range []string{token, secret, "hunter2hunter", url} {
		if strings.Contains(whole, s) {
			t.Errorf("%q leaked into events, retained state or the log:\n%s", s, whole)
		}
	}
}

// fleetd's schedule key, once the fleet authorises it for schedules, still
// cannot configure the unit: a config signed with it (what an intruder on
// fleetd's server could send) is refused as the wrong role, and nothing
// of it runs.
func TestScheduleKeyCannotConfigureTheUnit(t *testing.T) {
	u := newUnit(t)
	u.start()
	_, sched, _ := ed25519.GenerateKey(rand.Reader)
	line := fleet.ScheduleKeyLine(sched.Public().(ed25519.PublicKey))
	u.push(cfg{version: 5, target: dev, toml: fmt.Sprintf("[log]\nlevel = \"warn\"\n[fleet]\nschedule_keys = [%q]\n", line)})
	u.nextApplied(5 * time.Second)

	u.push(cfg{version: 6, target: dev, toml: "[log]\nlevel = \"debug\"\n", priv: sched})
	r := fleettest.Data[fleet.Rejection](t, u.WaitEvent(fleet.EventConfigRejected, 5*time.Second))
	if r.Reason != string(fleet.ReasonWrongRole) || !strings.Contains(r.Message, "schedule") {
		t.Fatalf("config signed with the schedule key: %+v, want %s naming the schedule key", r, fleet.ReasonWrongRole)
	}
	u.noApplied(200 * time.Millisecond)
}
