package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/provisioning/broker"
	"github.com/konsult/konsult/provisioning/manager"
)

// row finds the table row of unit id in out and returns its cells split on
// runs of two or more spaces.
func row(t *testing.T, out, id string) []string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, id+" ") {
			return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1)
		}
	}
	t.Fatalf("no row for %s in:\n%s", id, out)
	return nil
}

func TestPushToADevice(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": {"clinic-a"}})
	u := f.startUnit("room-12", []string{"clinic-a"})
	cfg := writeConfig(t, "[call]\nmax_length = \"2h\"\n")

	start := time.Now()
	out, errOut, err := f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "3", cfg)
	if err != nil {
		t.Fatalf("push: %v\n%s%s", err, out, errOut)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("push took %s for one online unit", took)
	}
	r := row(t, out, "room-12")
	if r[1] != "applied" || r[2] != "3" {
		t.Fatalf("push table row %q, want applied version 3:\n%s", r, out)
	}
	if !strings.HasPrefix(out, "UNIT") || !strings.Contains(errOut, "1/1") {
		t.Errorf("table header or progress summary missing:\nstdout:\n%s\nstderr:\n%s", out, errOut)
	}
	if !strings.Contains(u.lastApplied(), "max_length = \"2h\"") {
		t.Errorf("the unit runs %q", u.lastApplied())
	}

	// A version the unit already runs is refused before anything is published.
	out, _, err = f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "2", cfg)
	if err == nil || !strings.Contains(err.Error(), "--version 4") || out != "" {
		t.Fatalf("stale push: %v\n%s", err, out)
	}

	// --wait 0 publishes and returns without a table.
	out, errOut, err = f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "4", "--wait", "0", cfg)
	if err != nil || out != "" || !strings.Contains(errOut, "not waiting") {
		t.Fatalf("push --wait 0: %v\nstdout %q\nstderr %q", err, out, errOut)
	}
	statusWhen(t, func() (string, string, error) { return f.fleetctl("status") }, "device v4")

	// --json for scripts.
	out, _, err = f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "5", "--json", cfg)
	if err != nil {
		t.Fatalf("push --json: %v", err)
	}
	var res []manager.PushResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res) != 1 {
		t.Fatalf("push --json output %q: %v", out, err)
	}
	if res[0].Unit != "room-12" || res[0].Result != "applied" || res[0].Version != 5 || res[0].At.IsZero() {
		t.Fatalf("push --json result %+v", res[0])
	}
}

