package enrol_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
)

const enrolCN = "konsult/enrol"

// fleetUnderTest is a fleet CA, real Mosquitto with the shipped config, ACL
// and the CA's CRL, and the enrolment credential.
type fleetUnderTest struct {
	ca                  *ca.CA
	b                   *brokertest.Broker
	enrolCert, enrolKey string
	topics              link.Topics
}

func newFleet(t testing.TB) *fleetUnderTest {
	t.Helper()
	c, err := ca.Init(filepath.Join(t.TempDir(), "fleet-ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := c.IssueWithKey(ca.KindEnrol, enrolCN, nil, filepath.Join(t.TempDir(), "enrol"))
	if err != nil {
		t.Fatal(err)
	}
	b := brokertest.Start(t, brokertest.Options{CA: c})
	return &fleetUnderTest{ca: c, b: b, enrolCert: cert, enrolKey: key}
}

func (f *fleetUnderTest) newCode(t testing.TB) string {
	t.Helper()
	code := enrol.NewClaimCode()
	if err := f.ca.Update(func(l *ca.Ledger) error {
		l.ClaimCodes = append(l.ClaimCodes, ca.ClaimCode{Code: code, Created: time.Now()})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return code
}

// unit is a fresh unit's enrolment client with its statuses recorded.
type unit struct {
	id  string
	key identity.KeySource
	c   *enrol.Client

	mu       sync.Mutex
	statuses []enrol.Status
	done     chan struct{}
	st       identity.State
	err      error
}

func (f *fleetUnderTest) newUnit(t testing.TB) *unit {
	t.Helper()
	k, created, err := identity.LoadOrCreateKey(filepath.Join(t.TempDir(), "identity"))
	if err != nil || !created {
		t.Fatalf("first boot key: created=%v err=%v", created, err)
	}
	id, err := identity.DeviceID(k.Signer().Public())
	if err != nil {
		t.Fatal(err)
	}
	u := &unit{id: id, key: k, done: make(chan struct{})}
	u.c, err = enrol.NewClient(enrol.ClientOptions{
		Broker: f.b.SharedURL(), CAFile: f.b.CAFile(), CertFile: f.enrolCert, KeyFile: f.enrolKey,
		Key: k, DeviceID: id, Model: "test-board", Version: "test", Retry: 200 * time.Millisecond,
		OnStatus: func(s enrol.Status) {
			u.mu.Lock()
			u.statuses = append(u.statuses, s)
			u.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); <-u.done })
	go func() {
		defer close(u.done)
		u.st, u.err = u.c.Run(ctx)
	}()
	return u
}

func (u *unit) last() enrol.Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.statuses) == 0 {
		return enrol.Status{}
	}
	return u.statuses[len(u.statuses)-1]
}

func (u *unit) waitPhase(t testing.TB, phase string) enrol.Status {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if s := u.last(); s.Phase == phase {
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("unit never reached %s; last status %+v", phase, u.last())
	return enrol.Status{}
}

// request reads unit id's retained request as the fleet manager does.
func (f *fleetUnderTest) request(t testing.TB, id string) enrol.Request {
	t.Helper()
	got := make(chan []byte, 8)
	admin := f.b.Client(t, f.b.Admin().Name)
	admin.Subscribe(f.topics.AllEnrolRequests(), 1, func(_ mqtt.Client, m mqtt.Message) {
		if strings.Contains(m.Topic(), "/"+id+"/") && len(m.Payload()) > 0 {
			got <- m.Payload()
		}
	}).Wait()
	select {
	case b := <-got:
		var r enrol.Request
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("no enrolment request from %s reached the fleet", id)
	}
	return enrol.Request{}
}

func (f *fleetUnderTest) respond(t testing.TB, id string, decision []byte) {
	t.Helper()
	admin := f.b.Client(t, f.b.Admin().Name)
	if tok := admin.Publish(f.topics.EnrolResponse(id), 1, true, decision); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish decision: %v", tok.Error())
	}
}

func TestEnrolFreshUnitToOwnCertificate(t *testing.T) {
	f := newFleet(t)
	code := f.newCode(t)
	u := f.newUnit(t)
	u.waitPhase(t, enrol.PhaseNeedCode)
	// As typed by an installer: lower case, no dashes.
	if err := u.c.SetClaimCode(strings.ToLower(strings.ReplaceAll(code, "-", ""))); err != nil {
		t.Fatal(err)
	}
	u.waitPhase(t, enrol.PhaseWaiting)

	req := f.request(t, u.id)
	if strings.Contains(string(mustJSON(req)), code) || strings.Contains(string(mustJSON(req)), strings.ReplaceAll(code, "-", "")) {
		t.Fatal("the claim code travelled in clear")
	}
	l, _ := f.ca.Ledger()
	p := enrol.Evaluate(req, l)
	if p.Problem != "" || p.ClaimCode != code || p.Model != "test-board" {
		t.Fatalf("fleet's view of the request: %+v", p)
	}
	d, err := enrol.Approve(f.ca, req, []string{"ward-3"}, f.b.URL(), "# fleet key\nAAAA\n")
	if err != nil {
		t.Fatal(err)
	}
	f.respond(t, u.id, d)
	select {
	case <-u.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("unit did not take the approval; last status %+v", u.last())
	}
	if u.err != nil {
		t.Fatal(u.err)
	}
	if u.last().Phase != enrol.PhaseEnrolled || u.st.Broker != f.b.URL() || len(u.st.Groups) != 1 {
		t.Fatalf("enrolled state %+v, status %+v", u.st, u.last())
	}

	// The unit installs its identity and connects with its own certificate.
	dir := filepath.Dir(u.key.Path())
	if err := identity.Install(dir, u.st); err != nil {
		t.Fatal(err)
	}
	lk, err := link.Open(link.Options{Broker: f.b.URL(), CAFile: filepath.Join(dir, identity.CAFile),
		CertFile: filepath.Join(dir, identity.CertFile), KeyFile: u.key.Path(), DeviceID: u.id,
		Groups: u.st.Groups, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lk.WaitConnected(ctx); err != nil {
		t.Fatalf("unit with its own certificate: %v\n%s", err, f.b.Log())
	}
	// The claim code is spent.
	l, _ = f.ca.Ledger()
	if l.ClaimCodes[0].UsedBy != u.id || l.Units[u.id].Status != "approved" {
		t.Fatalf("ledger after approval: %+v %+v", l.ClaimCodes, l.Units[u.id])
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

func TestEnrolRefusals(t *testing.T) {
	f := newFleet(t)

	t.Run("wrong claim code", func(t *testing.T) {
		f.newCode(t)
		u := f.newUnit(t)
		if err := u.c.SetClaimCode(enrol.NewClaimCode()); err != nil {
			t.Fatal(err)
		}
		req := f.request(t, u.id)
		l, _ := f.ca.Ledger()
		p := enrol.Evaluate(req, l)
		if p.Problem != enrol.ReasonWrongCode {
			t.Fatalf("problem %q, want %q", p.Problem, enrol.ReasonWrongCode)
		}
		// "enrol code" makes a new code; the list is "enrol codes".
		if !strings.Contains(p.Message, "fleetctl enrol codes lists them") {
			t.Errorf("detail %q does not point at fleetctl enrol codes", p.Message)
		}
		if _, err := enrol.Approve(f.ca, req, nil, f.b.URL(), "k"); !errors.Is(err, enrol.ErrNotApprovable) {
			t.Fatalf("approve a wrong code: %v", err)
		}
		d, err := enrol.Reject(f.ca, req, p.Problem, p.Message)
		if err != nil {
			t.Fatal(err)
		}
		f.respond(t, u.id, d)
		s := u.waitPhase(t, enrol.PhaseRejected)
		if s.Reason != enrol.ReasonWrongCode || !strings.Contains(s.Message, "new claim code") {
			t.Fatalf("unit shows %+v", s)
		}
	})

	t.Run("already used claim code", func(t *testing.T) {
		code := f.newCode(t)
		first := f.newUnit(t)
		_ = first.c.SetClaimCode(code)
		req := f.request(t, first.id)
		d, err := enrol.Approve(f.ca, req, nil, f.b.URL(), "k")
		if err != nil {
			t.Fatal(err)
		}
		f.respond(t, first.id, d)
		first.waitPhase(t, enrol.PhaseEnrolled)

		second := f.newUnit(t)
		_ = second.c.SetClaimCode(code)
		req2 := f.request(t, second.id)
		l, _ := f.ca.Ledger()
		if p := enrol.Evaluate(req2, l); p.Problem != enrol.ReasonUsedCode || !strings.Contains(p.Message, first.id) {
			t.Fatalf("second unit with a used code: %+v", p)
		}
		if _, err := enrol.Approve(f.ca, req2, nil, f.b.URL(), "k"); !errors.Is(err, enrol.ErrNotApprovable) {
			t.Fatalf("approve a used code: %v", err)
		}
	})

	t.Run("expired claim code", func(t *testing.T) {
		code := enrol.NewClaimCode()
		if err := f.ca.Update(func(l *ca.Ledger) error {
			l.ClaimCodes = append(l.ClaimCodes, ca.ClaimCode{Code: code, Created: time.Now().Add(-31 * 24 * time.Hour), Expires: time.Now().Add(-24 * time.Hour)})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		u := f.newUnit(t)
		_ = u.c.SetClaimCode(code)
		req := f.request(t, u.id)
		l, _ := f.ca.Ledger()
		p := enrol.Evaluate(req, l)
		if p.Problem != enrol.ReasonExpiredCode || !strings.Contains(p.Message, "expired on") || !strings.Contains(p.Message, "new one") {
			t.Fatalf("an expired code: %+v", p)
		}
		if _, err := enrol.Approve(f.ca, req, nil, f.b.URL(), "k"); !errors.Is(err, enrol.ErrNotApprovable) {
			t.Fatalf("approve an expired code: %v", err)
		}
		d, err := enrol.Reject(f.ca, req, p.Problem, p.Message)
		if err != nil {
			t.Fatal(err)
		}
		f.respond(t, u.id, d)
		if s := u.waitPhase(t, enrol.PhaseRejected); s.Reason != enrol.ReasonExpiredCode {
			t.Fatalf("unit shows %+v", s)
		}
	})

	// The remaining cases are decisions the real fleet would not send; the
	// test writes them with the fleet's own keys, as an attacker or a
	// mistaken tool could.
	approvalWith := func(t *testing.T, u *unit, mutate func(*enrol.Decision), signer *ca.CA) []byte {
		t.Helper()
		req := f.request(t, u.id)
		csr, err := enrol.ParseCSR(req.CSR)
		if err != nil {
			t.Fatal(err)
		}
		var cert []byte
		if err := f.ca.Update(func(l *ca.Ledger) error {
			cert, err = f.ca.Issue(l, ca.KindUnit, u.id, csr.PublicKey, nil, ca.UnitLifetime)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		d := enrol.Decision{DeviceID: u.id, Status: enrol.Approved, Answers: req.ClaimProof, Certificate: string(cert),
			CA: string(f.ca.CertPEM()), FleetKey: "k", Broker: f.b.URL(), At: time.Now()}
		mutate(&d)
		if signer == nil {
			signer = f.ca
		}
		b, err := enrol.SignDecision(signer.Signer(), d)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// otherCert names id but carries another key, which ca.Issue refuses to
	// sign: it is made with the CA's key directly, as a mistaken tool could.
	otherCert := func(t *testing.T, id string, lifetime time.Duration, issuer *ca.CA) string {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()),
			Subject:      pkix.Name{CommonName: id},
			NotBefore:    time.Now().Add(-time.Minute),
			NotAfter:     time.Now().Add(lifetime),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, issuer.Cert, &key.PublicKey, issuer.Signer())
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	otherCA, err := ca.Init(filepath.Join(t.TempDir(), "other-ca"), "another fleet")
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, reason string
		mutate       func(u *unit, d *enrol.Decision)
		signer       *ca.CA
	}{
		{"approval for another unit", "other_unit", func(u *unit, d *enrol.Decision) { d.DeviceID = "ku-someoneelse" }, nil},
		{"certificate for another unit", "other_unit", func(u *unit, d *enrol.Decision) {
			d.Certificate = otherCert(t, "ku-someoneelse", ca.UnitLifetime, f.ca)
		}, nil},
		{"certificate that does not match the key", "key_mismatch", func(u *unit, d *enrol.Decision) {
			d.Certificate = otherCert(t, u.id, ca.UnitLifetime, f.ca)
		}, nil},
		{"expired certificate", "expired", func(u *unit, d *enrol.Decision) {
			req := enrol.Request{}
			_ = req
			f.ca.SetClock(func() time.Time { return time.Now().Add(-200 * 24 * time.Hour) })
			defer f.ca.SetClock(time.Now)
			csrKey := u.key.Signer().Public()
			_ = f.ca.Update(func(l *ca.Ledger) error {
				c, err := f.ca.Issue(l, ca.KindUnit, u.id, csrKey, nil, ca.UnitLifetime)
				d.Certificate = string(c)
				return err
			})
		}, nil},
		{"CA that changed (decision signed by another CA)", "ca_changed", func(u *unit, d *enrol.Decision) {}, otherCA},
		{"CA that changed (certificate from another CA)", "ca_changed", func(u *unit, d *enrol.Decision) {
			d.CA = string(otherCA.CertPEM())
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := f.newUnit(t)
			_ = u.c.SetClaimCode(f.newCode(t))
			u.waitPhase(t, enrol.PhaseWaiting)
			f.respond(t, u.id, approvalWith(t, u, func(d *enrol.Decision) { tc.mutate(u, d) }, tc.signer))
			s := u.waitPhase(t, enrol.PhaseRefused)
			if s.Reason != tc.reason {
				t.Fatalf("refused with %q (%s), want %q", s.Reason, s.Message, tc.reason)
			}
			// The refusal reaches the fleet in the re-sent request.
			deadline := time.Now().Add(10 * time.Second)
			for {
				r := f.request(t, u.id)
				if r.Refusal != nil && r.Refusal.Reason == tc.reason {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("fleet never saw the refusal; request %+v", r.Refusal)
				}
				time.Sleep(100 * time.Millisecond)
			}
			select {
			case <-u.done:
				t.Fatalf("unit stopped enrolling after a bad approval: %v", u.err)
			default:
			}
		})
	}
}

// TestEnrolCredentialReachesNoDeviceTopic: the shared credential (which
// any unit's SD card holds) can write only its own client id's request and
// read only its response.
func TestEnrolCredentialReachesNoDeviceTopic(t *testing.T) {
	f := newFleet(t)
	unitKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	victim, _ := identity.DeviceID(&unitKey.PublicKey)
	var victimCert []byte
	_ = f.ca.Update(func(l *ca.Ledger) error {
		var err error
		victimCert, err = f.ca.Issue(l, ca.KindUnit, victim, &unitKey.PublicKey, nil, ca.UnitLifetime)
		return err
	})
	_ = victimCert

	self := "ku-selfselfselfselfselfs"
	// The fleet manager sees everything that lands anywhere.
	var mu sync.Mutex
	var landed []string
	admin := f.b.Client(t, f.b.Admin().Name)
	admin.Subscribe("#", 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		if string(m.Payload()) == "from the enrolment credential" || m.Topic() == f.topics.EnrolRequest(self) {
			landed = append(landed, m.Topic())
		}
		mu.Unlock()
	}).Wait()
	// Something for the credential to try to read.
	admin.Publish(f.topics.DeviceConfig(victim), 1, true, []byte("signed config")).Wait()
	admin.Publish(f.topics.EnrolResponse(victim), 1, true, []byte("victim's decision")).Wait()
	admin.Publish(f.topics.DeviceConfig(enrolCN), 1, true, []byte("x")).Wait()

	cert, err := tls.LoadX509KeyPair(f.enrolCert, f.enrolKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.CertPEM())
	o := mqtt.NewClientOptions().AddBroker("ssl://" + f.b.SharedAddr()).SetClientID(f.topics.EnrolClientID(self)).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}})
	cl := mqtt.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("enrolment credential cannot connect: %v", tok.Error())
	}
	defer cl.Disconnect(100)
	var gotMu sync.Mutex
	var got []string
	for _, filter := range []string{"#", "konsult/device/+/config", f.topics.DeviceConfig(victim), f.topics.DeviceCmd(victim),
		f.topics.EnrolResponse(victim), f.topics.DeviceConfig(enrolCN), "konsult/enrol/+/request", f.topics.EnrolResponse(self)} {
		cl.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
			gotMu.Lock()
			got = append(got, m.Topic())
			gotMu.Unlock()
		}).WaitTimeout(5 * time.Second)
	}
	writes := []string{f.topics.Status(victim), f.topics.Events(victim), f.topics.Reported(victim), f.topics.DeviceConfig(victim),
		f.topics.EnrolRequest(victim), f.topics.EnrolResponse(self), f.topics.Status(enrolCN), "konsult/device/konsult/enrol/status"}
	for _, w := range writes {
		cl.Publish(w, 1, false, []byte("from the enrolment credential")).WaitTimeout(5 * time.Second)
	}
	cl.Publish(f.topics.EnrolRequest(self), 1, false, []byte("{}")).WaitTimeout(5 * time.Second)
	time.Sleep(500 * time.Millisecond)

	// The "/" in the credential's CN turns the shipped %u patterns into
	// 5-level topics such as konsult/device/konsult/enrol/config, which no
	// unit has (Parse refuses them, and device ids cannot hold "/"): the
	// credential may touch those, and nothing else.
	isDeviceTopic := func(tp string) bool {
		k, name, ok := f.topics.Parse(tp)
		if k == link.EnrolRequest || k == link.EnrolResponse {
			return name != self // its own request and response are allowed
		}
		return ok
	}
	gotMu.Lock()
	defer gotMu.Unlock()
	for _, tp := range got {
		if isDeviceTopic(tp) {
			t.Errorf("the enrolment credential read %s", tp)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var fromCred []string
	sawOwn := false
	for _, tp := range landed {
		if isDeviceTopic(tp) {
			fromCred = append(fromCred, tp)
		}
		if tp == f.topics.EnrolRequest(self) {
			sawOwn = true
		}
	}
	if len(fromCred) > 0 {
		t.Errorf("the enrolment credential wrote %v", fromCred)
	}
	if !sawOwn {
		t.Errorf("the enrolment credential could not write its own request (ACL too tight); landed: %v", landed)
	}
}

// enrolled runs a unit through enrolment and installs its identity.
func (f *fleetUnderTest) enrolled(t testing.TB, groups ...string) (*unit, string) {
	t.Helper()
	u := f.newUnit(t)
	_ = u.c.SetClaimCode(f.newCode(t))
	req := f.request(t, u.id)
	d, err := enrol.Approve(f.ca, req, groups, f.b.URL(), "k")
	if err != nil {
		t.Fatal(err)
	}
	f.respond(t, u.id, d)
	<-u.done
	if u.err != nil {
		t.Fatal(u.err)
	}
	dir := filepath.Dir(u.key.Path())
	if err := identity.Install(dir, u.st); err != nil {
		t.Fatal(err)
	}
	return u, dir
}

func TestRevokedUnitIsRefusedAtNextConnect(t *testing.T) {
	f := newFleet(t)
	u, dir := f.enrolled(t)
	other, otherDir := f.enrolled(t)
	errs := make(chan error, 16)
	open := func(u *unit, dir string, onErr func(error)) *link.Link {
		lk, err := link.Open(link.Options{Broker: f.b.URL(), CAFile: filepath.Join(dir, identity.CAFile),
			CertFile: filepath.Join(dir, identity.CertFile), KeyFile: u.key.Path(), DeviceID: u.id,
			StoreDir: t.TempDir(), MinBackoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, OnConnectError: onErr})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lk.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := lk.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
		return lk
	}
	lk := open(u, dir, func(err error) {
		select {
		case errs <- err:
		default:
		}
	})
	otherLink := open(other, otherDir, nil)

	n, err := f.ca.Revoke(u.id, "stolen")
	if err != nil || n != 1 {
		t.Fatalf("revoke: n=%d err=%v", n, err)
	}
	// Mosquitto 2.0 loads the CRL only at start.
	f.b.Stop()
	f.b.Restart()

	// The first errors may be the broker's restart itself (connection
	// reset); the refusal of the certificate must follow.
	deadline := time.After(20 * time.Second)
	var seen []string
	for revoked := false; !revoked; {
		select {
		case err := <-errs:
			revoked = link.Revoked(err)
			seen = append(seen, err.Error())
		case <-deadline:
			t.Fatalf("revoked unit never got a certificate_revoked refusal; errors %q, connected=%v", seen, lk.Connected())
		}
	}
	// Every later attempt says so too. With TLS 1.3 the broker's refusal
	// comes after the unit's handshake is done, and a unit that has already
	// written CONNECT saw only "connection reset" (no fault LED) unless the
	// link probes for the alert.
	for i := 0; i < 5; i++ {
		select {
		case err := <-errs:
			if !link.Revoked(err) {
				t.Fatalf("attempt %d after the refusal: %v (not reported as revoked)", i+1, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no further connection attempt within 20s")
		}
	}
	if lk.Connected() {
		t.Fatal("revoked unit is connected")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := otherLink.WaitConnected(ctx); err != nil {
		t.Fatalf("a unit that was not revoked lost its broker: %v", err)
	}
}

// BenchmarkEnrolment: a fresh unit's claim code in → its own certificate
// in use (first connect as itself), with the fleet answering at once.
// Real Mosquitto with TLS; the human approval step is not in the figure.
func BenchmarkEnrolment(b *testing.B) {
	f := newFleet(b)
	var total time.Duration
	defer func() { b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/enrolment") }()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		code := f.newCode(b)
		u := f.newUnit(b)
		b.StartTimer()
		start := time.Now()
		_ = u.c.SetClaimCode(code)
		req := f.request(b, u.id)
		d, err := enrol.Approve(f.ca, req, nil, f.b.URL(), "k")
		if err != nil {
			b.Fatal(err)
		}
		f.respond(b, u.id, d)
		<-u.done
		if u.err != nil {
			b.Fatal(u.err)
		}
		dir := filepath.Dir(u.key.Path())
		if err := identity.Install(dir, u.st); err != nil {
			b.Fatal(err)
		}
		lk, err := link.Open(link.Options{Broker: f.b.URL(), CAFile: filepath.Join(dir, identity.CAFile),
			CertFile: filepath.Join(dir, identity.CertFile), KeyFile: u.key.Path(), DeviceID: u.id, StoreDir: b.TempDir(),
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = lk.WaitConnected(ctx)
		cancel()
		total += time.Since(start)
		b.StopTimer()
		lk.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
