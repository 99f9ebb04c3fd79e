package fleet

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func testKey(t testing.TB, seed byte) ed25519.PrivateKey {
	t.Helper()
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func testVerifier(t testing.TB, priv ed25519.PrivateKey) *Verifier {
	t.Helper()
	v, err := NewVerifier(Identity{Device: "room-12", Groups: []string{"clinic-a", "floor-2"}}, priv.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	v.Now = func() time.Time { return t0 }
	return v
}

func configPayload() ConfigPayload {
	return ConfigPayload{
		Version:   3,
		IssuedAt:  t0.Add(-time.Hour),
		ExpiresAt: t0.Add(time.Hour),
		Target:    Target{Device: "room-12"},
		Config:    "[conference]\nroom = \"cardiology\"\n",
	}
}

func signConfig(t testing.TB, priv ed25519.PrivateKey, p ConfigPayload) []byte {
	t.Helper()
	env, err := SignConfig(priv, p)
	if err != nil {
		t.Fatal(err)
	}
	return env.Marshal()
}

// signRaw signs arbitrary payload JSON, bypassing SignConfig's checks, to
// build what a buggy or hostile signer could publish.
func signRaw(t testing.TB, priv ed25519.PrivateKey, d Domain, payload any) []byte {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	return Sign(priv, d, b).Marshal()
}

func TestVerifyConfigAcceptsSignedConfig(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	env := signConfig(t, priv, configPayload())
	c, err := v.VerifyConfig(env, map[string]uint64{"device:room-12": 2}, nil)
	if err != nil {
		t.Fatalf("VerifyConfig: %v", err)
	}
	if c.Version != 3 || c.Config != configPayload().Config || c.Target.Device != "room-12" {
		t.Errorf("got %+v", c.ConfigPayload)
	}
	if !bytes.Equal(c.Envelope, env) {
		t.Error("Config.Envelope is not the envelope as received")
	}
	if c.KeyID != KeyID(priv.Public().(ed25519.PublicKey)) {
		t.Errorf("KeyID = %s", c.KeyID)
	}
}

func TestVerifyConfigAcceptsOwnGroupAndSkew(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	p := configPayload()
	p.Target = Target{Group: "floor-2"}
	// The signer's clock 90 s ahead of the unit's, then a config that expired
	// 90 s ago by the unit's clock: both inside the 2 min skew.
	p.IssuedAt = t0.Add(90 * time.Second)
	p.ExpiresAt = p.IssuedAt.Add(time.Hour)
	if _, err := v.VerifyConfig(signConfig(t, priv, p), nil, nil); err != nil {
		t.Fatalf("issued 90s in the future: %v", err)
	}
	p.IssuedAt = t0.Add(-time.Hour)
	p.ExpiresAt = t0.Add(-90 * time.Second)
	if _, err := v.VerifyConfig(signConfig(t, priv, p), nil, nil); err != nil {
		t.Fatalf("expired 90s ago: %v", err)
	}
}

func TestVerifyConfigRefusals(t *testing.T) {
	priv := testKey(t, 1)
	other := testKey(t, 2)
	v := testVerifier(t, priv)
	good := signConfig(t, priv, configPayload())
	applied := map[string]uint64{"device:room-12": 2, "group:clinic-a": 7}

	with := func(f func(*ConfigPayload)) []byte {
		p := configPayload()
		f(&p)
		p.Kind = KindConfig
		return signRaw(t, priv, DomainConfig, p)
	}
	tamper := func(f func(*Envelope)) []byte {
		e, err := ParseEnvelope(good)
		if err != nil {
			t.Fatal(err)
		}
		f(&e)
		return e.Marshal()
	}
	rejectAll := func([]byte) error { return errors.New("unknown key conference.rom: did you mean conference.room?") }

	cases := []struct {
		name     string
		env      []byte
		validate func([]byte) error
		want     Reason
		inMsg    string
	}{
		{"not json", []byte("hello"), nil, ReasonMalformed, "not a JSON object"},
		{"empty", nil, nil, ReasonMalformed, ""},
		{"missing sig", []byte(`{"payload":"e30=","key_id":"0011223344556677"}`), nil, ReasonMalformed, "no sig"},
		{"unknown field", bytes.Replace(good, []byte(`"sig"`), []byte(`"sig2"`), 1), nil, ReasonMalformed, "unknown field"},
		{"field name case", bytes.Replace(good, []byte(`"sig"`), []byte(`"SIG"`), 1), nil, ReasonMalformed, "unknown field"},
		{"duplicate field", append(bytes.TrimSuffix(good, []byte("}")), []byte(`,"key_id":"0011223344556677"}`)...), nil, ReasonMalformed, "twice"},
		{"trailing data", append(bytes.Clone(good), []byte(`{}`)...), nil, ReasonMalformed, "after the JSON object"},
		{"short key id", tamper(func(e *Envelope) { e.KeyID = "abc" }), nil, ReasonMalformed, "key_id"},
		{"unknown key", signConfig(t, other, configPayload()), nil, ReasonUnknownKey, KeyID(other.Public().(ed25519.PublicKey))},
		{"payload changed", tamper(func(e *Envelope) {
			e.Payload = bytes.Replace(e.Payload, []byte(`"version":3`), []byte(`"version":9`), 1)
		}), nil, ReasonBadSignature, "altered"},
		{"sig changed", tamper(func(e *Envelope) { e.Sig[0] ^= 1 }), nil, ReasonBadSignature, ""},
		{"command domain", tamper(func(e *Envelope) { *e = Sign(priv, DomainCommand, e.Payload) }), nil, ReasonBadSignature, ""},
		{"control: with() alone is valid", with(func(p *ConfigPayload) {}), nil, "", ""},
		{"version 0", with(func(p *ConfigPayload) { p.Version = 0 }), nil, ReasonMalformed, "version"},
		{"no target", with(func(p *ConfigPayload) { p.Target = Target{} }), nil, ReasonMalformed, "target"},
		{"both targets", with(func(p *ConfigPayload) { p.Target.Group = "clinic-a" }), nil, ReasonMalformed, "both"},
		{"expires before issue", with(func(p *ConfigPayload) { p.ExpiresAt = p.IssuedAt }), nil, ReasonMalformed, "expires_at"},
		{"other device", with(func(p *ConfigPayload) { p.Target.Device = "room-13" }), nil, ReasonWrongTarget, "room-13"},
		{"other group", with(func(p *ConfigPayload) { p.Target = Target{Group: "clinic-b"} }), nil, ReasonWrongTarget, "clinic-b"},
		{"expired", with(func(p *ConfigPayload) { p.ExpiresAt = t0.Add(-3 * time.Minute) }), nil, ReasonExpired, "--expires"},
		{"issued in the future", with(func(p *ConfigPayload) { p.IssuedAt = t0.Add(10 * time.Minute); p.ExpiresAt = t0.Add(time.Hour) }), nil, ReasonNotYetValid, "NTP"},
		{"same version", with(func(p *ConfigPayload) { p.Version = 2 }), nil, ReasonStaleVersion, "--version 3"},
		{"older version", with(func(p *ConfigPayload) { p.Version = 1 }), nil, ReasonStaleVersion, ""},
		{"group version", with(func(p *ConfigPayload) { p.Target = Target{Group: "clinic-a"}; p.Version = 7 }), nil, ReasonStaleVersion, "group clinic-a"},
		{"bad toml", with(func(p *ConfigPayload) { p.Config = "[conference\nroom = 1\n" }), nil, ReasonSchema, "not valid TOML: line "},
		{"validator", good, rejectAll, ReasonSchema, "conference.rom"},
		// Order: the first failing check names the reason.
		{"wrong target beats expired", with(func(p *ConfigPayload) {
			p.Target.Device = "x"
			p.ExpiresAt = t0.Add(-time.Hour)
			p.IssuedAt = t0.Add(-2 * time.Hour)
		}), nil, ReasonWrongTarget, ""},
		{"expired beats stale", with(func(p *ConfigPayload) {
			p.Version = 1
			p.ExpiresAt = t0.Add(-time.Hour)
			p.IssuedAt = t0.Add(-2 * time.Hour)
		}), nil, ReasonExpired, ""},
		{"stale beats schema", with(func(p *ConfigPayload) { p.Version = 1; p.Config = "=" }), nil, ReasonStaleVersion, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.VerifyConfig(tc.env, applied, tc.validate)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want success, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v; want %s", c.ConfigPayload, tc.want)
			}
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %q, want %q (%v)", got, tc.want, err)
			}
			if !strings.Contains(err.Error(), tc.inMsg) {
				t.Errorf("message %q does not mention %q", err, tc.inMsg)
			}
			if !strings.HasPrefix(err.Error(), "verify config: "+string(tc.want)+": ") {
				t.Errorf("message %q does not start with the context and reason", err)
			}
		})
	}
}