// A group push ends with one row per unit of the group: one applies, one
// refuses with the unit's reason, one is offline and one hangs.
func TestPushToAGroup(t *testing.T) {
	units := map[string][]string{"room-11": {"clinic-a"}, "room-12": {"clinic-a"}, "room-13": {"clinic-a"}, "room-14": {"clinic-a"}, "room-20": {"clinic-b"}}
	f := startFleet(t, units)
	ok := f.startUnit("room-11", units["room-11"])
	f.startUnit("room-12", units["room-12"], maxCallLimit(2*time.Hour), withVersion("1.3.9"))
	off := f.startUnit("room-13", units["room-13"])
	release := make(chan struct{})
	f.startUnit("room-14", units["room-14"], hangOnApply(release))
	t.Cleanup(func() { close(release) }) // before the units stop (cleanups run last-in first)
	other := f.startUnit("room-20", units["room-20"])
	off.stop()

	cfg := writeConfig(t, "[call]\nmax_length = \"3h\"\n")
	start := time.Now()
	out, errOut, err := f.fleetctl("push", "--key", f.key, "--group", "clinic-a", "--version", "1", "--wait", "3s", cfg)
	if err == nil {
		t.Fatalf("push succeeded though units refused or did not answer:\n%s", out)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("push took %s with --wait 3s", took)
	}
	t.Logf("fleetctl push --group clinic-a:\n%s%sfleetctl: %v", errOut, out, err)
	for _, want := range []string{"4 units", "1 rejected", "1 no answer", "1 offline"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	if r := row(t, out, "room-11"); r[1] != "applied" || r[2] != "1" {
		t.Errorf("room-11: %q", r)
	}
	if r := row(t, out, "room-12"); r[1] != "rejected: schema" || r[2] != "-" || !strings.Contains(r[4], "config refused by the unit's schema") || !strings.Contains(r[4], "limit") {
		t.Errorf("room-12: %q, want the unit's schema reason", r)
	}
	if r := row(t, out, "room-13"); r[1] != "offline" || r[3] == "-" {
		t.Errorf("room-13: %q, want offline with its last-seen time", r)
	}
	if r := row(t, out, "room-14"); r[1] != "no answer" || !strings.Contains(r[4], "fleetctl acl") {
		t.Errorf("room-14: %q, want no answer, pointing at the broker's ACL", r)
	}
	if strings.Contains(out, "room-20") {
		t.Errorf("a unit of another group is listed:\n%s", out)
	}
	if !strings.Contains(errOut, "4/4") && !strings.Contains(errOut, "3/4") {
		t.Errorf("no progress summary on stderr: %q", errOut)
	}
	if !strings.Contains(ok.lastApplied(), "3h") || strings.Contains(other.lastApplied(), "3h") {
		t.Errorf("applied configs: room-11 %q, room-20 %q", ok.lastApplied(), other.lastApplied())
	}

	// status shows the refusal and who runs which version.
	out = statusWhen(t, func() (string, string, error) { return f.fleetctl("status", "--group", "clinic-a") }, "clinic-a v1", "refused")
	if r := row(t, out, "room-11"); r[1] != "yes" || r[2] != "idle" || r[4] != "clinic-a v1" || r[5] != "1.4.0" {
		t.Errorf("status room-11: %q\n%s", r, out)
	}
	if r := row(t, out, "room-12"); r[4] != "-" || r[5] != "1.3.9" || !strings.Contains(r[8], "refused group clinic-a v1 (schema)") {
		t.Errorf("status room-12: %q\n%s", r, out)
	}
	if r := row(t, out, "room-13"); r[1] != "no" || r[2] != "-" {
		t.Errorf("status room-13: %q\n%s", r, out)
	}
	if strings.Contains(out, "room-20") {
		t.Errorf("status --group lists another group's unit:\n%s", out)
	}
	t.Logf("fleetctl status --group clinic-a:\n%s", out)
}

// A config pushed during a call waits for the call to end unless urgent.
func TestPushDuringACall(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	u := f.startUnit("room-12", nil)
	if _, _, err := f.fleetctl("cmd", "--key", f.key, "--device", "room-12", "join"); err != nil {
		t.Fatalf("cmd join: %v", err)
	}
	u.waitState(t, appliance.InCall)

	out, _, err := f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "1", writeConfig(t, "[conference]\nroom = \"a\"\n"))
	if err != nil {
		t.Fatalf("push during a call: %v\n%s", err, out)
	}
	if r := row(t, out, "room-12"); r[1] != "deferred" || !strings.Contains(r[4], "when the call ends") {
		t.Fatalf("row %q", r)
	}
	if strings.Contains(u.lastApplied(), "room = \"a\"") {
		t.Fatal("the unit applied a non-urgent config during a call")
	}
	out = statusWhen(t, func() (string, string, error) { return f.fleetctl("status") }, "waits for the call")
	if r := row(t, out, "room-12"); r[2] != "in_call" || r[4] != "device v1" || !strings.Contains(r[8], "newest config waits for the call to end") {
		t.Errorf("status during the call: %q", r)
	}

	out, _, err = f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "2", "--urgent", writeConfig(t, "[conference]\nroom = \"b\"\n"))
	if err != nil {
		t.Fatalf("urgent push: %v\n%s", err, out)
	}
	if r := row(t, out, "room-12"); r[1] != "applied" || r[2] != "2" {
		t.Fatalf("urgent push row %q", r)
	}
	if !strings.Contains(u.lastApplied(), "room = \"b\"") {
		t.Errorf("urgent config not applied during the call: %q", u.lastApplied())
	}
}

func TestPushEnvelopeFromSign(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": {"clinic-a"}})
	u := f.startUnit("room-12", []string{"clinic-a"})
	env := filepath.Join(t.TempDir(), "v5.json")
	mustRun(t, "sign", "--key", f.key, "--group", "clinic-a", "--version", "5", "--out", env, writeConfig(t, "[call]\nmax_length = \"1h\"\n"))
	out, _, err := f.fleetctl("push", "--envelope", env)
	if err != nil {
		t.Fatalf("push --envelope: %v\n%s", err, out)
	}
	if r := row(t, out, "room-12"); r[1] != "applied" || r[2] != "5" {
		t.Fatalf("row %q", r)
	}
	if !strings.Contains(u.lastApplied(), "1h") {
		t.Errorf("unit runs %q", u.lastApplied())
	}
	// Publishing the same envelope again is harmless: it is already retained.
	if out, _, err := f.fleetctl("push", "--envelope", env); err != nil || row(t, out, "room-12")[1] != "applied" {
		t.Fatalf("re-push of the retained envelope: %v\n%s", err, out)
	}
	// An envelope is the whole instruction: no target flags beside it.
	if _, _, err := f.fleetctl("push", "--envelope", env, "--version", "6"); err == nil || !strings.Contains(err.Error(), "--envelope carries") {
		t.Errorf("push --envelope --version: %v", err)
	}
}

