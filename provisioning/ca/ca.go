// Package ca is the fleet's certificate authority, run by the fleet manager
// (fleetctl): it signs the broker's server certificate, the fleet manager's
// and the enrolment credential's client certificates, and each unit's
// certificate from its enrolment request; it keeps a ledger of what it
// issued and the claim codes it handed out, and publishes a revocation
// list for the broker.
//
// On disk (Dir, mode 0700; keep it off the broker and backed up):
//
//	ca.crt       the fleet CA certificate (units and the broker trust it)
//	ca.key       its ECDSA P-256 key, mode 0600
//	crl.pem      the revocation list, for Mosquitto's crlfile
//	ledger.json  issued certificates, units, claim codes, mode 0600
//	.lock        flock'ed while a command changes the ledger
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/identity"
)

// File names in the CA directory.
const (
	CertFile   = "ca.crt"
	KeyFile    = "ca.key"
	CRLFile    = "crl.pem"
	LedgerFile = "ledger.json"
)

// Lifetimes.
const (
	CALifetime = 20 * 365 * 24 * time.Hour
	// UnitLifetime is a unit certificate's validity; units ask for a new
	// one when a third of it is left (identity renewal).
	UnitLifetime = 90 * 24 * time.Hour
	// ToolLifetime covers the broker, the fleet manager and the enrolment
	// credential, which are renewed by hand.
	ToolLifetime = 2 * 365 * 24 * time.Hour
	// CRLLifetime is how long a CRL is valid. OpenSSL (Mosquitto) refuses
	// every client once the CRL's next-update time has passed. The broker
	// reads the list from a local file the fleet manager installs, so a short
	// lifetime adds no freshness, only a date on which the whole fleet is shut
	// out if nobody refreshed it: it lasts as long as the CA's own tools.
	// fleetctl still rewrites it whenever it touches the CA.
	CRLLifetime = 10 * 365 * 24 * time.Hour
)

