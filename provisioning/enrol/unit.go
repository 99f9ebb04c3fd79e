package enrol

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
)

// SavedClaimFile keeps a claim code given with roomctl enrol across a
// restart, until enrolment succeeds (mode 0600 in the identity directory).
const SavedClaimFile = "claim-code"

// firstRequestedFile keeps when the unit first asked to enrol.
const firstRequestedFile = "first-requested"

// UnitOptions are what the unit's config fixes about its own identity and
// how it enrols. Every path is the caller's: this package knows no config
// file.
type UnitOptions struct {
	// Dir is the identity directory: the unit's key, the installed
	// identity, a saved claim code.
	Dir string
	// Broker is the enrolment listener; CAFile, CertFile and KeyFile the
	// enrolment bundle (ClientOptions).
	Broker                    string
	CAFile, CertFile, KeyFile string
	// ClaimCode is a code given in the config; ClaimFile the boot
	// partition's claim file. Both may be empty.
	ClaimCode, ClaimFile string
	// RenewBefore is how long before the certificate expires the unit asks
	// for a new one.
	RenewBefore time.Duration
	Model       string
	Logger      *slog.Logger
}

// Unit is the unit's own identity and its enrolment: the key made at first
// boot, the certificate the fleet issued, renewal, revocation, and the
// factory reset that wipes all of it. It implements the fleet agent's
// identity hooks (Report, InstallCertificate).
type Unit struct {
	o   UnitOptions
	log *slog.Logger
	key identity.KeySource
	id  string

	mu       sync.Mutex
	st       identity.State
	enrolled bool
	ca       *x509.Certificate
	cert     *x509.Certificate
	status   Status
	client   *Client
	renewCSR string
	renewErr string
	revoked  bool
	refresh  func() // republishes the reported document (the agent's)
	fault    func(detail string, cleared bool)
}

// OpenUnit loads the unit's key (making it on first boot) and any identity
// enrolment installed.
func OpenUnit(o UnitOptions) (*Unit, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	u := &Unit{o: o, log: o.Logger.With("component", "identity")}
	key, created, err := identity.LoadOrCreateKey(o.Dir)
	if err != nil {
		return nil, err
	}
	u.key = key
	if u.id, err = identity.DeviceID(key.Signer().Public()); err != nil {
		return nil, err
	}
	if created {
		u.log.Info("first boot: made the unit's key", "device", u.id, "dir", o.Dir)
	}
	st, ok, err := identity.Load(o.Dir)
	if err != nil {
		return nil, err
	}
	if ok {
		if err := u.adopt(st); err != nil {
			return nil, fmt.Errorf("installed identity: %w: factory-reset the unit (roomctl factory-reset --yes) and enrol it again", err)
		}
	} else {
		u.status = Status{Phase: PhaseNeedCode, At: time.Now()}
	}
	return u, nil
}

// ID is the unit's device id, derived from its key.
func (u *Unit) ID() string { return u.id }

// Dir is the identity directory.
func (u *Unit) Dir() string { return u.o.Dir }

// KeyPath is the unit's private key file (for TLS and EAP-TLS).
func (u *Unit) KeyPath() string { return u.key.Path() }

// CAPath and CertPath are the fleet CA and the unit's certificate as
// enrolment installed them (renewal replaces the certificate file).
func (u *Unit) CAPath() string   { return filepath.Join(u.o.Dir, identity.CAFile) }
func (u *Unit) CertPath() string { return filepath.Join(u.o.Dir, identity.CertFile) }

// SetFault sets where revocation goes: fault(detail, false) when the broker
// refuses the unit's revoked certificate, fault("", true) once it takes the
// unit again. What a fault does is the caller's (the appliance's) call.
func (u *Unit) SetFault(fault func(detail string, cleared bool)) {
	u.mu.Lock()
	u.fault = fault
	u.mu.Unlock()
}

// SetRefresh sets what republishes the unit's reported document, called
// when a renewal request is ready for the fleet to see.
func (u *Unit) SetRefresh(refresh func()) {
	u.mu.Lock()
	u.refresh = refresh
	u.mu.Unlock()
}