// A group nobody has joined yet still gets its retained config, and push
// says so instead of failing.
func TestPushToAnEmptyGroup(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": {"clinic-a"}})
	out, errOut, err := f.fleetctl("push", "--key", f.key, "--group", "clinic-z", "--version", "1", writeConfig(t, "[call]\nmax_length = \"1h\"\n"))
	if err != nil || out != "" || !strings.Contains(errOut, "no unit has reported being in group clinic-z") {
		t.Fatalf("push to an empty group: %v\nstdout %q\nstderr %q", err, out, errOut)
	}
	// A lower version would replace the retained one: refused.
	_, _, err = f.fleetctl("push", "--key", f.key, "--group", "clinic-z", "--version", "1", writeConfig(t, "[call]\nmax_length = \"2h\"\n"))
	if err != nil {
		t.Fatalf("same version, nobody applied it: %v", err)
	}
	_, _, err = f.fleetctl("push", "--key", f.key, "--group", "clinic-z", "--version", "2", writeConfig(t, "[call]\nmax_length = \"2h\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = f.fleetctl("push", "--key", f.key, "--group", "clinic-z", "--version", "1", writeConfig(t, "[call]\nmax_length = \"2h\"\n"))
	if err == nil || !strings.Contains(err.Error(), "the broker holds version 2") {
		t.Fatalf("downgrade of the retained config: %v", err)
	}
}

func TestConnectionErrorsNameTheFix(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	cfg := writeConfig(t, "[call]\nmax_length = \"1h\"\n")
	base := []string{"status"}
	a := f.b.Admin()
	unit := f.b.Identity("room-12")
	manager.SyncTimeout = time.Second // the unit's certificate case waits for it
	t.Cleanup(func() { manager.SyncTimeout = 10 * time.Second })
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"no broker":      {base, []string{"no broker", "--broker", "FLEETCTL_BROKER"}},
		"no cert":        {append(base, "--broker", f.b.SharedURL()), []string{"--ca, --cert, --cert-key"}},
		"plain tcp":      {append(base, "--broker", "tcp://10.1.2.3:1883"), []string{"unencrypted", "mqtts://"}},
		"password":       {append(base, "--broker", "mqtts://admin:hunter2@127.0.0.1"), []string{"must not carry"}},
		"wrong CA":       {append(base, "--broker", f.b.SharedURL(), "--ca", a.CertFile, "--cert", a.CertFile, "--cert-key", a.KeyFile), []string{"--ca is not the CA"}},
		"nobody there":   {append(base, "--broker", "mqtts://127.0.0.1:1", "--ca", f.b.CAFile(), "--cert", a.CertFile, "--cert-key", a.KeyFile), []string{"is the broker running"}},
		"unit's cert":    {append(base, "--broker", f.b.SharedURL(), "--ca", f.b.CAFile(), "--cert", unit.CertFile, "--cert-key", unit.KeyFile), []string{"did not hand back", "fleet-admin"}},
		"push, no key":   {[]string{"push", "--device", "room-12", "--version", "1", cfg}, []string{"--key is required"}},
		"push, no wait":  {[]string{"push", "--key", f.key, "--device", "room-12", "--version", "1", "--wait", "-1s", cfg}, []string{"--wait"}},
		"cmd, bad name":  {[]string{"cmd", "--key", f.key, "--device", "room-12", "selfdestruct"}, []string{"unknown command", "identify"}},
		"watch, both":    {[]string{"watch", "--device", "a", "--group", "b"}, []string{"not both"}},
		"status, extra":  {append(base, "room-12"), []string{"unexpected argument"}},
		"settings typo":  {[]string{"status", "--config", writeSettings(t, "brokr = \"mqtts://x\"\n")}, []string{"unknown key", "brokr"}},
		"settings wrong": {[]string{"status", "--config", writeSettings(t, "broker = \n")}, []string{"not valid TOML"}},
	} {
		t.Run(name, func(t *testing.T) {
			var o, e strings.Builder
			err := run(t.Context(), tc.args, &o, &e)
			if err == nil {
				t.Fatalf("succeeded:\n%s", o.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error is not one safe line: %q", err)
			}
		})
	}
}