func TestVerifyConfigRefusesCommandKind(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	// A command payload signed under the config domain: only a broken signer
	// does that, and the kind check catches it.
	env := signRaw(t, priv, DomainConfig, map[string]any{"kind": "command", "name": "reboot"})
	_, err := v.VerifyConfig(env, nil, nil)
	if ReasonOf(err) != ReasonWrongKind {
		t.Fatalf("got %v, want wrong_kind", err)
	}
}

// Invariant 7: a refusal never quotes a config value. The config carries a
// secret; every refusal path that sees the config is exercised.
func TestRefusalsNeverQuoteConfigValues(t *testing.T) {
	const secret = "sk_live_7f3a9c\"q'2b81"
	const secret2 = "hunter2-wifi-pass"
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	cfg := fmt.Sprintf("[conference]\napi_secret = %q\n[wifi]\npsk = '%s'\nwidth = 640\n", secret, secret2)
	sign := func(f func(*ConfigPayload)) []byte {
		p := configPayload()
		p.Config = cfg
		f(&p)
		p.Kind = KindConfig
		return signRaw(t, priv, DomainConfig, p)
	}
	// A validator as careless as can be: it quotes the whole config, raw and
	// escaped, and every value it finds.
	echo := func(b []byte) error {
		return fmt.Errorf("bad config %s / %q / secret %q / psk %s", b, b, secret, secret2)
	}
	bad := []struct {
		name     string
		env      []byte
		validate func([]byte) error
	}{
		{"validator echoes", sign(func(*ConfigPayload) {}), echo},
		{"syntax error inside the secret", sign(func(p *ConfigPayload) {
			p.Config = "[conference]\napi_secret = \"" + secret2 + "\\q\"\n"
		}), nil},
		{"bad number after secret", sign(func(p *ConfigPayload) {
			p.Config = "api_secret = \"" + secret2 + "\"\nwidth = 0" + secret2[:6] + "\n"
		}), nil},
		{"bad datetime", sign(func(p *ConfigPayload) {
			p.Config = "when = 2026-13-45T" + "99:99:99Z\n"
		}), nil},
		{"wrong target", sign(func(p *ConfigPayload) { p.Target.Device = "room-99" }), nil},
		{"expired", sign(func(p *ConfigPayload) { p.ExpiresAt = t0.Add(-time.Hour) }), nil},
		{"stale", sign(func(p *ConfigPayload) { p.Version = 1 }), nil},
		{"bad signature", bytes.Replace(sign(func(*ConfigPayload) {}), []byte(`"sig":"`), []byte(`"sig":"AA`), 1), nil},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.VerifyConfig(tc.env, map[string]uint64{"device:room-12": 2}, tc.validate)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			for _, s := range []string{secret, secret2, "sk_live", "hunter2", secret2[:6], "99:99"} {
				if strings.Contains(msg, s) {
					t.Errorf("message leaks %q: %s", s, msg)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("message is not one line: %q", msg)
			}
		})
	}
}

