package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// caFleet is a fleet whose units trust the fleet.pub of a CA folder, as
// units enrolled from it do (fleetctl ca init writes both keys there).
func caFleet(t *testing.T, units map[string][]string) (*testFleet, string) {
	t.Helper()
	realClock(t)
	noSettings(t)
	dir := filepath.Join(t.TempDir(), "fleet-ca")
	if _, err := ca.Init(dir, "test fleet"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "keygen", "--out", dir)
	pubs, err := fleet.LoadPublicKeys(filepath.Join(dir, "fleet.pub"))
	if err != nil {
		t.Fatal(err)
	}
	b := brokertest.Start(t, brokertest.Options{Units: units})
	return &testFleet{t: t, b: b, key: filepath.Join(dir, "fleet.key"), pubs: pubs}, dir
}

// retainedVersion is the version of the config envelope retained on topic
// (0: none).
func retainedVersion(t *testing.T, b *brokertest.Broker, topic string) uint64 {
	t.Helper()
	raw, ok := fleettest.RetainedUnder(t, b, topic, time.Second)[topic]
	if !ok {
		return 0
	}
	e, err := fleet.ParseEnvelope(raw)
	if err != nil {
		t.Fatalf("retained on %s: %v", topic, err)
	}
	var p fleet.ConfigPayload
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		t.Fatal(err)
	}
	return p.Version
}

// Issue 18, item 1: the README's push --key ~/fleet/fleet.key (from
// keygen) was refused by every enrolled unit as unknown_key, and left its
// config retained. --key now defaults to the CA folder's fleet.key (from
// --ca-dir or ca_dir in the settings file), and a push signed by another
// key is refused before anything is published.
func TestPushSignsWithTheCAFoldersKey(t *testing.T) {
	f, dir := caFleet(t, map[string][]string{"room-12": nil})
	f.startUnit("room-12", nil)
	cfg := writeConfig(t, "[call]\nmax_length = \"1h\"\n")
	topic := link.Topics{}.DeviceConfig("room-12")

	out, errOut, err := f.fleetctl("push", "--ca-dir", dir, "--device", "room-12", "--version", "1", cfg)
	if err != nil {
		t.Fatalf("push without --key, --ca-dir given: %v\n%s%s", err, out, errOut)
	}
	if r := row(t, out, "room-12"); r[1] != "applied" {
		t.Fatalf("push row %q\n%s", r, out)
	}

	settings := writeSettings(t, "ca_dir = "+strconvQuote(dir)+"\n")
	out, errOut, err = f.fleetctl("push", "--config", settings, "--device", "room-12", "--version", "2", cfg)
	if err != nil {
		t.Fatalf("push without --key, ca_dir in the settings file: %v\n%s%s", err, out, errOut)
	}
	if r := row(t, out, "room-12"); r[1] != "applied" {
		t.Fatalf("push row %q\n%s", r, out)
	}

	other, _ := keys(t) // the README's keygen --out ~/fleet
	_, _, err = f.fleetctl("push", "--key", filepath.Join(other, "fleet.key"), "--ca-dir", dir, "--device", "room-12", "--version", "3", cfg)
	if err == nil {
		t.Fatal("a push signed by a key the units do not trust was published")
	}
	for _, want := range []string{"refused before publishing", "unknown_key", filepath.Join(dir, "fleet.key")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not mention %q", err, want)
		}
	}
	if v := retainedVersion(t, f.b, topic); v != 2 {
		t.Errorf("retained config after the refused push: version %d, want 2", v)
	}
	// The same through the settings file's ca_dir, and for a signed envelope.
	env := filepath.Join(t.TempDir(), "env.json")
	mustRun(t, "sign", "--key", filepath.Join(other, "fleet.key"), "--device", "room-12", "--version", "3", "--out", env, cfg)
	if _, _, err := f.fleetctl("push", "--config", settings, "--envelope", env); err == nil || !strings.Contains(err.Error(), "unknown_key") {
		t.Errorf("push --envelope signed by another key: %v", err)
	}
	if v := retainedVersion(t, f.b, topic); v != 2 {
		t.Errorf("retained config after the refused envelope: version %d, want 2", v)
	}
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }

