// Package identity is a room unit's own identity: a private key made on the
// unit that never leaves it, the device id derived from that key, and the
// certificate, CA and fleet trust the unit received at enrolment.
//
// The key sits behind crypto.Signer (KeySource), so a TPM or secure element
// can hold it later without changing enrolment, renewal or the MQTT link;
// the file-backed source here is what a Raspberry Pi without one uses.
//
// On disk (Dir, mode 0700):
//
//	key.pem        the unit's ECDSA P-256 private key (PKCS#8), mode 0600
//	identity.json  what enrolment installed: certificate, CA, fleet key,
//	               broker, groups; replaced atomically as one file
//	device.crt     the certificate, and
//	ca.crt         the fleet CA, both derived from identity.json for the
//	               MQTT link and NetworkManager (EAP-TLS), which read files
package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
)

// File names inside the identity directory.
const (
	KeyFile      = "key.pem"
	StateFile    = "identity.json"
	CertFile     = "device.crt"
	CAFile       = "ca.crt"
	FleetKeyFile = "fleet.pub"
)

// DeviceIDPrefix starts every derived device id. Nothing else (the fleet
// manager, the enrolment credential) may use it, so a certificate issued to
// a person or tool can never match a unit's ACL patterns.
const DeviceIDPrefix = "ku-"

// DeviceID derives the device id from a public key: "ku-" and 20 base32
// characters (100 bits) of the SHA-256 of its SubjectPublicKeyInfo. The id
// is stable for the key's life and cannot be claimed without the key.
func DeviceID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("device id: %w", err)
	}
	sum := sha256.Sum256(der)
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])
	return DeviceIDPrefix + strings.ToLower(enc[:20]), nil
}

// KeySource holds the unit's private key. Signer returns it for CSRs and
// TLS; the private half need not be readable (a TPM's is not).
type KeySource interface {
	Signer() crypto.Signer
	// Path is what a file-reading consumer (the MQTT link, NetworkManager)
	// is given for the key: a file path here, a PKCS#11 URI for hardware.
	Path() string
}

type fileKey struct {
	path string
	key  *ecdsa.PrivateKey
}

func (k fileKey) Signer() crypto.Signer { return k.key }
func (k fileKey) Path() string          { return k.path }

// LoadOrCreateKey reads the unit's key from dir, or makes one on first boot.
// created reports a new key. A key someone else could know is refused (see
// readKeyFile): the unit must not authenticate with it.
func LoadOrCreateKey(dir string) (k KeySource, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("identity: %w", err)
	}
	path := filepath.Join(dir, KeyFile)
	b, err := readKeyFile(dir, path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, false, fmt.Errorf("identity: make key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, false, fmt.Errorf("identity: make key: %w", err)
		}
		if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, false, fmt.Errorf("identity: store key: %w", err)
		}
		return fileKey{path: path, key: key}, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, false, fmt.Errorf("identity: %s is not a PEM private key: factory-reset the unit to make a new identity", path)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, false, fmt.Errorf("identity: %s: %w: factory-reset the unit to make a new identity", path, err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, false, fmt.Errorf("identity: %s holds a %T, not an ECDSA key", path, parsed)
	}
	return fileKey{path: path, key: key}, false, nil
}

// readKeyFile reads the key; see readOwn. Unlike the other files the key
// may not be readable by anyone else either: someone could have copied it.
func readKeyFile(dir, path string) ([]byte, error) {
	return readOwn(dir, path, 0o077, "the unit's key must be 0600 (chmod 600 it, or factory-reset the unit if it may have been copied)")
}

// readOwn reads a file the unit trusts (its key, its pinned CA and fleet
// key) through one descriptor opened without following a symlink and checks
// that descriptor, so what is checked is what is read. Each refusal is a file
// someone other than this unit's own user could have written or put there:
// a symlink (the target may be another unit's key or a file another user
// controls), a file with a mode bit in deny or owned by someone else, or a
// directory others can write (they could swap the file for one they made).
// A missing file is returned as os.ErrNotExist.
func readOwn(dir, path string, deny os.FileMode, fix string) ([]byte, error) {
	const reset = "factory-reset the unit to make a new identity"
	di, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if di.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("identity: %s has mode %v: others could replace the unit's identity; it must be 0700 (chmod 700 it, or %s if it may have been tampered with)", dir, di.Mode().Perm(), reset)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("identity: %s is a symlink: it must be the unit's own regular file; %s", path, reset)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: read: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("identity: read: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("identity: %s is not a regular file (%v); %s", path, fi.Mode().Type(), reset)
	}
	if fi.Mode().Perm()&deny != 0 {
		return nil, fmt.Errorf("identity: %s has mode %v: %s", path, fi.Mode().Perm(), fix)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("identity: %s belongs to uid %d, not to this unit's user (uid %d): that user could have written it; %s", path, st.Uid, os.Geteuid(), reset)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("identity: read %s: %w", path, err)
	}
	return b, nil
}