func TestSchemaMessageKeepsKeyNames(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	p := configPayload()
	p.Config = "[call]\nmax_length = \"forever\"\n"
	_, err := v.VerifyConfig(signConfig(t, priv, p), nil, func([]byte) error {
		return errors.New(`call.max_length: "forever" is not a duration: write it like "30ms" or "2s"`)
	})
	if err == nil || !strings.Contains(err.Error(), "call.max_length") || !strings.Contains(err.Error(), `"30ms"`) {
		t.Fatalf("want the key and the fix kept: %v", err)
	}
	if strings.Contains(err.Error(), "forever") {
		t.Fatalf("value leaked: %v", err)
	}
}

func TestSignConfigRefusesBrokenInput(t *testing.T) {
	priv := testKey(t, 1)
	for name, f := range map[string]func(*ConfigPayload){
		"bad toml":   func(p *ConfigPayload) { p.Config = "a = \n" },
		"version 0":  func(p *ConfigPayload) { p.Version = 0 },
		"bad target": func(p *ConfigPayload) { p.Target = Target{Device: "room/12"} },
		"no expiry":  func(p *ConfigPayload) { p.ExpiresAt = time.Time{} },
	} {
		p := configPayload()
		f(&p)
		if _, err := SignConfig(priv, p); err == nil {
			t.Errorf("%s: SignConfig accepted it", name)
		}
	}
}

func TestKeyID(t *testing.T) {
	pub := testKey(t, 1).Public().(ed25519.PublicKey)
	sum := sha256.Sum256(pub)
	if got, want := KeyID(pub), hex.EncodeToString(sum[:8]); got != want || len(got) != 16 {
		t.Fatalf("KeyID = %s, want %s", got, want)
	}
}

