package livekit_test

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
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v5/stdnet"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// startCoturn runs Debian's coturn on 127.0.0.1 with TURN over TLS only (no
// UDP or plain TCP listener), as a clinic firewall that lets out nothing but
// 443 would leave it. It returns the TLS port; the certificate is trusted
// through SSL_CERT_FILE for this test process.
func startCoturn(t *testing.T) int {
	t.Helper()
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		t.Skip("coturn not installed (apt-get install -y coturn)")
	}
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "turn test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	_ = os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	_ = os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	t.Setenv("SSL_CERT_FILE", certPath)
	port, err := farend.FreeTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "coturn.log")
	logf, _ := os.Create(logPath)
	cmd := exec.Command(bin, "-n", "--no-cli", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
		fmt.Sprintf("--listening-port=%d", port-1), fmt.Sprintf("--tls-listening-port=%d", port),
		"--no-udp", "--no-dtls", "--no-tcp", "--cert="+certPath, "--pkey="+keyPath,
		"--lt-cred-mech", "--user=unit:turn-secret-9c1e", "--realm=konsult.test", "--allow-loopback-peers",
		"--fingerprint", "--log-file=stdout", "--simple-log", "--pidfile="+filepath.Join(dir, "pid"), "--min-port=49200", "--max-port=49400")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("coturn log:\n%s", b)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return port
		}
		if time.Now().After(deadline) {
			t.Fatal("coturn did not listen within 5 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The unit's network drops every UDP packet: the call still connects,
// relayed by coturn over TURN/TLS, and both sides see each other.
func TestRTCThroughTURNWhenUDPIsBlocked(t *testing.T) {
	port := startCoturn(t)
	lk := farend.StartLiveKit(t)
	var blocked atomic.Bool
	blocked.Store(true)
	sys, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	call, _ := joinRTC(t, lk, "turn-room", cutNet{Net: sys, cut: &blocked}, livekit.RTCOptions{
		ICEServers: []webrtc.ICEServer{{URLs: []string{fmt.Sprintf("turns:127.0.0.1:%d?transport=tcp", port)}, Username: "unit", Credential: "turn-secret-9c1e"}},
		ForceRelay: true,
	})
	fe := farend.StartFarEnd(t, lk, "turn-room", "patient", farend.Publish())
	farWaitT(t, fe, "the patient sees and hears the unit through TURN", 30*time.Second, func(s farend.FarEndStats) bool {
		return s.VideoFrom == "unit-1" && s.FPS >= 15 && s.AudioEnergyPeak > 0.01
	})
	who := nextPresence(t, call, 5*time.Second).Participant
	waitPlayout(t, call, "the unit shows the patient through TURN", 20*time.Second, func(s playout.Stats) bool {
		return videoFrom(s, who).FPS >= 15 && s.EnergyPeak > 0.01
	})
	if p := call.Path(); p != "relay" {
		t.Fatalf("media path %q: want relay (through coturn)", p)
	}
	ps, err := lk.Participants(context.Background(), "turn-room")
	if err != nil || len(ps) != 2 {
		t.Fatalf("room: %v %v", ps, err)
	}
}
