package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// E2EEKeySize is the size of end-to-end key material (the E2EE contract).
const E2EEKeySize = 32

// validateE2EE checks conference.e2ee_key_file as far as the config alone
// says: only the /rtc/v1 connector encrypts end to end, and the path is
// absolute (roomd runs from /).
func (c *Config) validateE2EE() error {
	f := c.Conference.E2EEKeyFile
	if f == "" {
		return nil
	}
	if c.Conference.Connector != "livekit" {
		return errors.New("conference.e2ee_key_file needs conference.connector = \"livekit\": the other connectors cannot encrypt end to end, and the call is not sent in the clear instead")
	}
	if !filepath.IsAbs(f) {
		return fmt.Errorf("conference.e2ee_key_file must be an absolute path, e.g. /etc/konsult/e2ee.key")
	}
	return nil
}

// LoadE2EEKey reads a stand-alone unit's end-to-end key material from path:
// the file must be a regular file of mode 0600 owned by the user roomd runs
// as, holding 32 bytes raw or their base64url (43 characters, padding and a
// trailing newline allowed). Errors name the fix, never the key.
func LoadE2EEKey(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("conference.e2ee_key_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("conference.e2ee_key_file %s is not a regular file: point it at the key file itself", path)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		return nil, fmt.Errorf("conference.e2ee_key_file %s has mode %04o: others could read the key; run chmod 600 %s", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("conference.e2ee_key_file %s is owned by uid %d, not by roomd's user (uid %d): run chown %d %s", path, st.Uid, os.Geteuid(), os.Geteuid(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("conference.e2ee_key_file: %w", err)
	}
	if len(b) == E2EEKeySize {
		return b, nil
	}
	s := strings.TrimRight(strings.TrimSpace(string(b)), "=")
	if k, err := base64.RawURLEncoding.DecodeString(s); err == nil && len(k) == E2EEKeySize {
		return k, nil
	}
	return nil, errors.New("conference.e2ee_key_file " + path + " holds no key: it must be 32 bytes, raw or base64url (make one with: head -c 32 /dev/urandom | basenc --base64url -w0)")
}