// NewCSR makes a certificate request for the unit's id, signed by its key.
func NewCSR(k KeySource, deviceID string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: deviceID},
	}, k.Signer())
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// State is what enrolment installed (identity.json).
type State struct {
	DeviceID    string    `json:"device_id"`
	Certificate string    `json:"certificate"` // PEM
	CA          string    `json:"ca"`          // PEM, the fleet CA
	FleetKey    string    `json:"fleet_key"`   // fleet.pub text
	Broker      string    `json:"broker"`
	Groups      []string  `json:"groups"`
	InstalledAt time.Time `json:"installed_at"`
}

// Refusal reasons for an issued certificate. They are stable strings in
// status and events.
var (
	ErrOtherUnit   = errors.New("the approval is for another unit")
	ErrKeyMismatch = errors.New("the certificate does not match this unit's key")
	ErrExpired     = errors.New("the certificate has expired or is not valid yet")
	ErrCAChanged   = errors.New("the certificate is not from the fleet CA this unit trusts (the CA changed)")
	ErrMalformed   = errors.New("the certificate cannot be read")
)

// Check verifies a certificate issued to this unit: from ca, for deviceID,
// for key's public half, valid at now, for TLS client use. Each failure
// wraps one of the Err values above.
func Check(certPEM []byte, ca *x509.Certificate, deviceID string, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%w: no PEM certificate", ErrMalformed)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if cert.Subject.CommonName != deviceID {
		return nil, fmt.Errorf("%w (it names %s, this unit is %s)", ErrOtherUnit, cert.Subject.CommonName, deviceID)
	}
	mine, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyMismatch, err)
	}
	theirs, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil || !bytes.Equal(mine, theirs) {
		return nil, ErrKeyMismatch
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%w (valid %s to %s; check the unit's clock)", ErrExpired,
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCAChanged, err)
	}
	return cert, nil
}

// ParseCert reads one PEM certificate.
func ParseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// Load reads the installed identity from dir; ok is false before
// enrolment. The derived files are rewritten if they are missing or differ,
// so a crash between writes heals at the next start.
func Load(dir string) (st State, ok bool, err error) {
	// identity.json pins the fleet's CA and signing key: whoever can write
	// it could make the unit trust their own configs.
	b, err := readOwn(dir, filepath.Join(dir, StateFile), 0o022, "others could change the fleet key the unit trusts; factory-reset the unit and enrol it again")
	if errors.Is(err, os.ErrNotExist) {
		return State{}, false, nil
	}
	if err != nil {
		return State{}, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, false, fmt.Errorf("identity: %s is damaged (%w): factory-reset the unit and enrol it again", filepath.Join(dir, StateFile), err)
	}
	if err := writeDerived(dir, st); err != nil {
		return State{}, false, err
	}
	return st, true, nil
}

// Install makes st the unit's identity: identity.json atomically first (the
// truth), then the derived files.
func Install(dir string, st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, StateFile), b, 0o600); err != nil {
		return fmt.Errorf("identity: install: %w", err)
	}
	return writeDerived(dir, st)
}

func writeDerived(dir string, st State) error {
	for name, text := range map[string]string{CertFile: st.Certificate, CAFile: st.CA, FleetKeyFile: st.FleetKey} {
		p := filepath.Join(dir, name)
		if cur, err := os.ReadFile(p); err == nil && string(cur) == text {
			continue
		}
		if err := atomicfile.Write(p, []byte(text), 0o644); err != nil {
			return fmt.Errorf("identity: %w", err)
		}
	}
	return nil
}

// Wipe removes the identity (factory reset): the key first, so a reset cut
// short by power loss cannot leave a unit that still authenticates.
func Wipe(dir string) error {
	if err := os.Remove(filepath.Join(dir, KeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("identity: wipe: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("identity: wipe: %w", err)
	}
	return nil
}
