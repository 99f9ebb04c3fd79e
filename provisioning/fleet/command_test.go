package fleet

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"
)

func commandPayload(name string) CommandPayload {
	return CommandPayload{
		Name:      name,
		IssuedAt:  t0.Add(-time.Minute),
		ExpiresAt: t0.Add(4 * time.Minute),
		Target:    Target{Group: "clinic-a"},
	}
}

func signCommand(t testing.TB, priv ed25519.PrivateKey, p CommandPayload) []byte {
	t.Helper()
	env, err := SignCommand(priv, p)
	if err != nil {
		t.Fatal(err)
	}
	return env.Marshal()
}

func TestVerifyCommand(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	nonces := NewNonceStore(nil, nil)

	p := commandPayload(CommandIdentify)
	p.Args = map[string]json.RawMessage{"seconds": json.RawMessage("30")}
	c, err := v.VerifyCommand(signCommand(t, priv, p), nonces)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != CommandIdentify || c.Parsed.Seconds != 30 || len(c.Nonce) != 32 {
		t.Fatalf("got %+v", c)
	}

	c, err = v.VerifyCommand(signCommand(t, priv, commandPayload(CommandIdentify)), nonces)
	if err != nil || c.Parsed.Seconds != IdentifyDefaultSeconds {
		t.Fatalf("identify without seconds: %+v, %v", c, err)
	}
}

func TestVerifyCommandRefusals(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	raw := func(f func(*CommandPayload)) []byte {
		p := commandPayload(CommandReboot)
		p.Kind = KindCommand
		p.Nonce = NewNonce()
		f(&p)
		return signRaw(t, priv, DomainCommand, p)
	}
	cfg, err := SignConfig(priv, configPayload())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []byte
		want Reason
	}{
		{"config replayed as command", cfg.Marshal(), ReasonBadSignature},
		{"config payload under command domain", Sign(priv, DomainCommand, cfg.Payload).Marshal(), ReasonWrongKind},
		{"unknown command", raw(func(p *CommandPayload) { p.Name = "format-disk" }), ReasonSchema},
		{"argument on reboot", raw(func(p *CommandPayload) { p.Args = map[string]json.RawMessage{"seconds": []byte("3")} }), ReasonSchema},
		{"identify too long", raw(func(p *CommandPayload) {
			p.Name = CommandIdentify
			p.Args = map[string]json.RawMessage{"seconds": []byte("3600")}
		}), ReasonSchema},
		{"identify seconds not a number", raw(func(p *CommandPayload) {
			p.Name = CommandIdentify
			p.Args = map[string]json.RawMessage{"seconds": []byte(`"ten"`)}
		}), ReasonSchema},
		{"short nonce", raw(func(p *CommandPayload) { p.Nonce = "abcd" }), ReasonMalformed},
		{"lives too long", raw(func(p *CommandPayload) { p.ExpiresAt = p.IssuedAt.Add(2 * time.Hour) }), ReasonMalformed},
		{"other group", raw(func(p *CommandPayload) { p.Target.Group = "clinic-b" }), ReasonWrongTarget},
		{"expired", raw(func(p *CommandPayload) {
			p.IssuedAt = t0.Add(-10 * time.Minute)
			p.ExpiresAt = t0.Add(-5 * time.Minute)
		}), ReasonExpired},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nonces := NewNonceStore(nil, nil)
			_, err := v.VerifyCommand(tc.env, nonces)
			if ReasonOf(err) != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
			if nonces.Len() != 0 {
				t.Error("a refused command's nonce was recorded")
			}
		})
	}
}

func TestCommandReplayAcrossRestart(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	var saved map[string]time.Time
	save := func(m map[string]time.Time) error { saved = maps.Clone(m); return nil }

	env := signCommand(t, priv, commandPayload(CommandReboot))
	if _, err := v.VerifyCommand(env, NewNonceStore(nil, save)); err != nil {
		t.Fatal(err)
	}
	if len(saved) != 1 {
		t.Fatalf("nonce not persisted before the command was accepted: %v", saved)
	}
	// roomd restarts (the reboot command did that) and the same retained or
	// captured envelope arrives again.
	_, err := v.VerifyCommand(env, NewNonceStore(saved, save))
	if ReasonOf(err) != ReasonReplayed {
		t.Fatalf("replay after restart: %v", err)
	}
}

func TestNonceStoreForgetsExpiredNonces(t *testing.T) {
	s := NewNonceStore(nil, nil)
	for i := 0; i < 10; i++ {
		if err := s.Record(NewNonce(), t0.Add(time.Minute), t0); err != nil {
			t.Fatal(err)
		}
	}
	later := t0.Add(time.Minute + DefaultSkew + time.Second)
	if err := s.Record(NewNonce(), later.Add(time.Minute), later); err != nil {
		t.Fatal(err)
	}
	if s.Len() != 1 {
		t.Fatalf("after the first 10 expired, the store holds %d nonces, want 1", s.Len())
	}
	// A nonce past its expiry is refused as expired, not looked up.
	if err := s.Record(NewNonce(), t0, later); ReasonOf(err) != ReasonExpired {
		t.Fatalf("expired: %v", err)
	}
}

func TestNonceStoreBounded(t *testing.T) {
	s := NewNonceStore(nil, nil)
	for i := 0; i < MaxNonces; i++ {
		if err := s.Record(NewNonce(), t0.Add(time.Hour), t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Record(NewNonce(), t0.Add(time.Hour), t0); ReasonOf(err) != ReasonTooMany {
		t.Fatalf("full store: %v", err)
	}
	if s.Len() != MaxNonces {
		t.Fatalf("store grew past its bound: %d", s.Len())
	}
}

func TestNonceStoreSaveFailureRefusesCommand(t *testing.T) {
	fail := true
	s := NewNonceStore(nil, func(map[string]time.Time) error {
		if fail {
			return errors.New("read-only file system")
		}
		return nil
	})
	n := NewNonce()
	err := s.Record(n, t0.Add(time.Minute), t0)
	if ReasonOf(err) != ReasonInternal || !strings.Contains(err.Error(), "not run") {
		t.Fatalf("save failure: %v", err)
	}
	// The unsaved nonce is not remembered, so the command can be retried once
	// storage works.
	fail = false
	if err := s.Record(n, t0.Add(time.Minute), t0); err != nil {
		t.Fatalf("retry after storage recovered: %v", err)
	}
}

func TestVerifyCommandWithoutNonceStoreFailsClosed(t *testing.T) {
	priv := testKey(t, 1)
	v := testVerifier(t, priv)
	if _, err := v.VerifyCommand(signCommand(t, priv, commandPayload(CommandLeave)), nil); ReasonOf(err) != ReasonInternal {
		t.Fatalf("got %v", err)
	}
}
