package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigErrorNamesKeyAndLineNotValue (issue 14, finding 5): a mistake in
// the unit's config file is reported by line and key, never by the value,
// which is often a secret. `api_secret = truesecretvalue` (unquoted) used to
// give `expected value but found "truesecretvalue"`.
func TestConfigErrorNamesKeyAndLineNotValue(t *testing.T) {
	const secret = "truesecretvalue"
	for _, c := range []struct {
		name, line, key string
	}{
		{"unquoted", "api_secret = " + secret, "conference.api_secret"},
		{"unquoted, short", "api_secret = tru", "conference.api_secret"},
		{"unterminated", "api_secret = \"" + secret, "conference.api_secret"},
		{"unterminated literal", "api_secret = '" + secret, "conference.api_secret"},
		{"bad escape", "api_secret = \"true\\qsecretvalue\"", "conference.api_secret"},
		{"trailing text", "api_secret = \"" + secret + "\" " + secret, "conference.api_secret"},
		{"number-like", "api_secret = 12" + secret, "conference.api_secret"},
		{"datetime-like", "api_secret = 1979-05-27T" + secret, "conference.api_secret"},
		{"wrong type", "token = [\"" + secret + "\"]", "conference.token"},
		{"unquoted in a table array", "urls = [\"turn:turn.example:3478\"]\ncredential = " + secret, "conference.ice_servers.credential"},
	} {
		t.Run(c.name, func(t *testing.T) {
			head := "# the unit's config\n[conference]\nurl = \"https://sfu.example\"\n"
			if strings.HasPrefix(c.line, "urls") {
				head = "# the unit's config\n[[conference.ice_servers]]\n"
			}
			text := head + c.line + "\n"
			p := filepath.Join(t.TempDir(), "roomd.toml")
			if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			line := strings.Count(text[:strings.Index(text, secret[:3])], "\n") + 1
			if !strings.Contains(msg, fmt.Sprintf("line %d", line)) || !strings.Contains(msg, c.key) {
				t.Errorf("does not name line %d and key %s: %s", line, c.key, msg)
			}
			shown := strings.ReplaceAll(msg, c.key, "") // the key's name holds "secret"
			for i := 0; i+6 <= len(secret); i++ {
				if strings.Contains(shown, secret[i:i+6]) {
					t.Fatalf("quotes the value (%q): %s", secret[i:i+6], msg)
				}
			}
			if strings.Contains(msg, "tru\"") || strings.Contains(msg, "'t'") || strings.Contains(msg, `\q`) || strings.Contains(msg, "1979") {
				t.Errorf("quotes a piece of the value: %s", msg)
			}
			t.Log(msg)
		})
	}
}

// TestConfigValidationErrorRepeatsNoValue (issue 14, finding 5): a value
// that parses but is not one the key takes is refused by naming the key
// and what it takes, never by quoting the value: a secret pasted on the
// wrong line (`log.level = "<the api secret>"`) must not reach the journal
// or the fleet's rejection reason.
func TestConfigValidationErrorRepeatsNoValue(t *testing.T) {
	const secret = "truesecretvalue"
	for _, c := range []struct{ section, key string }{
		{"unit", "network_apply"},
		{"unit", "board"},
		{"log", "level"},
		{"log", "format"},
		{"conference", "connector"},
		{"conference", "video_codec"},
		{"conference", "video_passthrough"},
		{"display", "language"},
	} {
		t.Run(c.section+"."+c.key, func(t *testing.T) {
			text := fmt.Sprintf("[%s]\n%s = %q\n", c.section, c.key, secret)
			if c.key == "connector" { // e2ee_key_file's check quoted the connector too
				text += "e2ee_key_file = \"/etc/konsult/e2ee.key\"\n"
			}
			p := filepath.Join(t.TempDir(), "roomd.toml")
			if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, c.section+"."+c.key) {
				t.Errorf("does not name %s.%s: %s", c.section, c.key, msg)
			}
			for i := 0; i+6 <= len(secret); i++ {
				if strings.Contains(msg, secret[i:i+6]) {
					t.Fatalf("quotes the value (%q): %s", secret[i:i+6], msg)
				}
			}
			t.Log(msg)
		})
	}
}
