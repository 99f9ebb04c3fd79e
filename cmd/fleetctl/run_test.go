package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

var testNow = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func init() { now = func() time.Time { return testNow } }

func fleetctl(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := fleetctl(t, args...)
	if err != nil {
		t.Fatalf("fleetctl %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func keys(t *testing.T) (dir string, pubs []ed25519.PublicKey) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "keys")
	mustRun(t, "keygen", "--out", dir)
	pubs, err := fleet.LoadPublicKeys(filepath.Join(dir, "fleet.pub"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, pubs
}

func verifier(t *testing.T, pubs []ed25519.PublicKey) *fleet.Verifier {
	t.Helper()
	v, err := fleet.NewVerifier(fleet.Identity{Device: "room-12", Groups: []string{"clinic-a"}}, pubs...)
	if err != nil {
		t.Fatal(err)
	}
	v.Now = func() time.Time { return testNow.Add(time.Minute) }
	return v
}

func TestKeygen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	out := mustRun(t, "keygen", "--out", dir)
	key, err := os.Stat(filepath.Join(dir, "fleet.key"))
	if err != nil || key.Mode().Perm() != 0o600 {
		t.Fatalf("fleet.key: %v, %v", key.Mode(), err)
	}
	d, _ := os.Stat(dir)
	if d.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %v, want 0700", d.Mode().Perm())
	}
	priv, err := fleet.LoadPrivateKey(filepath.Join(dir, "fleet.key"))
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := fleet.LoadPublicKeys(filepath.Join(dir, "fleet.pub"))
	if err != nil || len(pubs) != 1 || !pubs[0].Equal(priv.Public()) {
		t.Fatalf("fleet.pub does not hold fleet.key's public key: %v", err)
	}
	if !strings.Contains(out, fleet.KeyID(pubs[0])) {
		t.Errorf("keygen output does not name the key id:\n%s", out)
	}
	if strings.Contains(out, base64.StdEncoding.EncodeToString(priv.Seed())) {
		t.Error("keygen printed the private key")
	}

	_, _, err = fleetctl(t, "keygen", "--out", dir)
	if err == nil || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second keygen: %v", err)
	}
	if again, _ := fleet.LoadPrivateKey(filepath.Join(dir, "fleet.key")); !again.Equal(priv) {
		t.Fatal("a refused keygen replaced the key")
	}
	mustRun(t, "keygen", "--out", dir, "--force")
	if again, _ := fleet.LoadPrivateKey(filepath.Join(dir, "fleet.key")); again.Equal(priv) {
		t.Fatal("keygen --force kept the old key")
	}
}

func TestSignConfigVerifiesOnAUnit(t *testing.T) {
	dir, pubs := keys(t)
	cfg := filepath.Join(t.TempDir(), "room.toml")
	text := "[conference]\nroom = \"cardiology\"\napi_secret = \"s3cret-value\"\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// Flags after the file work too.
	out, errOut, err := fleetctl(t, "sign", "--key", filepath.Join(dir, "fleet.key"), "--device", "room-12", cfg, "--version", "4", "--urgent")
	if err != nil {
		t.Fatal(err)
	}
	c, err := verifier(t, pubs).VerifyConfig([]byte(out), map[string]uint64{"device:room-12": 3}, nil)
	if err != nil {
		t.Fatalf("unit refuses fleetctl's envelope: %v", err)
	}
	if c.Version != 4 || !c.Urgent || c.Config != text || !c.ExpiresAt.Equal(testNow.Add(168*time.Hour)) {
		t.Fatalf("payload %+v", c.ConfigPayload)
	}
	if !strings.Contains(errOut, "version 4") || strings.Contains(errOut+out, "s3cret-value") {
		t.Errorf("summary %q (or the envelope in clear) is wrong", errOut)
	}

	// --out writes a 0600 file with the same kind of envelope.
	file := filepath.Join(t.TempDir(), "env.json")
	mustRun(t, "sign", "--key", filepath.Join(dir, "fleet.key"), "--group", "clinic-a", "--version", "1", "--expires", "1h", "--out", file, cfg)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("--out file mode %v", fi.Mode().Perm())
	}
	if c, err := verifier(t, pubs).VerifyConfig(b, nil, nil); err != nil || c.Target.Group != "clinic-a" || !c.ExpiresAt.Equal(testNow.Add(time.Hour)) {
		t.Fatalf("--out envelope: %+v, %v", c, err)
	}
}

