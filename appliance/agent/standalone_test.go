package agent_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/provisioning/audit"
)

type running struct{ c *config.Config }

func q(s string) string { return strconv.Quote(s) }

func writeFile(t *testing.T, p, text string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (r running) Running() *config.Config { return r.c }

// TestStandaloneRecordsWithoutAFleet: with the fleet off the unit's own
// log gets its start, privacy, mute, a call (with its encryption) and a
// fault, in the agent's directory and chain; the local config's secret,
// quoted by a fault, is not in it. With the fleet on there is no
// Standalone: the agent keeps the log.
func TestStandaloneRecordsWithoutAFleet(t *testing.T) {
	dir := t.TempDir()
	const secret = "local-Secret-42x"
	p := filepath.Join(dir, "roomd.toml")
	writeFile(t, p, "[fleet]\nenabled = false\nstate_dir = "+q(filepath.Join(dir, "state"))+"\nidentity_dir = "+q(filepath.Join(dir, "identity"))+
		"\n[conference]\nconnector = \"livekit\"\nurl = \"wss://sfu.example\"\napi_key = \"k\"\napi_secret = "+q(secret)+"\n")
	c, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	fo := agent.FleetOptions{Local: c, Version: "v-test"}
	fl, err := agent.OpenFleet(fo)
	if err != nil || fl != nil {
		t.Fatalf("OpenFleet = %v, %v; want the fleet off", fl, err)
	}
	s, err := agent.OpenStandalone(fl, fo)
	if err != nil || s == nil {
		t.Fatalf("OpenStandalone: %v", err)
	}
	app := &fakeAppliance{}
	s.Begin(running{c}, app, nil)
	on := true
	for _, ev := range []appliance.Event{
		{Type: "privacy", Detail: "on"}, {Type: "privacy", Detail: "off"},
		{Type: "call", Detail: "joined", Meeting: "m-7", E2EE: &on},
		{Type: "mute", Detail: "on"},
		{Type: "fault", Detail: "camera", Reason: "server said: bad secret " + secret},
		{Type: "call", Detail: "left", Meeting: "m-7", Reason: "leave", E2EE: &on},
	} {
		app.emit(ev)
	}
	s.Close() // records what was sent before it returns
	recs, err := audit.ReadFile(filepath.Join(dir, "state", "audit", audit.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range recs {
		kinds = append(kinds, r.Kind)
		if r.Kind == audit.KindCallJoined && (r.Fields["meeting"] != "m-7" || r.Fields["e2ee"] != "true") {
			t.Errorf("call record %v", r.Fields)
		}
		if strings.Contains(string(r.Line()), secret) {
			t.Errorf("record %d holds the local config's secret: %s", r.Seq, r.Line())
		}
	}
	want := "chain_started roomd_started config_applied privacy_on privacy_off call_joined mute_on fault call_left"
	if strings.Join(kinds, " ") != want {
		t.Fatalf("records %q, want %q", strings.Join(kinds, " "), want)
	}
	if res := audit.Verify(recs, ""); !res.OK() {
		t.Fatalf("chain: %v", res.Problem)
	}

	// A local config that does not come up is recorded as rejected.
	s, err = agent.OpenStandalone(nil, fo)
	if err != nil {
		t.Fatal(err)
	}
	s.Begin(running{c}, app, errors.New("pins: GPIO99 does not exist"))
	s.Close()
	recs, _ = audit.ReadFile(filepath.Join(dir, "state", "audit", audit.LogFile))
	if last := recs[len(recs)-1]; last.Kind != audit.KindConfigRejected || last.Fields["target"] != "local" || recs[0].Chain != last.Chain {
		t.Fatalf("after a failed start the log ends %+v", last)
	}
	var nothing *agent.Standalone // the fleet on: no Standalone, and no panic
	nothing.Begin(running{c}, app, nil)
	nothing.Close()
}
