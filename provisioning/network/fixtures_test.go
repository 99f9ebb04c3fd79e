package network

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// Secrets used by the fixtures; the leak tests look for them everywhere.
const (
	testPSK      = "Kl1n1ek-psk-4711 ;\\x"
	testPSK3     = "wpa3-SAE-pass 0815"
	testPassword = "peap-P@ss; w0rd\\ 42"
)

var allSecrets = []string{testPSK, testPSK3, testPassword}

type pki struct {
	caPEM    string // a CA certificate (for ca_cert)
	identity Identity
}

func newPKI(t testing.TB) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Clinic RADIUS CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	ca, _ := x509.ParseCertificate(caDER)
	unitKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	unitTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ku-abcdefghijklmnopqrst"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	unitDER, err := x509.CreateCertificate(rand.Reader, unitTmpl, ca, &unitKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(unitKey)
	id := Identity{
		CACert:     filepath.Join(dir, "ca.crt"),
		ClientCert: filepath.Join(dir, "device.crt"),
		PrivateKey: filepath.Join(dir, "key.pem"),
	}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(id.CACert, []byte(caPEM))
	write(id.ClientCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: unitDER}))
	write(id.PrivateKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return pki{caPEM: caPEM, identity: id}
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	if err := toml.NewEncoder(&b).Encode(map[string]string{"v": s}); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(strings.TrimPrefix(b.String(), "v = "), "\n")
}

// fullConfigTOML is a [network] section using every feature.
func fullConfigTOML(p pki) string {
	return `
[network.ethernet]
interface = "eth0"
method = "static"
address = "192.168.10.20/24"
gateway = "192.168.10.1"
dns = ["192.168.10.1", "9.9.9.9"]

[[network.wifi]]
ssid = "Clinic-Rooms"
security = "wpa2-personal"
psk = ` + tomlString(testPSK) + `
priority = 10

[[network.wifi]]
ssid = "Clinic-WPA3"
security = "wpa3-personal"
psk = ` + tomlString(testPSK3) + `
hidden = true
priority = 20

[[network.wifi]]
ssid = "Clinic-Staff"
security = "enterprise"
eap = "peap"
identity = "room-3"
anonymous_identity = "anonymous@clinic.example"
password = ` + tomlString(testPassword) + `
ca_cert = ` + tomlString(p.caPEM) + `
domain_suffix_match = "radius.clinic.example"

[[network.wifi]]
ssid = "Clinic-802.1X"
security = "enterprise"
eap = "tls"
ca_cert = "enrolment"
domain_suffix_match = "radius.clinic.example"
priority = -5
`
}

// roomdConfig is how roomd embeds Config.
type roomdConfig struct {
	Network Config `toml:"network"`
}

// decodeStrict decodes like roomd: unknown keys are errors.
func decodeStrict(text string) (Config, error) {
	var rc roomdConfig
	md, err := toml.Decode(text, &rc)
	if err != nil {
		return Config{}, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		return Config{}, &fieldError{und[0].String(), "unknown key"}
	}
	return rc.Network, nil
}

func mustDecode(t testing.TB, text string) Config {
	t.Helper()
	c, err := decodeStrict(text)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return c
}