// Without a CA folder, the error names the key units trust.
func TestNoKeyNamesTheCAFoldersKey(t *testing.T) {
	noSettings(t)
	cfg := writeConfig(t, "[call]\nmax_length = \"1h\"\n")
	for _, args := range [][]string{
		{"push", "--device", "room-12", "--version", "1", cfg},
		{"sign", "--device", "room-12", "--version", "1", cfg},
		{"cmd", "--device", "room-12", "identify"},
		{"sign-command", "--device", "room-12", "identify"},
	} {
		_, _, err := fleetctl(t, args...)
		if err == nil || !strings.Contains(err.Error(), "--key is required") || !strings.Contains(err.Error(), "fleetctl ca init") || !strings.Contains(err.Error(), "--ca-dir") {
			t.Errorf("%s without --key: %v", args[0], err)
		}
	}
}

func TestKeygenWarnsOfTheCAFoldersKey(t *testing.T) {
	noSettings(t)
	dir := filepath.Join(t.TempDir(), "fleet-ca")
	if _, err := ca.Init(dir, "test fleet"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "keygen", "--out", dir)
	_, errOut, err := fleetctl(t, "keygen", "--out", filepath.Join(t.TempDir(), "fleet"), "--ca-dir", dir)
	if err != nil {
		t.Fatalf("keygen: %v", err)
	}
	if !strings.Contains(errOut, "warning") || !strings.Contains(errOut, "unknown_key") || !strings.Contains(errOut, filepath.Join(dir, "fleet.key")) {
		t.Errorf("keygen beside a CA folder's key does not warn:\n%s", errOut)
	}
	_, errOut, err = fleetctl(t, "keygen", "--out", filepath.Join(t.TempDir(), "fleet"))
	if err != nil || errOut != "" {
		t.Errorf("keygen without a CA folder: %v %q", err, errOut)
	}
}

// The settings file that ca init writes names its CA folder, so push and
// cmd find the key enrolment handed out.
func TestCAInitSettingsNameTheCAFolder(t *testing.T) {
	noSettings(t)
	dir := filepath.Join(t.TempDir(), "fleet-ca")
	mustRun(t, "ca", "init", "--dir", dir, "--broker", "mqtts://broker.example:8883")
	fs := newFlags("test")
	f := addCADir(fs)
	fs.String("config", filepath.Join(dir, "admin", "fleetctl.toml"), "")
	got, err := f.resolve()
	if err != nil || got != dir {
		t.Fatalf("ca_dir from the settings ca init wrote: %q, %v; want %q", got, err, dir)
	}
	if _, err := os.Stat(defaultKey("", got)); err != nil {
		t.Errorf("the default key: %v", err)
	}
}

// Issue 18, item 6: no answer, right after an approval, is usually an ACL
// that does not list the unit yet.
func TestNoAnswerNamesTheACL(t *testing.T) {
	_, push := describeResult(manager.PushResult{Result: manager.ResNoAnswer})
	_, cmd := describeCmdResult(manager.CmdResult{Result: manager.ResNoAnswer}, fleet.CommandPayload{})
	for _, d := range []string{push, cmd} {
		if !strings.Contains(d, "ACL") || !strings.Contains(d, "fleetctl acl") || !strings.Contains(d, "reload") {
			t.Errorf("no answer detail %q does not point at the ACL", d)
		}
	}
}

// Issue 18, item 1: without a CA folder fleetctl cannot tell the units'
// key before publishing, so a push signed by another key is refused by
// every unit (unknown_key) and yet stays the retained config that units
// connecting later get and refuse too. Push must say so, not only "fix the
// config".
func TestPushNoUnitCouldVerifySaysItStaysRetained(t *testing.T) {
	f := startFleet(t, map[string][]string{"room-12": nil})
	f.startUnit("room-12", nil)
	cfg := writeConfig(t, "[call]\nmax_length = \"1h\"\n")
	other, _ := keys(t) // a keygen --out ~/fleet the units never pinned
	out, _, err := f.fleetctl("push", "--key", filepath.Join(other, "fleet.key"), "--device", "room-12", "--version", "1", cfg)
	if r := row(t, out, "room-12"); r[1] != "rejected: unknown_key" {
		t.Fatalf("push row %q\n%s", r, out)
	}
	if v := retainedVersion(t, f.b, link.Topics{}.DeviceConfig("room-12")); v != 1 {
		t.Fatalf("retained version %d: the test expects the refused config retained", v)
	}
	if err == nil {
		t.Fatal("push that every unit refused exited 0")
	}
	for _, want := range []string{"retained", "units that connect later", "unknown_key", "fleet.key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("push error %q does not mention %q", err, want)
		}
	}
}
