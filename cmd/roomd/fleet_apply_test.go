package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// A group config and a device config pushed through real Mosquitto reach
// the running unit merged (device over group), without a restart: the local
// status shows the new pins.
func TestFleetPushToDeviceAndGroup(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	if s := u.status(); pin(s, "join") != "GPIO17" || s.Fleet.Generation != 0 {
		t.Fatalf("fresh unit: join on %s, generation %d", pin(s, "join"), s.Fleet.Generation)
	}

	f.push(signed{version: 1, target: grpTarget, toml: "[pins]\njoin = \"GPIO26\"\nmute = \"GPIO16\"\n"})
	f.WaitEvent(fleet.EventConfigApplied, 10*time.Second)
	u.eventually("group pins applied", func(s status) bool {
		return pin(s, "join") == "GPIO26" && pin(s, "mute") == "GPIO16" && s.Fleet.Versions["group:ward-a"] == 1
	})

	f.push(signed{version: 1, target: devTarget, toml: "[pins]\nmute = \"GPIO20\"\n"})
	ap := fleettest.Data[fleet.ConfigApplied](t, f.WaitEvent(fleet.EventConfigApplied, 10*time.Second))
	if ap.Target != "device:room-1" || ap.Version != 1 || ap.Generation != 2 {
		t.Fatalf("config_applied = %+v", ap)
	}
	u.eventually("device over group", func(s status) bool {
		return pin(s, "join") == "GPIO26" && pin(s, "mute") == "GPIO20" && s.Fleet.Generation == 2 && !s.Fleet.Pending
	})
	// The re-opened unit still works: JOIN on the new pin goes live.
	u.press("join")
	u.waitFor("in call", 5*time.Second, isState(appliance.InCall))
}

// Every rejection reason is reported with its reason, and nothing of the
// config is applied: the unit's pins and generation stay as they were.
func TestFleetRejectionsApplyNothing(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	f.push(signed{version: 3, target: devTarget, toml: "[pins]\nmute = \"GPIO20\"\n"})
	f.WaitEvent(fleet.EventConfigApplied, 10*time.Second)
	u.eventually("applied", func(s status) bool { return pin(s, "mute") == "GPIO20" })

	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	past := time.Now().Add(-5 * time.Hour)
	change := "[pins]\nmute = \"GPIO21\"\n"
	cases := []struct {
		name   string
		s      signed
		reason fleet.Reason
	}{
		{"bad signature", signed{version: 4, target: devTarget, toml: change, tamper: true}, fleet.ReasonBadSignature},
		{"unknown key", signed{version: 4, target: devTarget, toml: change, priv: stranger}, fleet.ReasonUnknownKey},
		{"stale version", signed{version: 3, target: devTarget, toml: change}, fleet.ReasonStaleVersion},
		{"wrong target", signed{version: 4, target: fleet.Target{Device: "room-2"}, onTopic: &devTarget, toml: change}, fleet.ReasonWrongTarget},
		{"expired", signed{version: 4, target: devTarget, toml: change, issued: past, expires: past.Add(time.Hour)}, fleet.ReasonExpired},
		{"unknown field", signed{version: 4, target: devTarget, toml: change + "[call]\nmax_lenght = \"1h\"\n"}, fleet.ReasonSchema},
		{"wrong type", signed{version: 4, target: devTarget, toml: change + "[call]\nmax_length = 5\n"}, fleet.ReasonSchema},
		{"out of range", signed{version: 4, target: devTarget, toml: change + "[call]\nmax_length = \"48h\"\n"}, fleet.ReasonSchema},
		{"identity is local only", signed{version: 4, target: devTarget, toml: change + "[fleet]\ndevice_id = \"room-9\"\n"}, fleet.ReasonSchema},
		{"merged with the group it breaks", signed{version: 1, target: grpTarget, toml: "[pins]\njoin = \"GPIO20\"\n"}, fleet.ReasonSchema},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.T = t
			f.push(tc.s)
			r := fleettest.Data[fleet.Rejection](t, f.WaitEvent(fleet.EventConfigRejected, 10*time.Second))
			if r.Reason != string(tc.reason) {
				t.Fatalf("config_rejected = %+v, want reason %s", r, tc.reason)
			}
			time.Sleep(200 * time.Millisecond)
			s := u.status()
			if pin(s, "mute") != "GPIO20" || s.Fleet.Generation != 1 || s.Fleet.Versions["device:room-1"] != 3 {
				t.Fatalf("after a rejected config the unit has mute on %s, generation %d, versions %v; want it unchanged",
					pin(s, "mute"), s.Fleet.Generation, s.Fleet.Versions)
			}
			if s.Fleet.LastRejection == nil || s.Fleet.LastRejection.Reason != string(tc.reason) {
				t.Fatalf("reported last_rejection = %+v", s.Fleet.LastRejection)
			}
		})
	}
}

