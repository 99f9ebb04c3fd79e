package main

import (
	"context"
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
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/screentest"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/provisioning/fleetd"
)

// loopbackCert writes a self-signed certificate for 127.0.0.1 into dir.
func loopbackCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "patient web test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "patient.crt"), filepath.Join(dir, "patient.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestPatientPageWithTheUnit: the patient opens fleetd's own page
// (/join over HTTPS) with the link fleetctl consult add prints; the unit
// joins the consultation by one press. The patient's page decrypts the
// unit's picture and shows the safety code the unit shows; the unit
// decrypts the patient, and its screen shows the patient's moving picture.
func TestPatientPageWithTheUnit(t *testing.T) {
	wd, _ := os.Getwd()
	lkc := filepath.Join(wd, "..", "..", ".cache", "npm", "node_modules", "livekit-client", "dist")
	if _, err := os.Stat(filepath.Join(lkc, "livekit-client.umd.js")); err != nil {
		if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
			t.Fatal("livekit-client not in .cache/npm")
		}
		t.Skip("livekit-client not in .cache/npm (.ci/farend-setup.sh installs it)")
	}
	lk := farend.StartLiveKit(t)
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, f.scheduleKeys(t)+fleetConference(lk)+displayConfig(""))
	screenURL, _ := displayURL(t, u)
	screen := screentest.Start(t, screenURL, 1280, 720)
	cert, key := loopbackCert(t, t.TempDir())
	svc := startFleetd(t, f, lk, fmt.Sprintf(`patient_url = "https://127.0.0.1/join"
patient_web = { listen = "127.0.0.1:0", cert = %q, key = %q, clinic = "Huisartsenpraktijk De Linde", livekit_url = %q, client_dir = %q }`,
		cert, key, lk.WSURL, lkc))
	ctx := context.Background()
	now := time.Now()
	a, err := svc.Add(ctx, fleetd.AddRequest{Unit: id, Start: now.Add(5 * time.Minute), End: now.Add(35 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	material, err := svc.Store().E2EEKey(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, frag, _ := strings.Cut(a.PatientLink, "#")
	u.within(30*time.Second, "the consultation due in the status", func(s status) bool {
		return s.Consultation != nil && s.Consultation.ID == a.ID && s.Consultation.Due
	})

	p := screentest.Start(t, "about:blank", 800, 600, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--ignore-certificate-errors", "--accept-lang=en")
	p.Navigate("https://" + svc.PatientAddr() + "/join#" + frag)
	wait := func(what, expr string, d time.Duration) {
		screentest.WaitUntil(t, p, what, d, expr, func(ok bool) bool { return ok })
	}
	wait("the notice", `!!document.body && document.body.dataset.state === "notice"`, 20*time.Second)
	p.Eval(`document.getElementById('continue').click(), true`, nil)
	wait("the device check", `document.body.dataset.state === "prejoin"`, 20*time.Second)
	p.Eval(`document.getElementById('join').click(), true`, nil)
	wait("the patient in the call", `document.body.dataset.state === "call"`, 30*time.Second)

	u.press("join")
	u.waitFor("in_call", 30*time.Second, isState(appliance.InCall))
	var view struct {
		E2EE   string
		Code   string
		Frames int
		Text   string
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		p.Eval(`({e2ee: document.body.dataset.e2ee, code: konsult.code, frames: konsult.framesDecoded, text: document.getElementById('e2ee').innerText})`, &view)
		if view.E2EE == "ok" && view.Frames > 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the patient's page does not decrypt the unit: %+v", view)
		}
		time.Sleep(200 * time.Millisecond)
	}
	want := e2ee.SafetyCode(material)
	if view.Code != want || !strings.Contains(view.Text, want) {
		t.Errorf("the page's safety code %q (%q), the contract's %q", view.Code, view.Text, want)
	}
	st := u.within(20*time.Second, "the unit decrypts the patient", func(s status) bool {
		return s.Remote != nil && s.Remote.E2EE && s.Remote.E2EEDecrypted > 0
	})
	if st.SafetyCode != view.Code {
		t.Errorf("the unit shows safety code %q, the patient %q", st.SafetyCode, view.Code)
	}
	// The unit's own screen shows the patient's moving picture.
	screentest.MovingTiles(t, screen, 1, 20*time.Second)
	u.press("leave")
	u.waitFor("idle", 20*time.Second, isState(appliance.Idle))
}
