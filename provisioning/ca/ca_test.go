package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/identity"
)

func newCA(t *testing.T) *ca.CA {
	t.Helper()
	c, err := ca.Init(filepath.Join(t.TempDir(), "fleet-ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	c, err := identity.ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func unitKey(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, err := identity.DeviceID(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

func issueUnit(t *testing.T, c *ca.CA, id string, k *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	var b []byte
	if err := c.Update(func(l *ca.Ledger) (err error) {
		b, err = c.Issue(l, ca.KindUnit, id, &k.PublicKey, nil, ca.UnitLifetime)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return parseCert(t, b)
}

func readCRL(t *testing.T, c *ca.CA) *x509.RevocationList {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Dir, ca.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" {
		t.Fatalf("%s is not a PEM CRL", ca.CRLFile)
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(c.Cert); err != nil {
		t.Fatalf("CRL does not verify against the CA: %v", err)
	}
	return crl
}

func TestInitMakesACAWithPrivateFiles(t *testing.T) {
	c := newCA(t)
	modes := map[string]os.FileMode{".": 0o700, ca.KeyFile: 0o600, ca.LedgerFile: 0o600, ca.CertFile: 0o644, ca.CRLFile: 0o644}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(c.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	cert := parseCert(t, c.CertPEM())
	if !cert.IsCA || !cert.MaxPathLenZero || cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA cert: IsCA=%v MaxPathLenZero=%v usage=%v", cert.IsCA, cert.MaxPathLenZero, cert.KeyUsage)
	}
	if cert.Subject.CommonName != "Konsult fleet CA" {
		t.Errorf("CA CN %q", cert.Subject.CommonName)
	}
	if d := time.Until(cert.NotAfter); d < ca.CALifetime-time.Hour || d > ca.CALifetime {
		t.Errorf("CA valid for %v, want %v", d, ca.CALifetime)
	}
	// What Init wrote is what Open reads.
	o, err := ca.Open(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Cert.Equal(c.Cert) {
		t.Error("Open reads another CA certificate")
	}
	if len(readCRL(t, o).RevokedCertificateEntries) != 0 {
		t.Error("a new CA's CRL is not empty")
	}
}

// TestInitRefusesToReplaceACA: a second CA in the same place would lock every
// enrolled unit out (they pinned the first).
func TestInitRefusesToReplaceACA(t *testing.T) {
	for _, left := range []string{"everything", ca.KeyFile, ca.CertFile, ca.LedgerFile} {
		t.Run(left, func(t *testing.T) {
			c := newCA(t)
			if left != "everything" {
				for _, f := range []string{ca.KeyFile, ca.CertFile, ca.LedgerFile, ca.CRLFile} {
					if f != left {
						if err := os.Rename(filepath.Join(c.Dir, f), filepath.Join(t.TempDir(), f)); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			before, _ := os.ReadFile(filepath.Join(c.Dir, left))
			if left == "everything" {
				before = c.CertPEM()
			}
			if _, err := ca.Init(c.Dir, "second"); err == nil || !strings.Contains(err.Error(), "already holds a fleet CA") {
				t.Fatalf("re-init over %s: %v", left, err)
			}
			check := left
			if left == "everything" {
				check = ca.CertFile
			}
			if after, _ := os.ReadFile(filepath.Join(c.Dir, check)); string(after) != string(before) {
				t.Fatalf("re-init changed %s", check)
			}
		})
	}
}

func TestIssueUnitCertificate(t *testing.T) {
	c := newCA(t)
	k, id := unitKey(t)
	at := time.Now()
	cert := issueUnit(t, c, id, k)
	if cert.Subject.CommonName != id {
		t.Errorf("CN %q, want the device id %q", cert.Subject.CommonName, id)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || cert.KeyUsage != x509.KeyUsageDigitalSignature || cert.IsCA {
		t.Errorf("usage %v / %v, IsCA=%v: want a TLS client certificate only", cert.ExtKeyUsage, cert.KeyUsage, cert.IsCA)
	}
	if d := at.Sub(cert.NotBefore); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("NotBefore %v before issue, want 5m (a unit's clock may lag)", d)
	}
	if d := cert.NotAfter.Sub(at); d < ca.UnitLifetime-time.Minute || d > ca.UnitLifetime+time.Minute {
		t.Errorf("valid for %v, want %v", d, ca.UnitLifetime)
	}
	// The unit's own check accepts it; it is no server certificate.
	if _, err := identity.Check(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), c.Cert, id, &k.PublicKey, time.Now()); err != nil {
		t.Fatalf("unit refuses its certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a unit certificate verifies as a server certificate")
	}

	l, err := c.Ledger()
	if err != nil {
		t.Fatal(err)
	}
	kh, _ := ca.KeyHash(&k.PublicKey)
	// The ledger keeps the time asked for; the certificate holds it to the
	// second.
	want := ca.Issued{Serial: cert.SerialNumber.Text(16), Name: id, Kind: ca.KindUnit, KeyHash: kh}
	if len(l.Issued) != 1 {
		t.Fatalf("ledger holds %d certificates, want 1", len(l.Issued))
	}
	got := l.Issued[0]
	if got.Serial != want.Serial || got.Name != want.Name || got.Kind != want.Kind || got.KeyHash != want.KeyHash || got.NotAfter.Sub(cert.NotAfter).Abs() >= time.Second || got.RevokedAt != nil {
		t.Errorf("ledger entry %+v, want %+v with not_after %v", got, want, cert.NotAfter)
	}
}

func TestIssueServerAndTools(t *testing.T) {
	c := newCA(t)
	crtFile, keyFile, err := c.IssueWithKey(ca.KindServer, "server", []string{"broker.clinic.example", "127.0.0.1"}, filepath.Join(t.TempDir(), "broker"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", keyFile, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(crtFile)
	srv := parseCert(t, b)
	if !slices.Equal(srv.DNSNames, []string{"broker.clinic.example"}) || len(srv.IPAddresses) != 1 || !srv.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("server SANs %v %v", srv.DNSNames, srv.IPAddresses)
	}
	if !slices.Equal(srv.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("server usage %v", srv.ExtKeyUsage)
	}
	if d := time.Until(srv.NotAfter); d < ca.ToolLifetime-time.Hour || d > ca.ToolLifetime {
		t.Errorf("server certificate valid for %v, want %v", d, ca.ToolLifetime)
	}

	// Nothing outlives the CA.
	c.SetClock(func() time.Time { return c.Cert.NotAfter.Add(-24 * time.Hour) })
	k, id := unitKey(t)
	if cert := issueUnit(t, c, id, k); cert.NotAfter.After(c.Cert.NotAfter) {
		t.Errorf("unit certificate ends %v, after the CA (%v)", cert.NotAfter, c.Cert.NotAfter)
	}
}

// TestIssueRefusesAForeignKey: a unit certificate names a device id, and the
// broker's ACL hands that id's topics to whoever holds the certificate, so
// the CA signs only a key whose fingerprint is that id, and no tool may take
// a unit's name.
func TestIssueRefusesAForeignKey(t *testing.T) {
	c := newCA(t)
	_, victim := unitKey(t)
	attacker, _ := unitKey(t)
	cases := []struct {
		name, kind, cn string
	}{
		{"unit certificate for another unit's id", ca.KindUnit, victim},
		{"unit certificate for a made-up id", ca.KindUnit, "ku-aaaaaaaaaaaaaaaaaaaa"},
		{"unit certificate with a tool's name", ca.KindUnit, "fleet-admin"},
		{"admin certificate with a unit's id", ca.KindAdmin, victim},
		{"enrolment credential with a unit's id", ca.KindEnrol, victim},
		{"server certificate with a unit's id", ca.KindServer, victim},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var cert []byte
			err := c.Update(func(l *ca.Ledger) (err error) {
				cert, err = c.Issue(l, tc.kind, tc.cn, &attacker.PublicKey, nil, ca.UnitLifetime)
				return err
			})
			if err == nil {
				t.Fatalf("issued %s", parseCert(t, cert).Subject.CommonName)
			}
		})
	}
	l, _ := c.Ledger()
	if len(l.Issued) != 0 {
		t.Fatalf("ledger records %d refused certificates", len(l.Issued))
	}
}

func TestRevokePutsTheSerialInTheCRL(t *testing.T) {
	c := newCA(t)
	k, id := unitKey(t)
	first := issueUnit(t, c, id, k)
	renewed := issueUnit(t, c, id, k)
	k2, other := unitKey(t)
	kept := issueUnit(t, c, other, k2)
	numBefore := readCRL(t, c).Number

	n, err := c.Revoke(id, "stolen")
	if err != nil || n != 2 {
		t.Fatalf("revoke: %d, %v; want both of the unit's certificates", n, err)
	}
	crl := readCRL(t, c)
	var serials []string
	for _, e := range crl.RevokedCertificateEntries {
		serials = append(serials, e.SerialNumber.Text(16))
	}
	for _, cert := range []*x509.Certificate{first, renewed} {
		if !slices.Contains(serials, cert.SerialNumber.Text(16)) {
			t.Errorf("revoked serial %x is not in the CRL %v", cert.SerialNumber, serials)
		}
	}
	if slices.Contains(serials, kept.SerialNumber.Text(16)) {
		t.Error("another unit's certificate is in the CRL")
	}
	if crl.Number.Cmp(numBefore) <= 0 {
		t.Errorf("CRL number %v did not go up from %v", crl.Number, numBefore)
	}
	if d := crl.NextUpdate.Sub(crl.ThisUpdate); d < ca.CRLLifetime || d > ca.CRLLifetime+2*time.Minute {
		t.Errorf("CRL valid for %v, want %v (the broker shuts every client out after it)", d, ca.CRLLifetime)
	}
	if ca.CRLLifetime < 10*365*24*time.Hour {
		t.Errorf("CRLLifetime %v is under the documented 10 years", ca.CRLLifetime)
	}
	if time.Now().Before(crl.ThisUpdate) {
		t.Errorf("CRL starts in the future (%v)", crl.ThisUpdate)
	}

	l, _ := c.Ledger()
	for _, is := range l.Issued {
		if (is.RevokedAt != nil) != (is.Name == id) {
			t.Errorf("ledger entry %s for %s: revoked at %v", is.Serial, is.Name, is.RevokedAt)
		}
	}
	if _, err := c.Revoke(id, "again"); err == nil {
		t.Error("revoking an already revoked unit reported success")
	}
	if _, err := c.Revoke("ku-nobodynobodynobody", "typo"); err == nil {
		t.Error("revoking a name the CA never issued to reported success")
	}
}

func TestRevokeMarksAnEnrolledUnit(t *testing.T) {
	c := newCA(t)
	k, id := unitKey(t)
	issueUnit(t, c, id, k)
	if err := c.Update(func(l *ca.Ledger) error {
		l.Units[id] = &ca.Unit{ID: id, Status: "approved"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(id, "stolen"); err != nil {
		t.Fatal(err)
	}
	l, _ := c.Ledger()
	if !l.Revoked(id) || l.Units[id].Reason != "stolen" {
		t.Fatalf("unit after revoke: %+v", l.Units[id])
	}
}

// TestOpenRefusesAReadableKey: a CA key others can read may have been
// copied; fleetctl stops instead of going on signing with it.
func TestOpenRefusesAReadableKey(t *testing.T) {
	c := newCA(t)
	kp := filepath.Join(c.Dir, ca.KeyFile)
	for _, mode := range []os.FileMode{0o640, 0o604} {
		if err := os.Chmod(kp, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := ca.Open(c.Dir); err == nil || !strings.Contains(err.Error(), "must be 0600") {
			t.Errorf("Open with ca.key %v: %v", mode, err)
		}
	}
	if err := os.Chmod(kp, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Open(c.Dir); err != nil {
		t.Fatalf("Open after chmod 600: %v", err)
	}
}