func TestSignRefusals(t *testing.T) {
	dir, _ := keys(t)
	key := filepath.Join(dir, "fleet.key")
	tmp := t.TempDir()
	good := filepath.Join(tmp, "good.toml")
	bad := filepath.Join(tmp, "bad.toml")
	os.WriteFile(good, []byte("[call]\nmax_length = \"4h\"\n"), 0o600)
	os.WriteFile(bad, []byte("[call]\nmax_length = \"4h\"\napi_secret = \"hunter2-secret\n"), 0o600)
	localOnly := filepath.Join(tmp, "local-only.toml")
	os.WriteFile(localOnly, []byte("[fleet]\nrenew_before = \"720h\"\n"), 0o600)
	unknown := filepath.Join(tmp, "unknown.toml")
	os.WriteFile(unknown, []byte("[call]\nmax_lenght = \"4h\"\n"), 0o600)
	outOfRange := filepath.Join(tmp, "range.toml")
	os.WriteFile(outOfRange, []byte("[shutter]\ntimeout = \"1h\"\n"), 0o600)
	loose := filepath.Join(tmp, "loose.key")
	kb, _ := os.ReadFile(key)
	os.WriteFile(loose, kb, 0o644)

	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"invalid toml", []string{"--key", key, "--device", "room-12", "--version", "1", bad}, []string{"bad.toml", "not valid TOML", "line 3", "column"}},
		{"no version", []string{"--key", key, "--device", "room-12", good}, []string{"--version is required"}},
		{"version 0", []string{"--key", key, "--device", "room-12", "--version", "0", good}, []string{"1 or more"}},
		{"no target", []string{"--key", key, "--version", "1", good}, []string{"--device ID or --group NAME"}},
		{"two targets", []string{"--key", key, "--device", "a", "--group", "b", "--version", "1", good}, []string{"not both"}},
		{"bad device id", []string{"--key", key, "--device", "room/12", "--version", "1", good}, []string{"device id"}},
		{"no key", []string{"--device", "room-12", "--version", "1", good}, []string{"--key is required"}},
		{"loose key", []string{"--key", loose, "--device", "room-12", "--version", "1", good}, []string{"chmod 600"}},
		{"no file", []string{"--key", key, "--device", "room-12", "--version", "1"}, []string{"exactly one config file"}},
		{"missing file", []string{"--key", key, "--device", "room-12", "--version", "1", filepath.Join(tmp, "nope.toml")}, []string{"read config", "no such file"}},
		{"bad flag", []string{"--vesion", "1", good}, []string{"-vesion", "fleetctl sign --help"}},
		// What a unit would refuse is refused before it is signed, in the
		// unit's words (appliance/config.CheckFleet).
		{"local-only key", []string{"--key", key, "--device", "room-12", "--version", "1", localOnly}, []string{"local-only.toml", "refused by the unit's schema", "renew_before", "unit's own config file"}},
		{"unknown key", []string{"--key", key, "--device", "room-12", "--version", "1", unknown}, []string{"unknown.toml", "schema", "max_lenght"}},
		{"out of range", []string{"--key", key, "--device", "room-12", "--version", "1", outOfRange}, []string{"range.toml", "schema", "shutter.timeout"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := fleetctl(t, append([]string{"sign"}, tc.args...)...)
			if err == nil {
				t.Fatalf("signed: %s", out)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
			if strings.Contains(msg, "\n") || strings.Contains(msg, "hunter2") {
				t.Errorf("error is not one safe line: %q", msg)
			}
			if out != "" {
				t.Errorf("a refused sign printed %q", out)
			}
		})
	}
}