func (u *Unit) adopt(st identity.State) error {
	ca, err := identity.ParseCert([]byte(st.CA))
	if err != nil {
		return fmt.Errorf("fleet CA: %w", err)
	}
	cert, err := identity.ParseCert([]byte(st.Certificate))
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if st.DeviceID != u.id {
		return fmt.Errorf("%w (installed for %s, this key is %s)", identity.ErrOtherUnit, st.DeviceID, u.id)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.st, u.enrolled, u.ca, u.cert = st, true, ca, cert
	u.status = Status{Phase: PhaseEnrolled, Message: "enrolled as " + u.id, At: st.InstalledAt}
	return nil
}

// Enrolled says an identity is installed.
func (u *Unit) Enrolled() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.enrolled
}

// State is the installed identity (zero before enrolment).
func (u *Unit) State() identity.State {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.st
}

// FleetKeys are the pinned fleet keys enrolment installed.
func (u *Unit) FleetKeys() ([]ed25519.PublicKey, error) {
	return fleet.ParsePublicKeys([]byte(u.State().FleetKey))
}

// claimCode finds a claim code: the config, then the file on the boot
// partition, then one saved from roomctl enrol. source names where it came
// from, for the log.
func (u *Unit) claimCode() (code, source string) {
	if u.o.ClaimCode != "" {
		return u.o.ClaimCode, "fleet.claim_code"
	}
	for _, f := range []struct{ path, name string }{
		{u.o.ClaimFile, u.o.ClaimFile},
		{filepath.Join(u.o.Dir, SavedClaimFile), "roomctl enrol"},
	} {
		if f.path == "" {
			continue
		}
		if c := ReadClaimFile(f.path); c != "" {
			return c, f.name
		}
	}
	return "", ""
}

// ReadClaimFile reads the first line that is not blank or a # comment
// ("" if there is none, or no file).
func ReadClaimFile(path string) string {
	fh, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l != "" && !strings.HasPrefix(l, "#") {
			return l
		}
	}
	return ""
}

// Run runs enrolment until the fleet approves and the certificate checks
// out, then installs the identity.
func (u *Unit) Run(ctx context.Context, version string) error {
	c, err := NewClient(ClientOptions{
		Broker: u.o.Broker, CAFile: u.o.CAFile, CertFile: u.o.CertFile, KeyFile: u.o.KeyFile,
		Key: u.key, DeviceID: u.id, Model: u.o.Model, Version: version, FirstRequested: u.firstRequested(),
		Logger: u.log, OnStatus: u.setStatus,
	})
	if err != nil {
		u.setStatus(Status{Phase: PhaseRefused, Reason: "config", Message: err.Error(), At: time.Now()})
		return err
	}
	u.mu.Lock()
	u.client = c
	code, src := u.claimCode() // under u.mu: see Enrol
	u.mu.Unlock()
	if code != "" {
		if err := c.SetClaimCode(code); err != nil {
			u.log.Warn("claim code not usable", "source", src, "err", err)
		} else {
			u.log.Info("enrolling with a claim code", "source", src, "device", u.id)
		}
	}
	st, err := c.Run(ctx)
	if err != nil {
		return err
	}
	if err := identity.Install(u.o.Dir, st); err != nil {
		u.setStatus(Status{Phase: PhaseRefused, Reason: "install", Message: err.Error(), At: time.Now()})
		return err
	}
	_ = os.Remove(filepath.Join(u.o.Dir, SavedClaimFile))
	_ = os.Remove(filepath.Join(u.o.Dir, firstRequestedFile))
	u.log.Info("enrolled: the unit now uses its own certificate", "device", u.id, "groups", st.Groups)
	return u.adopt(st)
}

// firstRequested is when this unit first asked to enrol, kept across
// restarts so the fleet's list shows how long it has waited.
func (u *Unit) firstRequested() time.Time {
	path := filepath.Join(u.o.Dir, firstRequestedFile)
	if b, err := os.ReadFile(path); err == nil {
		if t, err := time.Parse(time.RFC3339, strings.TrimSpace(string(b))); err == nil {
			return t
		}
	}
	now := time.Now().UTC()
	_ = atomicfile.Write(path, []byte(now.Format(time.RFC3339)+"\n"), 0o600)
	return now
}

