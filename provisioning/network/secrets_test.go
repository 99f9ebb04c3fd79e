package network

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func assertNoSecret(t *testing.T, where, text string) {
	t.Helper()
	for _, s := range allSecrets {
		if strings.Contains(text, s) {
			t.Errorf("%s holds a secret", where)
		}
		// Also no telling fragment (the longest word of it).
		for _, w := range strings.Fields(s) {
			if len(w) >= 6 && strings.Contains(text, w) {
				t.Errorf("%s holds part of a secret", where)
			}
		}
	}
}

// Invariant 7: secrets appear in the keyfile and nowhere else.
func TestSecretsOnlyInKeyfiles(t *testing.T) {
	p := newPKI(t)
	c := mustDecode(t, fullConfigTOML(p))

	// Validate errors, with the secrets present but wrong around them.
	bad := c
	bad.WiFi = append([]WiFi(nil), c.WiFi...)
	bad.WiFi[0].PSK = Secret(testPSK + strings.Repeat("x", 60))                      // too long
	bad.WiFi[1].PSK = Secret(testPSK3 + "\n")                                        // control char
	bad.WiFi[2].Password = Secret(testPassword + "\t")                               // control char
	bad.WiFi[3].Password = Secret(testPassword)                                      // not used with tls
	bad.WiFi = append(bad.WiFi, WiFi{SSID: "x", Security: Enterprise, PSK: testPSK}) // psk on enterprise
	bad.WiFi = append(bad.WiFi, WiFi{SSID: "y", Security: WPA2Personal, Password: testPassword})
	err := bad.Validate()
	if err == nil {
		t.Fatal("bad config validated")
	}
	if n := strings.Count(err.Error(), "\n") + 1; n < 6 {
		t.Fatalf("only %d errors: %v", n, err)
	}
	assertNoSecret(t, "Validate error", err.Error())
	_, rerr := Render(bad, p.identity)
	if rerr == nil {
		t.Fatal("Render of a bad config succeeded")
	}
	assertNoSecret(t, "Render error", rerr.Error())

	// Redacted, printed and marshalled forms.
	r := c.Redacted()
	if r.WiFi[0].PSK != Redaction || r.WiFi[2].Password != Redaction || r.WiFi[0].Password != "" {
		t.Fatalf("Redacted: %+v", r.WiFi)
	}
	if !strings.HasPrefix(r.WiFi[2].CACert, "sha256:") || r.WiFi[3].CACert != CAEnrolment {
		t.Fatalf("Redacted ca_cert: %q, %q", r.WiFi[2].CACert, r.WiFi[3].CACert)
	}
	if string(c.WiFi[0].PSK) != testPSK {
		t.Fatal("Redacted changed the original")
	}
	for _, v := range []any{c, &c, r, c.WiFi, c.WiFi[0], c.WiFi[2].Password} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%20s"} {
			assertNoSecret(t, "fmt "+verb, fmt.Sprintf(verb, v))
		}
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "JSON", string(js))
	if !strings.Contains(string(js), `"psk":"(set)"`) {
		t.Errorf("JSON does not show the psk as set: %s", js)
	}
	var tb strings.Builder
	if err := toml.NewEncoder(&tb).Encode(roomdConfig{Network: c}); err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "TOML", tb.String())
	// A config that lost its secrets that way is refused, not applied.
	if _, err := decodeStrict(tb.String()); err == nil || !strings.Contains(err.Error(), "redaction placeholder") {
		t.Fatalf("decoding a redacted config: %v", err)
	}

	// The keyfiles hold them, each exactly where it belongs.
	files, err := Render(c, p.identity)
	if err != nil {
		t.Fatal(err)
	}
	all := ""
	for name, b := range files {
		all += string(b)
		kf := parseKeyfile(t, b)
		switch name {
		case "konsult-wifi-0.nmconnection":
			if kf["wifi-security"]["psk"] != escape(testPSK) {
				t.Errorf("%s: psk not written as given", name)
			}
		case "konsult-wifi-2.nmconnection":
			if kf["802-1x"]["password"] != escape(testPassword) {
				t.Errorf("%s: password not written as given", name)
			}
		}
	}
	for _, s := range []string{escape(testPSK), escape(testPSK3), escape(testPassword)} {
		if strings.Count(all, s) != 1 {
			t.Errorf("a secret appears %d times across the keyfiles, want once", strings.Count(all, s))
		}
	}
}