func TestSignCommand(t *testing.T) {
	dir, pubs := keys(t)
	key := filepath.Join(dir, "fleet.key")
	out := mustRun(t, "sign-command", "--key", key, "--group", "clinic-a", "identify", "--seconds", "30")
	nonces := fleet.NewNonceStore(nil, nil)
	v := verifier(t, pubs)
	c, err := v.VerifyCommand([]byte(out), nonces)
	if err != nil {
		t.Fatalf("unit refuses fleetctl's command: %v", err)
	}
	if c.Name != "identify" || c.Parsed.Seconds != 30 || !c.ExpiresAt.Equal(testNow.Add(5*time.Minute)) {
		t.Fatalf("command %+v", c)
	}
	if _, err := v.VerifyCommand([]byte(out), nonces); fleet.ReasonOf(err) != fleet.ReasonReplayed {
		t.Fatalf("the same envelope twice: %v", err)
	}
	// Each signing gets a fresh nonce.
	again := mustRun(t, "sign-command", "--key", key, "--group", "clinic-a", "identify", "--seconds", "30")
	if _, err := v.VerifyCommand([]byte(again), nonces); err != nil {
		t.Fatalf("second signing of the same command: %v", err)
	}

	for name, args := range map[string][]string{
		"unknown command":  {"--key", key, "--device", "room-12", "selfdestruct"},
		"seconds on leave": {"--key", key, "--device", "room-12", "--seconds", "3", "leave"},
		"seconds too big":  {"--key", key, "--device", "room-12", "--seconds", "301", "identify"},
		"too long":         {"--key", key, "--device", "room-12", "--expires", "2h", "reboot"},
		"no name":          {"--key", key, "--device", "room-12"},
	} {
		if out, _, err := fleetctl(t, append([]string{"sign-command"}, args...)...); err == nil {
			t.Errorf("%s: signed %s", name, out)
		}
	}
}

func TestHelpAndUnknownCommand(t *testing.T) {
	out := mustRun(t, "--help")
	for _, c := range []string{"keygen", "sign", "sign-command", "push", "status", "watch", "cmd"} {
		if !strings.Contains(out, c) {
			t.Errorf("usage does not list %s", c)
		}
	}
	out = mustRun(t, "sign-command", "--help")
	if !strings.Contains(out, "-seconds") || !strings.Contains(out, "usage: fleetctl sign-command") {
		t.Errorf("sign-command --help:\n%s", out)
	}
	for _, c := range []string{"push", "status", "watch", "cmd"} {
		out := mustRun(t, c, "--help")
		if !strings.Contains(out, "usage: fleetctl "+c) || !strings.Contains(out, "-broker") || !strings.Contains(out, "-json") {
			t.Errorf("%s --help:\n%s", c, out)
		}
	}
	// Every command answers --help (the man page is made from them).
	for _, c := range subcommands() {
		if out, _, err := fleetctl(t, c.name, "--help"); err != nil || !strings.Contains(out, "usage: fleetctl "+c.name) {
			t.Errorf("%s --help: %v\n%s", c.name, err, out)
		}
	}
	for _, sub := range [][]string{{"ca", "init"}, {"ca", "crl"}, {"enrol", "code"}, {"enrol", "list"}, {"enrol", "approve"}, {"enrol", "reject"}} {
		if out, _, err := fleetctl(t, append(sub, "--help")...); err != nil || !strings.Contains(out, "-ca-dir") && !strings.Contains(out, "-dir") {
			t.Errorf("%v --help: %v\n%s", sub, err, out)
		}
	}
	if _, _, err := fleetctl(t, "frobnicate"); err == nil || !strings.Contains(err.Error(), "fleetctl --help") {
		t.Errorf("unknown command: %v", err)
	}
	if _, _, err := fleetctl(t); err == nil {
		t.Error("no command accepted")
	}
}

// "fleetctl --config FILE status" (as roomd's demo prints it and the docs
// write it) reads the same settings file as "fleetctl status --config FILE".
func TestConfigBeforeTheCommand(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nowhere", "fleetctl.toml")
	_, _, after := fleetctl(t, "status", "--config", missing)
	_, _, before := fleetctl(t, "--config", missing, "status")
	_, _, joined := fleetctl(t, "--config="+missing, "status")
	for _, err := range []error{after, before, joined} {
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Fatalf("status with a missing settings file: %v (after: %v)", err, after)
		}
	}
	if _, _, err := fleetctl(t, "--config"); err == nil || !strings.Contains(err.Error(), "--config needs a file") {
		t.Fatalf("--config without a file: %v", err)
	}
}