func writeSettings(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fleetctl.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The settings file and environment stand in for the flags, flags first.
func TestSettingsFileAndEnvironment(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	f.startUnit("room-12", nil)
	a := f.b.Admin()
	dir := t.TempDir()
	// Relative paths in the file are relative to the file.
	for src, dst := range map[string]string{f.b.CAFile(): "ca.crt", a.CertFile: "admin.crt", a.KeyFile: "admin.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgDir := filepath.Join(dir, "xdg", "konsult")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	settings := "broker = \"mqtts://127.0.0.1:1\"\nca = \"../../ca.crt\"\ncert = \"../../admin.crt\"\ncert_key = \"../../admin.key\"\n"
	if err := os.WriteFile(filepath.Join(cfgDir, "fleetctl.toml"), []byte(settings), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"XDG_CONFIG_HOME": filepath.Join(dir, "xdg"), "FLEETCTL_BROKER": f.b.SharedURL()}
	getenv = func(k string) string { return env[k] }
	t.Cleanup(func() { getenv = os.Getenv })

	// The file's broker (port 1) is overridden by FLEETCTL_BROKER.
	out, _, err := fleetctl(t, "status")
	if err != nil {
		t.Fatalf("status from settings file + environment: %v", err)
	}
	if r := row(t, out, "room-12"); r[1] != "yes" {
		t.Fatalf("status row %q", r)
	}
	// A flag beats both.
	if _, _, err := fleetctl(t, "status", "--broker", "mqtts://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("--broker did not win: %v", err)
	}
}

// A config roomd cannot run is undone by the unit itself; push and status
// say so.
func TestPushRolledBack(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	f.startUnit("room-12", nil, failApply("broken-room"))
	if _, _, err := f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "1", writeConfig(t, "[conference]\nroom = \"fine\"\n")); err != nil {
		t.Fatal(err)
	}
	out, _, err := f.fleetctl("push", "--key", f.key, "--device", "room-12", "--version", "2", writeConfig(t, "[conference]\nroom = \"broken-room\"\n"))
	if err == nil || !strings.Contains(err.Error(), "1 rolled back") {
		t.Fatalf("push of a config roomd cannot run: %v\n%s", err, out)
	}
	if r := row(t, out, "room-12"); r[1] != "rolled back" || !strings.Contains(r[4], "roomd could not run the config") {
		t.Fatalf("row %q", r)
	}
	out = statusWhen(t, func() (string, string, error) { return f.fleetctl("status") }, "device v2", "last known good")
	if r := row(t, out, "room-12"); r[4] != "device v2" || !strings.Contains(r[8], "runs its last known good config since") {
		t.Errorf("status after the rollback: %q", r)
	}
}

// The demo's embedded broker (plain TCP on loopback, no certificates): the
// same commands work with --broker alone.
func TestAgainstTheDemoBroker(t *testing.T) {
	realClock(t)
	noSettings(t)
	br, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	dir, pubs := keys(t)
	f := &testFleet{t: t, key: filepath.Join(dir, "fleet.key"), pubs: pubs, plain: br.URL()}
	f.startUnit("sim-unit", []string{"demo"})

	out, _, err := run2(t, "push", "--broker", br.URL(), "--key", f.key, "--group", "demo", "--version", "1", writeConfig(t, "[call]\nmax_length = \"1h\"\n"))
	if err != nil {
		t.Fatalf("push via the demo broker: %v\n%s", err, out)
	}
	if r := row(t, out, "sim-unit"); r[1] != "applied" {
		t.Fatalf("row %q", r)
	}
	out = statusWhen(t, func() (string, string, error) { return run2(t, "status", "--broker", br.URL()) }, "demo v1")
	if r := row(t, out, "sim-unit"); r[1] != "yes" || r[4] != "demo v1" {
		t.Fatalf("status via the demo broker: %q", r)
	}
}

func run2(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var o, e strings.Builder
	err := run(t.Context(), args, &o, &e)
	return o.String(), e.String(), err
}

// statusWhen runs status until its output holds every one of want: a unit
// publishes its reported state just after the event push waits for, so a
// status run right after push may see the one before.
func statusWhen(t *testing.T, status func() (string, string, error), want ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _, err := status()
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		missing := false
		for _, w := range want {
			missing = missing || !strings.Contains(out, w)
		}
		if !missing || time.Now().After(deadline) {
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
}