func (u *Unit) setStatus(s Status) {
	u.mu.Lock()
	u.status = s
	u.mu.Unlock()
	switch s.Phase {
	case PhaseRejected, PhaseRefused:
		u.log.Warn("enrolment", "phase", s.Phase, "reason", s.Reason, "detail", s.Message)
	default:
		u.log.Info("enrolment", "phase", s.Phase, "detail", s.Message)
	}
}

// Enrol takes a claim code from roomctl enrol.
func (u *Unit) Enrol(code string) error {
	n, err := NormalizeClaimCode(code)
	if err != nil {
		return err
	}
	// Under u.mu, against Run, which starts its client and reads the saved
	// code under it too: a code given just as enrolment starts is either in
	// the file before Run reads it or handed to its client, never lost in
	// between (roomctl enrol right after boot).
	u.mu.Lock()
	enrolled, c := u.enrolled, u.client
	if enrolled {
		u.mu.Unlock()
		return fmt.Errorf("this unit is already enrolled as %s: to enrol it again, factory-reset it first (roomctl factory-reset --yes)", u.id)
	}
	err = atomicfile.Write(filepath.Join(u.o.Dir, SavedClaimFile), []byte(n+"\n"), 0o600)
	u.mu.Unlock()
	if err != nil {
		return fmt.Errorf("save the claim code: %w", err)
	}
	if c != nil {
		return c.SetClaimCode(n)
	}
	return nil
}

// UnitStatus is the identity part of roomctl status. It names no secret:
// not the claim code, not the key.
type UnitStatus struct {
	Device    string    `json:"device"`
	Enrolment *Status   `json:"enrolment,omitempty"`
	Serial    string    `json:"certificate_serial,omitempty"`
	NotAfter  time.Time `json:"certificate_not_after,omitzero"`
	Renewing  bool      `json:"renewing,omitempty"`
	RenewErr  string    `json:"last_renewal_error,omitempty"`
	Revoked   bool      `json:"revoked,omitempty"`
}

// Status is where the unit's identity and enrolment stand now.
func (u *Unit) Status() *UnitStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.status
	v := &UnitStatus{Device: u.id, Enrolment: &st, Renewing: u.renewCSR != "", RenewErr: u.renewErr, Revoked: u.revoked}
	if u.cert != nil {
		v.Serial, v.NotAfter = u.cert.SerialNumber.Text(16), u.cert.NotAfter
	}
	return v
}

// Report implements agent.Identity.
func (u *Unit) Report() *fleet.IdentityReport {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.cert == nil {
		return nil
	}
	return &fleet.IdentityReport{Serial: u.cert.SerialNumber.Text(16), NotAfter: u.cert.NotAfter,
		RenewalCSR: u.renewCSR, LastRenewalError: u.renewErr}
}