// Issued is one certificate in the ledger.
type Issued struct {
	Serial    string     `json:"serial"` // hex
	Name      string     `json:"name"`   // the CN
	Kind      string     `json:"kind"`   // unit, server, admin, enrol
	NotAfter  time.Time  `json:"not_after"`
	KeyHash   string     `json:"key_hash"` // SHA-256 of the SubjectPublicKeyInfo
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// Unit is an enrolled (or refused) unit.
type Unit struct {
	ID        string    `json:"id"`
	Status    string    `json:"status"` // approved, rejected, revoked
	Groups    []string  `json:"groups,omitempty"`
	Model     string    `json:"model,omitempty"`
	ClaimCode string    `json:"claim_code,omitempty"`
	KeyHash   string    `json:"key_hash,omitempty"`
	FirstSeen time.Time `json:"first_seen,omitzero"`
	Decided   time.Time `json:"decided"`
	Reason    string    `json:"reason,omitempty"`
}

// ClaimCode is a code the fleet manager handed to an installer.
type ClaimCode struct {
	Code    string    `json:"code"`
	Note    string    `json:"note,omitempty"`
	Created time.Time `json:"created"`
	// Expires: an unused code is refused after this (zero: never, as in
	// ledgers written before codes expired).
	Expires time.Time `json:"expires,omitzero"`
	UsedBy  string    `json:"used_by,omitempty"`
	UsedAt  time.Time `json:"used_at,omitzero"`
}

// Ledger is ledger.json.
type Ledger struct {
	Issued     []Issued         `json:"issued"`
	Units      map[string]*Unit `json:"units"`
	ClaimCodes []ClaimCode      `json:"claim_codes"`
	CRLNumber  int64            `json:"crl_number"`
}

// CA is an open fleet CA.
type CA struct {
	Dir  string
	Cert *x509.Certificate
	key  crypto.Signer
	now  func() time.Time
}

// Init makes a new fleet CA in dir, which must not hold one yet.
func Init(dir, name string) (*CA, error) {
	if name == "" {
		name = "Konsult fleet CA"
	}
	// Any trace of a CA counts, a lone ca.crt or ledger (the key moved to a
	// backup) or a dangling symlink too: a second CA would lock every
	// enrolled unit out.
	for _, f := range []string{KeyFile, CertFile, LedgerFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ca init: %s already holds a fleet CA (%s): a second one would lock every enrolled unit out; use another --dir", dir, f)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	c, err := Open(dir)
	if err != nil {
		return nil, err
	}
	err = c.Update(func(*Ledger) error { return nil }) // writes the ledger and an empty CRL
	return c, err
}

// Open opens the fleet CA in dir.
func Open(dir string) (*CA, error) {
	cb, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("open fleet CA: %w (make one with fleetctl ca init)", err)
	}
	cert, err := identity.ParseCert(cb)
	if err != nil {
		return nil, fmt.Errorf("open fleet CA: %s: %w", CertFile, err)
	}
	kp := filepath.Join(dir, KeyFile)
	kb, err := os.ReadFile(kp)
	if err != nil {
		return nil, fmt.Errorf("open fleet CA: %w", err)
	}
	// Whoever can read the CA key can enrol units and sign tool certificates.
	if fi, err := os.Stat(kp); err != nil {
		return nil, fmt.Errorf("open fleet CA: %w", err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("open fleet CA: %s has mode %v: the CA key must be 0600 (chmod 600 it; if others may have copied it, make a new CA and enrol the units again)", kp, fi.Mode().Perm())
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, fmt.Errorf("open fleet CA: %s is not PEM", KeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("open fleet CA: %s: %w", KeyFile, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("open fleet CA: %s is not a signing key", KeyFile)
	}
	return &CA{Dir: dir, Cert: cert, key: signer, now: time.Now}, nil
}

// CertPEM is the CA certificate as PEM.
func (c *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// Signer is the CA key, which also signs enrolment responses so a unit can
// check them against the CA it was shipped with.
func (c *CA) Signer() crypto.Signer { return c.key }

// SetClock replaces the clock (tests: expired certificates).
func (c *CA) SetClock(now func() time.Time) { c.now = now }

// Ledger reads the ledger.
func (c *CA) Ledger() (*Ledger, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, LedgerFile))
	if errors.Is(err, os.ErrNotExist) {
		return &Ledger{Units: map[string]*Unit{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet CA ledger: %w", err)
	}
	var l Ledger
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("fleet CA ledger %s is damaged: %w (restore it from backup)", filepath.Join(c.Dir, LedgerFile), err)
	}
	if l.Units == nil {
		l.Units = map[string]*Unit{}
	}
	return &l, nil
}

// Update changes the ledger under an exclusive lock (two fleetctl runs at
// once must not lose an issued certificate), then rewrites the CRL.
func (c *CA) Update(fn func(*Ledger) error) error {
	lf, err := os.OpenFile(filepath.Join(c.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("fleet CA lock: %w", err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("fleet CA lock: %w", err)
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	l, err := c.Ledger()
	if err != nil {
		return err
	}
	if err := fn(l); err != nil {
		return err
	}
	l.CRLNumber++
	crl, err := c.crl(l)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("fleet CA ledger: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(c.Dir, LedgerFile), b, 0o600); err != nil {
		return fmt.Errorf("fleet CA ledger: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(c.Dir, CRLFile), crl, 0o644); err != nil {
		return fmt.Errorf("fleet CA revocation list: %w", err)
	}
	return nil
}

func (c *CA) crl(l *Ledger) ([]byte, error) {
	now := c.now()
	var entries []x509.RevocationListEntry
	for _, is := range l.Issued {
		if is.RevokedAt == nil || now.After(is.NotAfter.Add(24*time.Hour)) {
			continue // an expired certificate is refused anyway
		}
		sn, ok := new(big.Int).SetString(is.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("fleet CA ledger: serial %q is not hex", is.Serial)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: *is.RevokedAt})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(l.CRLNumber),
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.Add(CRLLifetime),
		RevokedCertificateEntries: entries,
	}, c.Cert, c.key)
	if err != nil {
		return nil, fmt.Errorf("fleet CA revocation list: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// KeyHash is the ledger's fingerprint of a public key.
func KeyHash(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:]), nil
}

// Template kinds for Issue.
const (
	KindUnit   = "unit"
	KindServer = "server"
	KindAdmin  = "admin"
	KindEnrol  = "enrol"
)

// Issue signs a certificate for pub and records it. Server certificates
// carry hosts (names or IP addresses); the others are TLS client
// certificates whose CN is the MQTT username.
//
// A unit's CN is its device id, which must be the fingerprint of pub; no
// other kind may take a name with the unit prefix. The broker's ACL gives a
// CN the unit's topics by that name alone, so this is where it is made true.
func (c *CA) Issue(l *Ledger, kind, name string, pub crypto.PublicKey, hosts []string, lifetime time.Duration) ([]byte, error) {
	if kind == KindUnit {
		id, err := identity.DeviceID(pub)
		if err != nil {
			return nil, fmt.Errorf("issue unit certificate for %s: %w", name, err)
		}
		if id != name {
			return nil, fmt.Errorf("issue unit certificate for %s: the key is unit %s's: a unit's certificate must name the device id of its own key", name, id)
		}
	} else if strings.HasPrefix(name, identity.DeviceIDPrefix) {
		return nil, fmt.Errorf("issue %s certificate for %s: names starting %q are units' device ids", kind, name, identity.DeviceIDPrefix)
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-5 * time.Minute), // a unit's clock may lag a little
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if kind == KindServer {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	if tmpl.NotAfter.After(c.Cert.NotAfter) {
		tmpl.NotAfter = c.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("issue %s certificate for %s: %w", kind, name, err)
	}
	kh, err := KeyHash(pub)
	if err != nil {
		return nil, fmt.Errorf("issue %s certificate for %s: %w", kind, name, err)
	}
	l.Issued = append(l.Issued, Issued{Serial: tmpl.SerialNumber.Text(16), Name: name, Kind: kind, NotAfter: tmpl.NotAfter, KeyHash: kh})
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// IssueWithKey makes a key pair and a certificate for a tool or the broker
// and writes name.crt and name.key (0600) into dir.
func (c *CA) IssueWithKey(kind, name string, hosts []string, dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("issue %s: %w", name, err)
	}
	var certPEM []byte
	if err := c.Update(func(l *Ledger) error {
		certPEM, err = c.Issue(l, kind, name, &key.PublicKey, hosts, ToolLifetime)
		return err
	}); err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("issue %s: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("issue %s: %w", name, err)
	}
	base := filepath.Join(dir, fileName(name))
	certFile, keyFile = base+".crt", base+".key"
	if err := atomicfile.Write(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// fileName turns a CN into a file name ("konsult/enrol" → "konsult-enrol").
func fileName(name string) string {
	b := []byte(name)
	for i, ch := range b {
		if ch == '/' || ch == ' ' {
			b[i] = '-'
		}
	}
	return string(b)
}

// Revoke revokes every certificate issued to name and marks the unit
// revoked. It reports how many certificates it revoked.
func (c *CA) Revoke(name, reason string) (int, error) {
	n := 0
	err := c.Update(func(l *Ledger) error {
		now := c.now()
		for i := range l.Issued {
			if l.Issued[i].Name == name && l.Issued[i].RevokedAt == nil {
				l.Issued[i].RevokedAt = &now
				n++
			}
		}
		if u := l.Units[name]; u != nil {
			u.Status, u.Decided, u.Reason = "revoked", now, reason
		}
		if n == 0 {
			return fmt.Errorf("revoke: the fleet CA issued no certificate to %q that is not already revoked (see fleetctl enrol list --all)", name)
		}
		return nil
	})
	return n, err
}

// Revoked reports whether the unit name was revoked.
func (l *Ledger) Revoked(name string) bool {
	u := l.Units[name]
	return u != nil && u.Status == "revoked"
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n.Add(n, big.NewInt(1))
}

// SortedUnits returns the units by id.
func (l *Ledger) SortedUnits() []*Unit {
	out := make([]*Unit, 0, len(l.Units))
	for _, u := range l.Units {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *Unit) int { return strings.Compare(a.ID, b.ID) })
	return out
}
