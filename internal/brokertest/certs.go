package brokertest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
)

// pki is a throwaway fleet CA and the certificates it issued, as PEM files.
type pki struct {
	dir    string
	ca     *x509.Certificate
	caKey  crypto.Signer
	CAFile string
	// crlSrc is the CA's revocation list, copied next to the config at
	// every (re)start: Mosquitto reads crlfile only when it starts (a
	// SIGHUP does not reload it in 2.0).
	crlSrc string
}

// fromFleetCA uses a fleet CA (fleetctl ca init) instead of a throwaway
// one. Its certificate is copied next to the config, as an installer copies
// it to /etc/mosquitto/konsult: the CA directory itself is private.
func fromFleetCA(dir string, c *ca.CA) (*pki, error) {
	p := &pki{dir: dir, ca: c.Cert, caKey: c.Signer(), CAFile: filepath.Join(dir, "ca.crt"), crlSrc: filepath.Join(c.Dir, ca.CRLFile)}
	return p, os.WriteFile(p.CAFile, c.CertPEM(), 0o644)
}

// writeCRL writes the CRL Mosquitto loads: the fleet CA's, or an empty one
// from the throwaway CA.
func (p *pki) writeCRL(path string) error {
	if p.crlSrc != "" {
		b, err := os.ReadFile(p.crlSrc)
		if err != nil {
			return fmt.Errorf("brokertest: %w", err)
		}
		return os.WriteFile(path, b, 0o644)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(24 * time.Hour),
	}, p.ca, p.caKey)
	if err != nil {
		return fmt.Errorf("brokertest: CRL: %w", err)
	}
	return writePEM(path, "X509 CRL", der, 0o644)
}

func newPKI(dir string) (*pki, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("brokertest: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "konsult test fleet CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("brokertest: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("brokertest: CA certificate: %w", err)
	}
	p := &pki{dir: dir, ca: ca, caKey: key, CAFile: filepath.Join(dir, "ca.crt")}
	if err := writePEM(p.CAFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

// issue writes name.crt and name.key: a server certificate for 127.0.0.1 if
// server is set, else a client certificate with CN name.
func (p *pki) issue(name string, server bool) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("brokertest: key for %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return "", "", fmt.Errorf("brokertest: certificate for %s: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("brokertest: key for %s: %w", name, err)
	}
	certFile = filepath.Join(p.dir, name+".crt")
	keyFile = filepath.Join(p.dir, name+".key")
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return "", "", err
	}
	if err := writePEM(keyFile, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, mode); err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	return nil
}
