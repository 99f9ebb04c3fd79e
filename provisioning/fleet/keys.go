package fleet

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Key files are text, one key per line, so they survive copy-paste into a
// provisioning tool and diff cleanly:
//
//	fleet.pub  lines of base64 (std, padded) of a raw 32-byte Ed25519 public
//	           key; blank lines and lines starting with '#' are ignored. More
//	           than one key line pins several keys (for a key rotation).
//	fleet.key  one line of base64 (std, padded) of the 32-byte Ed25519 seed,
//	           same comment rules; the file must not be readable by group or
//	           others.

// FormatPublicKey returns the fleet.pub text for pub, with a comment naming
// its key id.
func FormatPublicKey(pub ed25519.PublicKey) []byte {
	return fmt.Appendf(nil, "# konsult fleet public key (Ed25519), key id %s\n%s\n",
		KeyID(pub), base64.StdEncoding.EncodeToString(pub))
}

// FormatPrivateKey returns the fleet.key text for priv.
func FormatPrivateKey(priv ed25519.PrivateKey) []byte {
	pub := priv.Public().(ed25519.PublicKey)
	return fmt.Appendf(nil, "# konsult fleet SIGNING key (Ed25519 seed), key id %s: keep secret, mode 0600\n%s\n",
		KeyID(pub), base64.StdEncoding.EncodeToString(priv.Seed()))
}

// ParsePublicKeys parses fleet.pub text.
func ParsePublicKeys(b []byte) ([]ed25519.PublicKey, error) {
	lines, err := keyLines(b)
	if err != nil {
		return nil, err
	}
	if len(lines) == 0 {
		return nil, errors.New("no key line: expect one base64 Ed25519 public key per line (write it with fleetctl keygen)")
	}
	keys := make([]ed25519.PublicKey, 0, len(lines))
	for _, l := range lines {
		raw, err := base64.StdEncoding.DecodeString(l.text)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("line %d is not a base64 32-byte Ed25519 public key: copy fleet.pub from fleetctl keygen", l.n)
		}
		keys = append(keys, ed25519.PublicKey(raw))
	}
	return keys, nil
}

// ParsePrivateKey parses fleet.key text. Its errors never quote the file.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	lines, err := keyLines(b)
	if err != nil {
		return nil, err
	}
	if len(lines) != 1 {
		return nil, fmt.Errorf("found %d key lines, want exactly 1: use the fleet.key written by fleetctl keygen", len(lines))
	}
	seed, err := base64.StdEncoding.DecodeString(lines[0].text)
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("line %d is not a base64 32-byte Ed25519 seed: use the fleet.key written by fleetctl keygen", lines[0].n)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// LoadPublicKeys reads a fleet.pub file.
func LoadPublicKeys(path string) ([]ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read fleet public key: %w", err)
	}
	keys, err := ParsePublicKeys(b)
	if err != nil {
		return nil, fmt.Errorf("fleet public key %s: %w", path, err)
	}
	return keys, nil
}

// LoadPrivateKey reads a fleet.key file, refusing one that group or others
// can read: a leaked signing key lets anyone configure every unit.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read fleet signing key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read fleet signing key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("fleet signing key %s has mode %04o, readable by others: run chmod 600 %s", path, perm, path)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("read fleet signing key: %w", err)
	}
	priv, err := ParsePrivateKey(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("fleet signing key %s: %w", path, err)
	}
	return priv, nil
}

type keyLine struct {
	n    int
	text string
}

func keyLines(b []byte) ([]keyLine, error) {
	var out []keyLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for sc.Scan() {
		n++
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		out = append(out, keyLine{n: n, text: t})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	return out, nil
}
