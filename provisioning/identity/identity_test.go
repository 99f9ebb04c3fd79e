package identity_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/konsult/konsult/provisioning/identity"
)

// fingerprint is the device id computed independently of the package: what
// a fleet manager would compute from a CSR's public key.
func fingerprint(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return "ku-" + strings.ToLower(base32.StdEncoding.EncodeToString(sum[:])[:20])
}

func TestFirstBootMakesAPrivateKeyAndAStableID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	k, created, err := identity.LoadOrCreateKey(dir)
	if err != nil || !created {
		t.Fatalf("first boot: created=%v err=%v", created, err)
	}
	fi, err := os.Stat(filepath.Join(dir, identity.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("identity dir mode %v, want 0700", di.Mode().Perm())
	}
	if k.Path() != filepath.Join(dir, identity.KeyFile) {
		t.Errorf("Path() = %q", k.Path())
	}
	pub, ok := k.Signer().Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("key is %T, want ECDSA P-256", k.Signer().Public())
	}
	id, err := identity.DeviceID(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^ku-[a-z2-7]{20}$`).MatchString(id) || id != fingerprint(t, pub) {
		t.Fatalf("device id %q, want ku- + 20 base32 chars of SHA-256(SPKI) = %q", id, fingerprint(t, pub))
	}

	// Every later boot finds the same key, hence the same id.
	for range 2 {
		k2, created, err := identity.LoadOrCreateKey(dir)
		if err != nil || created {
			t.Fatalf("reload: created=%v err=%v", created, err)
		}
		if id2, _ := identity.DeviceID(k2.Signer().Public()); id2 != id {
			t.Fatalf("device id changed across reloads: %s then %s", id, id2)
		}
	}

	// Another unit's key gives another id.
	other, _, _ := identity.LoadOrCreateKey(filepath.Join(t.TempDir(), "identity"))
	if oid, _ := identity.DeviceID(other.Signer().Public()); oid == id {
		t.Fatalf("two units share device id %s", id)
	}
}

// TestKeyFileRefused: a key file someone else could know, or that is not
// the unit's own key, stops the unit with a clear error, and the file is
// left as it was (no silent new identity, no chmod that hides a copy).
func TestKeyFileRefused(t *testing.T) {
	validKey := func(t *testing.T) []byte {
		k, _, err := identity.LoadOrCreateKey(filepath.Join(t.TempDir(), "elsewhere"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(k.Path())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pkcs8 := func(t *testing.T, key any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, dir, path string)
		want  string // in the error
	}{
		{"readable by group", func(t *testing.T, dir, path string) {
			write(t, path, validKey(t), 0o640)
		}, "must be 0600"},
		{"readable by others", func(t *testing.T, dir, path string) {
			write(t, path, validKey(t), 0o604)
		}, "must be 0600"},
		{"symlink to another unit's key", func(t *testing.T, dir, path string) {
			other := filepath.Join(t.TempDir(), "key.pem")
			write(t, other, validKey(t), 0o600)
			if err := os.Symlink(other, path); err != nil {
				t.Fatal(err)
			}
		}, "symlink"},
		{"dangling symlink (a key made through it would land elsewhere)", func(t *testing.T, dir, path string) {
			if err := os.Symlink(filepath.Join(t.TempDir(), "planted.pem"), path); err != nil {
				t.Fatal(err)
			}
		}, "symlink"},
		{"owned by another user", func(t *testing.T, dir, path string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			write(t, path, validKey(t), 0o600)
			if err := os.Chown(path, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, "belongs to uid 65534"},
		{"directory writable by others", func(t *testing.T, dir, path string) {
			write(t, path, validKey(t), 0o600)
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
		}, "others could replace"},
		{"a directory, not a file", func(t *testing.T, dir, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"tampered", func(t *testing.T, dir, path string) {
			b := validKey(t)
			i := bytes.IndexByte(b, '\n') + 40
			b[i] ^= 0x01
			write(t, path, b, 0o600)
		}, "factory-reset"},
		{"empty", func(t *testing.T, dir, path string) {
			write(t, path, nil, 0o600)
		}, "not a PEM private key"},
		{"a certificate, not a key", func(t *testing.T, dir, path string) {
			write(t, path, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600)
		}, "not a PEM private key"},
		{"an RSA key", func(t *testing.T, dir, path string) {
			k, _ := rsa.GenerateKey(rand.Reader, 2048)
			write(t, path, pkcs8(t, k), 0o600)
		}, "not an ECDSA key"},
		{"an Ed25519 key", func(t *testing.T, dir, path string) {
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			write(t, path, pkcs8(t, k), 0o600)
		}, "not an ECDSA key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "identity")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, identity.KeyFile)
			tc.setup(t, dir, path)
			before := snapshot(t, path)
			k, created, err := identity.LoadOrCreateKey(dir)
			if err == nil {
				t.Fatalf("accepted (created=%v, key at %s)", created, k.Path())
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name the file", err)
			}
			if after := snapshot(t, path); after != before {
				t.Errorf("key file changed by the refusal:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestLooseKeyIsNotUsedForACSR: the refusal holds on every boot, so a unit
// with a copied key never asks for (or renews) a certificate with it.
func TestLooseKeyIsNotUsedForACSR(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	if _, _, err := identity.LoadOrCreateKey(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, identity.KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, _, err := identity.LoadOrCreateKey(dir); err == nil {
			t.Fatal("a 0644 key was accepted")
		}
	}
}

// hsmKey is a KeySource whose private half cannot be read, as with a TPM:
// only Public and Sign are reachable.
type hsmKey struct{ s crypto.Signer }

type opaque struct{ s crypto.Signer }

func (o opaque) Public() crypto.PublicKey { return o.s.Public() }
func (o opaque) Sign(r io.Reader, d []byte, op crypto.SignerOpts) ([]byte, error) {
	return o.s.Sign(r, d, op)
}

func (h hsmKey) Signer() crypto.Signer { return opaque(h) }
func (h hsmKey) Path() string          { return "pkcs11:object=konsult" }

func TestKeySourceSeam(t *testing.T) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var ks identity.KeySource = hsmKey{priv}
	id, err := identity.DeviceID(ks.Signer().Public())
	if err != nil || id != fingerprint(t, &priv.PublicKey) {
		t.Fatalf("device id %q (%v), want %q", id, err, fingerprint(t, &priv.PublicKey))
	}
	csrPEM, err := identity.NewCSR(ks, id)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("not a PEM CSR: %q", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	if csr.Subject.CommonName != id {
		t.Errorf("CSR CN %q, want %q", csr.Subject.CommonName, id)
	}
	if got := fingerprint(t, csr.PublicKey); got != id {
		t.Errorf("CSR carries key %s, not the source's %s", got, id)
	}
}

func write(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// snapshot describes what is at path without following a symlink.
func snapshot(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		return "absent"
	}
	s := fi.Mode().String()
	if fi.Mode()&os.ModeSymlink != 0 {
		dst, _ := os.Readlink(path)
		_, terr := os.Stat(dst)
		return s + " -> " + dst + " exists=" + boolStr(terr == nil)
	}
	if fi.Mode().IsRegular() {
		b, _ := os.ReadFile(path)
		sum := sha256.Sum256(b)
		s += " " + string(base32.StdEncoding.EncodeToString(sum[:8]))
	}
	return s
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// TestInstalledIdentity: identity.json pins the fleet CA and fleet key, so
// one that another user could have written is refused, and the derived
// files are rewritten from it at each start.
func TestInstalledIdentity(t *testing.T) {
	install := func(t *testing.T) (string, identity.State) {
		dir := filepath.Join(t.TempDir(), "identity")
		k, _, err := identity.LoadOrCreateKey(dir)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := identity.DeviceID(k.Signer().Public())
		st := identity.State{DeviceID: id, Certificate: "CERT\n", CA: "CA\n", FleetKey: "fleet key\n", Broker: "mqtts://b:8883", Groups: []string{"g"}}
		if err := identity.Install(dir, st); err != nil {
			t.Fatal(err)
		}
		return dir, st
	}
	t.Run("round trip, derived files healed", func(t *testing.T) {
		dir, st := install(t)
		if fi, _ := os.Stat(filepath.Join(dir, identity.StateFile)); fi.Mode().Perm() != 0o600 {
			t.Errorf("identity.json mode %v, want 0600", fi.Mode().Perm())
		}
		write(t, filepath.Join(dir, identity.FleetKeyFile), []byte("attacker's key\n"), 0o644)
		got, ok, err := identity.Load(dir)
		if err != nil || !ok || got.DeviceID != st.DeviceID || got.FleetKey != st.FleetKey {
			t.Fatalf("Load: %+v %v %v", got, ok, err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, identity.FleetKeyFile)); string(b) != st.FleetKey {
			t.Errorf("fleet.pub still %q after a start", b)
		}
	})
	t.Run("not enrolled", func(t *testing.T) {
		if _, ok, err := identity.Load(filepath.Join(t.TempDir(), "identity")); ok || err != nil {
			t.Fatalf("ok=%v err=%v", ok, err)
		}
	})
	t.Run("writable by others", func(t *testing.T) {
		dir, _ := install(t)
		if err := os.Chmod(filepath.Join(dir, identity.StateFile), 0o666); err != nil {
			t.Fatal(err)
		}
		if _, _, err := identity.Load(dir); err == nil || !strings.Contains(err.Error(), "fleet key") {
			t.Fatalf("a 0666 identity.json: %v", err)
		}
	})
	t.Run("symlink", func(t *testing.T) {
		dir, _ := install(t)
		p := filepath.Join(dir, identity.StateFile)
		planted := filepath.Join(t.TempDir(), "planted.json")
		if err := os.Rename(p, planted); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(planted, p); err != nil {
			t.Fatal(err)
		}
		if _, _, err := identity.Load(dir); err == nil || !strings.Contains(err.Error(), "symlink") {
			t.Fatalf("a symlinked identity.json: %v", err)
		}
	})
}