// A config change during a call waits for the call to end; an urgent one
// ends the call (shutter closed) and applies at once.
func TestFleetConfigWaitsForCallEnd(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	u.press("join")
	u.waitFor("in call", 5*time.Second, isState(appliance.InCall))

	f.push(signed{version: 1, target: devTarget, toml: "[pins]\nmute = \"GPIO20\"\n"})
	f.WaitEvent(fleet.EventConfigDeferred, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	if s := u.status(); s.State != appliance.InCall || pin(s, "mute") != "GPIO23" {
		t.Fatalf("during the call: state %s, mute on %s; want the call untouched on the old config", s.State, pin(s, "mute"))
	}
	u.press("leave")
	f.WaitEvent(fleet.EventConfigApplied, 10*time.Second)
	u.eventually("applied after the call", func(s status) bool { return pin(s, "mute") == "GPIO20" && s.State == appliance.Idle })

	u.press("join")
	u.eventually("in call again", func(s status) bool { return s.State == appliance.InCall })
	f.push(signed{version: 2, target: devTarget, urgent: true, toml: "[pins]\nmute = \"GPIO21\"\n"})
	got := f.WaitEvents(10*time.Second, fleet.EventCallLeft, fleet.EventConfigApplied)
	if left := fleettest.Data[fleet.Call](t, got[fleet.EventCallLeft]); left.Reason == "" {
		t.Fatalf("call_left = %+v, want a reason", left)
	}
	u.eventually("urgent applied, call ended, shutter closed", func(s status) bool {
		return pin(s, "mute") == "GPIO21" && s.State == appliance.Idle && s.Shutter == "closed" && !s.Gate.Video && !s.Gate.Audio
	})
}

// A config that points the unit at a broker it cannot reach is rolled back
// by the unit itself, which comes back and reports it.
func TestFleetConfigThatBreaksTheBrokerRollsBack(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	f.push(signed{version: 1, target: devTarget, toml: "[fleet]\nbroker = \"mqtts://127.0.0.1:1\"\n"})
	f.WaitEvent(fleet.EventConfigApplied, 10*time.Second)
	rb := fleettest.Data[fleet.Rollback](t, f.WaitEvent(fleet.EventConfigRolledBack, 20*time.Second))
	if rb.FromGeneration != 1 || rb.ToGeneration != 2 || rb.Versions["device:room-1"] != 1 || !strings.Contains(rb.Reason, "broker") {
		t.Fatalf("config_rolled_back = %+v", rb)
	}
	u.eventually("back on the fleet broker", func(s status) bool {
		return s.Fleet.Connected && s.Fleet.Broker == f.b.URL() && s.Fleet.LastRollback != nil && !s.Fleet.Pending
	})
	// The rolled-back config stays retained; it is not taken up again.
	time.Sleep(time.Second)
	if s := u.status(); s.Fleet.Generation != 2 || f.Distinct(fleet.EventConfigRejected) != 0 {
		t.Fatalf("after the rollback: generation %d, %d rejections", s.Fleet.Generation, f.Distinct(fleet.EventConfigRejected))
	}
}

// A config that does not open the unit (a pin the board does not have) is
// rolled back at once; the unit keeps running on its previous config.
func TestFleetConfigWithBadPinRollsBack(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	f.push(signed{version: 1, target: devTarget, toml: "[pins]\njoin = \"GPIO99\"\n"})
	rb := fleettest.Data[fleet.Rollback](t, f.WaitEvent(fleet.EventConfigRolledBack, 10*time.Second))
	if !strings.Contains(rb.Reason, "GPIO99") {
		t.Fatalf("config_rolled_back reason %q does not name the pin", rb.Reason)
	}
	s := u.status()
	if pin(s, "join") != "GPIO17" || s.Fleet.LastRollback == nil {
		t.Fatalf("after the rollback: join on %s, last_rollback %+v", pin(s, "join"), s.Fleet.LastRollback)
	}
	u.press("join")
	u.waitFor("in call", 5*time.Second, isState(appliance.InCall))
}

// Signed commands run once; replayed and expired ones are refused. Identify
// blinks the LED in its own pattern and stops by itself.
func TestFleetCommands(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	cmdTopic := link.Topics{}.DeviceCmd(fleetDevice)
	now := time.Now()
	exp := now.Add(5 * time.Minute)

	f.Publish(cmdTopic, false, f.command(fleet.CommandIdentify, map[string]json.RawMessage{"seconds": json.RawMessage("2")}, now, exp))
	f.WaitEvent(fleet.EventCommandDone, 10*time.Second)
	u.eventually("LED identify", func(s status) bool { return s.LED == "identify" })
	time.Sleep(2500 * time.Millisecond)
	if s := u.status(); s.LED != "off" {
		t.Fatalf("LED %s 2.5 s into a 2 s identify, want off", s.LED)
	}

	join := f.command(fleet.CommandJoin, nil, now, exp)
	f.Publish(cmdTopic, false, join)
	f.WaitEvent(fleet.EventCommandDone, 10*time.Second)
	f.WaitEvent(fleet.EventCallJoined, 10*time.Second)
	u.eventually("in call, LIVE", func(s status) bool { return s.State == appliance.InCall && s.LED == "live" })

	// Identify never hides LIVE.
	f.Publish(cmdTopic, false, f.command(fleet.CommandIdentify, nil, now, exp))
	f.WaitEvent(fleet.EventCommandDone, 10*time.Second)
	if s := u.status(); s.LED != "live" {
		t.Fatalf("identify during a live call: LED %s", s.LED)
	}

	f.Publish(cmdTopic, false, f.command(fleet.CommandLeave, nil, now, exp))
	f.WaitEvent(fleet.EventCallLeft, 10*time.Second)
	u.eventually("idle", func(s status) bool { return s.State == appliance.Idle })

	f.Publish(cmdTopic, false, join) // replayed
	r := fleettest.Data[fleet.CommandResult](t, f.WaitEvent(fleet.EventCommandRefused, 10*time.Second))
	if r.Reason != string(fleet.ReasonReplayed) || r.Name != "join" {
		t.Fatalf("replayed join: %+v", r)
	}
	old := now.Add(-2 * time.Hour)
	f.Publish(cmdTopic, false, f.command(fleet.CommandJoin, nil, old, old.Add(30*time.Minute)))
	r = fleettest.Data[fleet.CommandResult](t, f.WaitEvent(fleet.EventCommandRefused, 10*time.Second))
	if r.Reason != string(fleet.ReasonExpired) {
		t.Fatalf("expired join: %+v", r)
	}
	time.Sleep(300 * time.Millisecond)
	if s := u.status(); s.State != appliance.Idle {
		t.Fatalf("a refused join moved the unit to %s", s.State)
	}

	// reboot in --sim restarts the unit inside the process.
	f.Publish(cmdTopic, false, f.command(fleet.CommandReboot, nil, now, exp))
	f.WaitEvent(fleet.EventCommandDone, 10*time.Second)
	u.waitFor("restarted unit's hello", 10*time.Second, func(e appliance.Event) bool { return e.Type == "hello" })
	u.press("join")
	u.waitFor("in call after reboot", 5*time.Second, isState(appliance.InCall))
}

// Invariant 7 end to end: a config with secrets, pushed through the real
// broker into roomd, and a rejected one that roomd's schema quotes, leave
// no secret in any event, the retained status or reported state, or
// roomd's log.
func TestFleetSecretsNeverLeave(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	const token = "eyJhbGciOiJIUzI1NiJ9.secret-token-4711"
	const apiSecret = "api-secret-0b5e1c9d"
	f.push(signed{version: 1, target: devTarget, toml: fmt.Sprintf("[conference]\ntoken = %q\napi_secret = %q\n[log]\nlevel = \"debug\"\n", token, apiSecret)})
	f.WaitEvent(fleet.EventConfigApplied, 10*time.Second)
	// The schema error quotes the bad duration, which is a secret here.
	f.push(signed{version: 2, target: devTarget, toml: fmt.Sprintf("[conference]\ntoken = %q\n[call]\nmax_length = %q\n", token+"-2", apiSecret+"-2")})
	f.WaitEvent(fleet.EventConfigRejected, 10*time.Second)
	u.press("join")
	u.waitFor("in call", 5*time.Second, isState(appliance.InCall))
	u.press("leave")
	f.WaitEvent(fleet.EventCallLeft, 10*time.Second)
	f.Publish(link.Topics{}.DeviceCmd(fleetDevice), false, f.command(fleet.CommandReportNow, nil, time.Now(), time.Now().Add(time.Minute)))
	f.WaitEvent(fleet.EventCommandDone, 10*time.Second)

	var all []string
	for _, e := range f.Events() {
		all = append(all, e.Raw)
	}
	for _, b := range f.Retained() {
		all = append(all, string(b))
	}
	all = append(all, u.logs.String())
	whole := strings.Join(all, "\n")
	if !strings.Contains(whole, "config_rejected") || !strings.Contains(whole, "call_left") {
		t.Fatal("the test did not see the events it checks")
	}
	for _, s := range []string{token, apiSecret, "secret-token-4711", "0b5e1c9d"} {
		if strings.Contains(whole, s) {
			t.Errorf("secret %q leaked:\n%s", s, whole)
		}
	}
}

// roomd --sim with no broker configured runs the embedded demo broker and a
// demo fleet key, so a fleet manager's tool works against it out of the box:
// a config signed with the demo key and published on the demo broker (plain
// MQTT on loopback) takes effect.
func TestSimDemoFleet(t *testing.T) {
	u := startUnit(t, "")
	var s status
	u.eventually("demo fleet connected", func(st status) bool { s = st; return st.Fleet != nil && st.Fleet.Connected })
	if s.Fleet.Device != "sim-unit" || len(s.Fleet.Groups) != 1 || s.Fleet.Groups[0] != "demo" ||
		!strings.HasPrefix(s.Fleet.Broker, "tcp://127.0.0.1:") || s.Fleet.DemoKey == "" {
		t.Fatalf("demo fleet status = %+v", s.Fleet)
	}
	priv, err := fleet.LoadPrivateKey(s.Fleet.DemoKey)
	if err != nil {
		t.Fatal(err)
	}
	env, err := fleet.SignConfig(priv, fleet.ConfigPayload{Version: 1, IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour),
		Target: fleet.Target{Group: "demo"}, Config: "[pins]\nmute = \"GPIO20\"\n"})
	if err != nil {
		t.Fatal(err)
	}
	o := mqtt.NewClientOptions().AddBroker(s.Fleet.Broker).SetClientID("demo-admin")
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to the demo broker: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(link.Topics{}.GroupConfig("demo"), 1, true, env.Marshal()); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	u.eventually("demo config applied", func(st status) bool {
		return pin(st, "mute") == "GPIO20" && st.Fleet.Versions["group:demo"] == 1 && !st.Fleet.Pending
	})
}
