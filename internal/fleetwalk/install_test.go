package fleetwalk

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/identity"
)

// The broker install block of deploy/mosquitto/README.md, copied into a
// shell on the broker with what fleetctl ca init wrote, leaves a Mosquitto
// that starts on the shipped config and lets a unit in on 8883 and the
// enrolment credential and fleetctl in on 8884.
func TestBrokerInstallBlockStartsMosquitto(t *testing.T) {
	bin := binaries(t, "fleetctl")
	home := t.TempDir()
	env := []string{"HOME=" + home, "PATH=" + bin + ":" + os.Getenv("PATH")}
	shell(t, home, env, "fleetctl ca init --dir ~/fleet-ca --broker mqtts://127.0.0.1:8883")
	b := installBroker(t, home)

	caDir := filepath.Join(home, "fleet-ca")
	id, certFile, keyFile := unitCertificate(t, caDir)
	caFile := filepath.Join(b.root, "etc/mosquitto/konsult/ca.crt")
	if err := connect(b.unitPort, caFile, certFile, keyFile, "konsult/device/"+id); err != nil {
		t.Fatalf("an enrolled unit on 8883: %v\n%s", err, b.output())
	}
	enrol := filepath.Join(caDir, "enrol")
	if err := connect(b.sharedPort, caFile, filepath.Join(enrol, "konsult-enrol.crt"), filepath.Join(enrol, "konsult-enrol.key"), "konsult/enrol/"+id); err != nil {
		t.Fatalf("an enrolling unit on 8884: %v\n%s", err, b.output())
	}
	admin := filepath.Join(caDir, "admin")
	if err := connect(b.sharedPort, caFile, filepath.Join(admin, "fleet-admin.crt"), filepath.Join(admin, "fleet-admin.key"), "konsult/fleetctl/installtest"); err != nil {
		t.Fatalf("fleetctl on 8884: %v\n%s", err, b.output())
	}
}

// unitCertificate is what enrol approve gives a unit: a key of its own
// and a certificate from the fleet CA whose CN is the key's device id.
func unitCertificate(t *testing.T, caDir string) (id, certFile, keyFile string) {
	t.Helper()
	c, err := ca.Open(caDir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if id, err = identity.DeviceID(&key.PublicKey); err != nil {
		t.Fatal(err)
	}
	var certPEM []byte
	if err := c.Update(func(l *ca.Ledger) error {
		certPEM, err = c.Issue(l, ca.KindUnit, id, &key.PublicKey, nil, ca.UnitLifetime)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "unit.crt"), filepath.Join(dir, "unit.key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return id, certFile, keyFile
}
