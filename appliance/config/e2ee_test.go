package config

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func keyMaterial() []byte {
	k := make([]byte, E2EEKeySize)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

func writeKey(t *testing.T, content []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "e2ee.key")
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// noKeyIn fails if err's text holds K in any common form.
func noKeyIn(t *testing.T, err error, k []byte) {
	t.Helper()
	if err == nil {
		return
	}
	s := err.Error()
	for _, f := range []string{string(k), hex.EncodeToString(k), base64.RawURLEncoding.EncodeToString(k), base64.StdEncoding.EncodeToString(k)} {
		if strings.Contains(s, f) {
			t.Fatalf("the error holds the key: %q", s)
		}
	}
}

func TestLoadE2EEKeyForms(t *testing.T) {
	k := keyMaterial()
	for name, content := range map[string][]byte{
		"raw":              k,
		"base64url":        []byte(base64.RawURLEncoding.EncodeToString(k)),
		"base64url+LF":     []byte(base64.RawURLEncoding.EncodeToString(k) + "\n"),
		"padded base64url": []byte(base64.URLEncoding.EncodeToString(k) + "\n"),
	} {
		got, err := LoadE2EEKey(writeKey(t, content, 0o600))
		if err != nil || !bytes.Equal(got, k) {
			t.Errorf("%s: %x, %v", name, got, err)
		}
	}
	for name, content := range map[string][]byte{
		"short":  k[:31],
		"long":   append(append([]byte(nil), k...), k...),
		"hex":    []byte(hex.EncodeToString(k)),
		"16 b64": []byte(base64.RawURLEncoding.EncodeToString(k[:16])),
	} {
		_, err := LoadE2EEKey(writeKey(t, content, 0o600))
		if err == nil || !strings.Contains(err.Error(), "32 bytes") {
			t.Errorf("%s: accepted or unclear: %v", name, err)
		}
		noKeyIn(t, err, k)
	}
}

// A key others can read is refused with the fix; so is one roomd's user
// does not own (root can chown the file to another user).
func TestLoadE2EEKeyPermissions(t *testing.T) {
	k := keyMaterial()
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o400, 0o660} {
		p := writeKey(t, k, mode)
		_, err := LoadE2EEKey(p)
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
			t.Errorf("mode %04o: %v", mode, err)
		}
		noKeyIn(t, err, k)
	}
	if _, err := LoadE2EEKey(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing key file was accepted")
	}
	dir := t.TempDir()
	link := filepath.Join(dir, "link")
	if err := os.Symlink(writeKey(t, k, 0o600), link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadE2EEKey(link); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a symlink: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Log("not root: the owner check needs a file owned by another user (runs as root)")
		return
	}
	p := writeKey(t, k, 0o600)
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadE2EEKey(p); err == nil || !strings.Contains(err.Error(), "chown") {
		t.Errorf("a file owned by nobody: %v", err)
	}
}

func TestE2EEKeyFileNeedsRTCConnector(t *testing.T) {
	for connector, ok := range map[string]bool{"livekit": true, "livekit-whip": false, "whip": false} {
		var c Config
		c.Conference.Connector, c.Conference.E2EEKeyFile = connector, "/etc/konsult/e2ee.key"
		if err := c.validateE2EE(); (err == nil) != ok {
			t.Errorf("connector %s: %v", connector, err)
		}
	}
	var c Config
	c.Conference.Connector, c.Conference.E2EEKeyFile = "livekit", "e2ee.key"
	if err := c.validateE2EE(); err == nil {
		t.Error("a relative key path was accepted")
	}
}
