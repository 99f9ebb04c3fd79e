package enrol_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/identity"
)

// enrolledUnit opens a unit in a fresh identity directory and installs a
// certificate from c valid for lifetime, as enrolment would.
func enrolledUnit(t *testing.T, c *ca.CA, lifetime, renewBefore time.Duration) (*enrol.Unit, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "identity")
	u, err := enrol.OpenUnit(enrol.UnitOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st := identity.State{DeviceID: u.ID(), Certificate: string(issue(t, c, dir, u.ID(), lifetime)),
		CA: string(c.CertPEM()), Groups: []string{"clinic-a"}, InstalledAt: time.Now().UTC()}
	if err := identity.Install(dir, st); err != nil {
		t.Fatal(err)
	}
	u, err = enrol.OpenUnit(enrol.UnitOptions{Dir: dir, RenewBefore: renewBefore})
	if err != nil {
		t.Fatal(err)
	}
	if !u.Enrolled() {
		t.Fatal("not enrolled after install")
	}
	return u, dir
}

func issue(t *testing.T, c *ca.CA, dir, id string, lifetime time.Duration) []byte {
	t.Helper()
	key, _, err := identity.LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pemCert []byte
	if err := c.Update(func(l *ca.Ledger) error {
		pemCert, err = c.Issue(l, ca.KindUnit, id, key.Signer().Public(), nil, lifetime)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return pemCert
}

func newCA(t *testing.T) *ca.CA {
	t.Helper()
	c, err := ca.Init(filepath.Join(t.TempDir(), "ca"), "test fleet")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestUnitFirstBootWaitsForCode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	u, err := enrol.OpenUnit(enrol.UnitOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if u.Enrolled() || u.Report() != nil {
		t.Fatal("a fresh unit reports an identity")
	}
	if s := u.Status(); s.Device != u.ID() || s.Enrolment.Phase != enrol.PhaseNeedCode || s.Serial != "" {
		t.Fatalf("status %+v", s)
	}
	if !strings.HasPrefix(u.ID(), identity.DeviceIDPrefix) || u.Dir() != dir || u.KeyPath() == "" {
		t.Fatalf("id %q dir %q key %q", u.ID(), u.Dir(), u.KeyPath())
	}
	// The same key at the next start.
	again, err := enrol.OpenUnit(enrol.UnitOptions{Dir: dir})
	if err != nil || again.ID() != u.ID() {
		t.Fatalf("reopened as %v, %v", again, err)
	}
	if err := u.Enrol("7K2M-QX9P"); err == nil {
		t.Fatal("a short claim code was taken")
	}
	code := enrol.NewClaimCode()
	if err := u.Enrol(strings.ToLower(code)); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(dir, enrol.SavedClaimFile)
	if got := enrol.ReadClaimFile(saved); got != code {
		t.Fatalf("saved code %q, want %q", got, code)
	}
	if fi, err := os.Stat(saved); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("saved code file: %v %v", fi, err)
	}
	if err := u.InstallCertificate("x"); err == nil {
		t.Fatal("a certificate installed before enrolment")
	}
}

func TestUnitRefusesAnotherUnitsIdentity(t *testing.T) {
	c := newCA(t)
	_, dir := enrolledUnit(t, c, time.Hour, 0)
	// A new key in the same directory: the installed identity is not its.
	if err := os.Remove(filepath.Join(dir, identity.KeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := enrol.OpenUnit(enrol.UnitOptions{Dir: dir}); !errors.Is(err, identity.ErrOtherUnit) || !strings.Contains(err.Error(), "factory-reset") {
		t.Fatalf("open with another key: %v", err)
	}
}

func TestUnitEnrolledRefusesAnotherCode(t *testing.T) {
	u, _ := enrolledUnit(t, newCA(t), time.Hour, 0)
	if err := u.Enrol(enrol.NewClaimCode()); err == nil || !strings.Contains(err.Error(), "already enrolled as "+u.ID()) {
		t.Fatalf("enrol an enrolled unit: %v", err)
	}
	if s := u.Status(); s.Enrolment.Phase != enrol.PhaseEnrolled || s.Serial == "" || s.NotAfter.IsZero() {
		t.Fatalf("status %+v", s)
	}
	if st := u.State(); st.DeviceID != u.ID() || len(st.Groups) != 1 {
		t.Fatalf("state %+v", st)
	}
	if u.CAPath() != filepath.Join(u.Dir(), identity.CAFile) || u.CertPath() != filepath.Join(u.Dir(), identity.CertFile) {
		t.Fatalf("paths %s %s", u.CAPath(), u.CertPath())
	}
}

// A certificate due for renewal makes a request the fleet sees in the
// reported document; the renewed certificate is checked like the first and
// survives a restart.
func TestUnitRenewal(t *testing.T) {
	c := newCA(t)
	u, dir := enrolledUnit(t, c, time.Hour, 2*time.Hour)
	var refreshed int
	u.SetRefresh(func() { refreshed++ })
	once := func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // one round of Watch
		u.Watch(ctx, func() bool { return true }, time.Hour)
	}
	once()
	r := u.Report()
	if r == nil || !strings.Contains(r.RenewalCSR, "CERTIFICATE REQUEST") || refreshed != 1 || !u.Status().Renewing {
		t.Fatalf("due for renewal: report %+v, refreshed %d", r, refreshed)
	}
	once() // one request at a time
	if refreshed != 1 {
		t.Fatalf("asked again while a request is open: %d", refreshed)
	}
	if err := u.InstallCertificate("not a certificate"); err == nil {
		t.Fatal("garbage installed")
	}
	if r := u.Report(); !strings.Contains(r.LastRenewalError, identity.ErrMalformed.Error()) {
		t.Fatalf("refusal not reported: %+v", r)
	}
	other := newCA(t)
	if err := u.InstallCertificate(string(issue(t, other, dir, u.ID(), 48*time.Hour))); err == nil {
		t.Fatal("a certificate from another CA installed")
	}
	renewed := issue(t, c, dir, u.ID(), 48*time.Hour)
	if err := u.InstallCertificate(string(renewed)); err != nil {
		t.Fatal(err)
	}
	r = u.Report()
	if r.RenewalCSR != "" || r.LastRenewalError != "" || time.Until(r.NotAfter) < 24*time.Hour {
		t.Fatalf("after renewal: %+v", r)
	}
	again, err := enrol.OpenUnit(enrol.UnitOptions{Dir: dir})
	if err != nil || again.Report().Serial != r.Serial {
		t.Fatalf("after a restart: %v %v", again.Report(), err)
	}
}

// Revocation reaches the caller as a fault once, and clears once the
// broker takes the unit again.
func TestUnitRevocationIsAFault(t *testing.T) {
	u, _ := enrolledUnit(t, newCA(t), time.Hour, 0)
	type call struct {
		detail  string
		cleared bool
	}
	var mu sync.Mutex
	var calls []call
	u.SetFault(func(d string, c bool) { mu.Lock(); calls = append(calls, call{d, c}); mu.Unlock() })
	u.OnConnectError(errors.New("dial tcp: connection refused"))
	revoked := errors.New("remote error: tls: revoked certificate")
	u.OnConnectError(revoked)
	u.OnConnectError(revoked)
	if len(calls) != 1 || calls[0].cleared || !strings.Contains(calls[0].detail, "revoked") || !u.Status().Revoked {
		t.Fatalf("fault calls %+v", calls)
	}
	round := func(connected bool) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		u.Watch(ctx, func() bool { return connected }, time.Hour)
	}
	round(false)
	if len(calls) != 1 {
		t.Fatalf("cleared while still refused: %+v", calls)
	}
	round(true)
	if len(calls) != 2 || !calls[1].cleared || u.Status().Revoked {
		t.Fatalf("fault calls %+v", calls)
	}
}

func TestUnitWipeRemovesKeyAndState(t *testing.T) {
	u, dir := enrolledUnit(t, newCA(t), time.Hour, 0)
	state := filepath.Join(t.TempDir(), "fleet")
	if err := os.MkdirAll(filepath.Join(state, "link"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := u.Wipe(state, ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, state} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after wipe: %v", p, err)
		}
	}
	fresh, err := enrol.OpenUnit(enrol.UnitOptions{Dir: dir})
	if err != nil || fresh.ID() == u.ID() || fresh.Enrolled() {
		t.Fatalf("after wipe the unit is %v (enrolled %v), %v", fresh.ID(), fresh.Enrolled(), err)
	}
}

func TestTakeClaimCode(t *testing.T) {
	dir := t.TempDir()
	boot := filepath.Join(dir, "konsult-claim.txt")
	idDir := filepath.Join(dir, "state", "identity")
	if dst, err := enrol.TakeClaimCode(boot, idDir); err != nil || dst != "" {
		t.Fatalf("no claim file: %q %v", dst, err)
	}
	code := enrol.NewClaimCode()
	if err := os.WriteFile(boot, []byte(enrol.ClaimPlaceholder+strings.ToLower(code)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst, err := enrol.TakeClaimCode(boot, idDir)
	if err != nil || dst != filepath.Join(idDir, enrol.SavedClaimFile) {
		t.Fatalf("take: %q %v", dst, err)
	}
	if got := enrol.ReadClaimFile(dst); got != code {
		t.Fatalf("saved %q, want %q", got, code)
	}
	if b, _ := os.ReadFile(boot); string(b) != enrol.ClaimPlaceholder {
		t.Fatalf("boot file now %q", b)
	}
	if dst, err := enrol.TakeClaimCode(boot, idDir); err != nil || dst != "" {
		t.Fatalf("second run: %q %v", dst, err)
	}
	if err := os.WriteFile(boot, []byte("7K2M-QX9P\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := enrol.TakeClaimCode(boot, idDir); err == nil || !strings.Contains(err.Error(), "take-claim") {
		t.Fatalf("short code: %v", err)
	}
	if got := enrol.ReadClaimFile(dst); got != code {
		t.Fatalf("a bad code replaced the saved one: %q", got)
	}
}