func TestEnvelopeWireFormat(t *testing.T) {
	priv := testKey(t, 1)
	env := Sign(priv, DomainConfig, []byte(`{"kind":"config"}`))
	var w map[string]string
	if err := json.Unmarshal(env.Marshal(), &w); err != nil {
		t.Fatal(err)
	}
	if len(w) != 3 || w["key_id"] != KeyID(priv.Public().(ed25519.PublicKey)) {
		t.Fatalf("wire form %v", w)
	}
	payload, _ := base64.StdEncoding.DecodeString(w["payload"])
	sig, _ := base64.StdEncoding.DecodeString(w["sig"])
	// The documented construction, checked independently of Envelope.Verify.
	if !ed25519.Verify(priv.Public().(ed25519.PublicKey), append([]byte("konsult-config-v1\n"), payload...), sig) {
		t.Fatal("signature does not cover \"konsult-config-v1\\n\" + payload")
	}
}

func TestKeyFiles(t *testing.T) {
	priv := testKey(t, 1)
	pub := priv.Public().(ed25519.PublicKey)
	dir := t.TempDir()

	keyPath := filepath.Join(dir, "fleet.key")
	if err := os.WriteFile(keyPath, FormatPrivateKey(priv), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadPrivateKey(keyPath)
	if err != nil || !got.Equal(priv) {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(keyPath); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable key must be refused with the fix: %v", err)
	}

	// Two keys during a rotation, with comments and blank lines.
	second := testKey(t, 2).Public().(ed25519.PublicKey)
	text := append(FormatPublicKey(pub), "\n# next key\n"...)
	text = append(text, FormatPublicKey(second)...)
	pubPath := filepath.Join(dir, "fleet.pub")
	if err := os.WriteFile(pubPath, text, 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadPublicKeys(pubPath)
	if err != nil || len(keys) != 2 || !keys[0].Equal(pub) || !keys[1].Equal(second) {
		t.Fatalf("LoadPublicKeys = %d keys, %v", len(keys), err)
	}
	v, err := NewVerifier(Identity{Device: "room-12"}, keys...)
	if err != nil {
		t.Fatal(err)
	}
	v.Now = func() time.Time { return t0 }
	if _, err := v.VerifyConfig(signConfig(t, testKey(t, 2), configPayload()), nil, nil); err != nil {
		t.Fatalf("config signed by the second pinned key: %v", err)
	}

	for name, bad := range map[string]string{
		"empty":     "# nothing\n",
		"short key": base64.StdEncoding.EncodeToString([]byte("short")) + "\n",
		"not b64":   "!!!\n",
	} {
		if _, err := ParsePublicKeys([]byte(bad)); err == nil {
			t.Errorf("ParsePublicKeys(%s) accepted it", name)
		}
	}
	if _, err := ParsePrivateKey(append(FormatPrivateKey(priv), FormatPrivateKey(priv)...)); err == nil {
		t.Error("ParsePrivateKey accepted two keys")
	}
	seed := base64.StdEncoding.EncodeToString(priv.Seed())
	if _, err := ParsePrivateKey([]byte(seed[:20] + "\n")); err == nil || strings.Contains(err.Error(), seed[:20]) {
		t.Errorf("a broken key is refused without quoting it: %v", err)
	}
}

func TestNewVerifierRefusesBadIdentity(t *testing.T) {
	pub := testKey(t, 1).Public().(ed25519.PublicKey)
	for _, id := range []Identity{
		{},
		{Device: "room#12"},
		{Device: "room-12", Groups: []string{"a", "a"}},
		{Device: "room-12", Groups: []string{"+"}},
	} {
		if _, err := NewVerifier(id, pub); err == nil {
			t.Errorf("NewVerifier(%+v) accepted it", id)
		}
	}
	if _, err := NewVerifier(Identity{Device: "room-12"}); err == nil {
		t.Error("NewVerifier without keys accepted")
	}
}

func TestRedactValues(t *testing.T) {
	cfg := []byte("[wifi]\npsk = \"correct-horse-battery\"\nssid = \"ab\"\n")
	got := RedactValues(`wifi.psk "correct-horse-battery" rejected; ssid "ab" too short; correct-horse-battery`, cfg)
	if strings.Contains(got, "correct-horse") || strings.Contains(got, `"ab"`) || !strings.Contains(got, "wifi.psk") {
		t.Fatalf("RedactValues = %q", got)
	}
	if got := RedactValues("psk hunter2", []byte("psk = \"hunter2")); strings.Contains(got, "hunter2") {
		t.Fatalf("unparseable config: %q", got)
	}
}