// InstallCertificate implements agent.Identity: a renewed certificate
// must pass the same checks as the first one. The MQTT link reads it at its
// next connect; the running connection and any call are not touched.
func (u *Unit) InstallCertificate(certPEM string) error {
	u.mu.Lock()
	ca, st := u.ca, u.st
	u.mu.Unlock()
	if ca == nil {
		return errors.New("this unit is not enrolled yet")
	}
	cert, err := identity.Check([]byte(certPEM), ca, u.id, u.key.Signer().Public(), time.Now())
	if err != nil {
		u.mu.Lock()
		u.renewErr = ReasonFor(err) + ": " + err.Error()
		u.mu.Unlock()
		return fmt.Errorf("renewed certificate refused: %w", err)
	}
	st.Certificate = certPEM
	st.InstalledAt = time.Now().UTC()
	if err := identity.Install(u.o.Dir, st); err != nil {
		return fmt.Errorf("renewed certificate: %w", err)
	}
	u.mu.Lock()
	u.st, u.cert, u.renewCSR, u.renewErr = st, cert, "", ""
	u.mu.Unlock()
	u.log.Info("certificate renewed", "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// Watch asks for renewal when the certificate is due and clears the
// revoked fault once the broker takes the unit again, every period until
// ctx ends.
func (u *Unit) Watch(ctx context.Context, connected func() bool, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		u.checkRenewal()
		u.mu.Lock()
		clear := u.revoked && connected()
		if clear {
			u.revoked = false
		}
		fault := u.fault
		u.mu.Unlock()
		if clear && fault != nil {
			fault("", true)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (u *Unit) checkRenewal() {
	u.mu.Lock()
	due := u.cert != nil && u.renewCSR == "" && time.Until(u.cert.NotAfter) < u.o.RenewBefore
	refresh := u.refresh
	u.mu.Unlock()
	if !due {
		return
	}
	csr, err := identity.NewCSR(u.key, u.id)
	if err != nil {
		u.log.Warn("renewal request not made", "err", err)
		return
	}
	u.mu.Lock()
	u.renewCSR = string(csr)
	notAfter := u.cert.NotAfter
	u.mu.Unlock()
	u.log.Info("certificate due for renewal: asking the fleet", "not_after", notAfter.UTC().Format(time.RFC3339))
	if refresh != nil {
		refresh()
	}
}

// OnConnectError turns the broker refusing a revoked certificate into the
// unit's fault (SetFault; the LED fault pattern, roomctl status). It is
// link.Options.OnConnectError.
func (u *Unit) OnConnectError(err error) {
	if !link.Revoked(err) {
		return
	}
	u.mu.Lock()
	already := u.revoked
	u.revoked = true
	fault := u.fault
	u.mu.Unlock()
	if !already {
		u.log.Error("the fleet revoked this unit's certificate: it cannot reach its fleet; ask the fleet manager, or factory-reset and enrol it again", "device", u.id)
		if fault != nil {
			fault("the fleet revoked this unit's certificate: ask the fleet manager, or factory-reset and enrol again", false)
		}
	}
}

// Wipe removes the identity and the other directories given (the fleet
// state). The key goes first (identity.Wipe), so a reset cut short cannot
// leave a unit that still authenticates as itself.
func (u *Unit) Wipe(others ...string) error {
	var errs []error
	if err := identity.Wipe(u.o.Dir); err != nil {
		errs = append(errs, err)
	}
	for _, d := range others {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("factory reset: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ClaimPlaceholder is what the boot partition's claim file holds once the
// code is taken (image/claim-placeholder.txt's comment).
const ClaimPlaceholder = `# Konsult enrolment claim code.
#
# Your fleet manager gives you a claim code for this room unit. Write it on
# the line below this comment (one line, nothing else), save this file, put
# the SD card back in the unit and power it on. The unit enrols on its first
# boot and removes the code from this file.
`

// TakeClaimCode moves a claim code from the boot partition (root-only on
// the image) into the identity directory idDir, owned by the owner of
// idDir's parent (roomd's user), and blanks it on the boot partition so the
// SD card no longer carries it. dst is the saved file, "" when src holds no
// code (the unit is enrolled or enrols another way).
func TakeClaimCode(src, idDir string) (dst string, err error) {
	code := ReadClaimFile(src)
	if code == "" {
		return "", nil
	}
	n, err := NormalizeClaimCode(code)
	if err != nil {
		return "", fmt.Errorf("take-claim: %s: %w", src, err)
	}
	if err := os.MkdirAll(idDir, 0o700); err != nil {
		return "", fmt.Errorf("take-claim: %w", err)
	}
	dst = filepath.Join(idDir, SavedClaimFile)
	if err := atomicfile.Write(dst, []byte(n+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("take-claim: %w", err)
	}
	// roomd runs as the owner of its state directory (/var/lib/konsult).
	if fi, err := os.Stat(filepath.Dir(idDir)); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			for _, p := range []string{idDir, dst} {
				if err := os.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
					return "", fmt.Errorf("take-claim: %w", err)
				}
			}
		}
	}
	if err := atomicfile.Write(src, []byte(ClaimPlaceholder), 0o600); err != nil {
		return "", fmt.Errorf("take-claim: blank %s: %w", src, err)
	}
	return dst, nil
}
