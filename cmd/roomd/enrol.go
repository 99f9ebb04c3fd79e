package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
)

// errFactoryReset ends run after a factory reset: systemd starts roomd
// again (exitRestart) as a unit on its first boot; --sim starts over
// inside the process.
var errFactoryReset = errors.New("factory reset: starting again as a new unit")

// savedClaimFile keeps a claim code given with roomctl enrol across a
// restart, until enrolment succeeds (mode 0600 in the identity directory).
const savedClaimFile = "claim-code"

// provisioning is the unit's own identity and its enrolment: the key made
// at first boot, the certificate the fleet issued, renewal, revocation, and
// the factory reset that wipes all of it.
type provisioning struct {
	log         *slog.Logger
	dir         string
	key         identity.KeySource
	id          string
	fleet       FleetConfig // the unit's own [fleet] section
	renewBefore time.Duration
	model       string
	wipe        []string // directories a factory reset removes besides dir

	mu       sync.Mutex
	st       identity.State
	enrolled bool
	ca       *x509.Certificate
	cert     *x509.Certificate
	status   enrol.Status
	client   *enrol.Client
	renewCSR string
	renewErr string
	revoked  bool
	refresh  func() // republishes the reported document (the agent's)
	fault    func(detail string, cleared bool)
}

func identityDir(f FleetConfig, simulate bool, socket string) string {
	if f.IdentityDir != "" {
		return f.IdentityDir
	}
	if simulate {
		return filepath.Join(filepath.Dir(socket), "sim-identity")
	}
	return "/var/lib/konsult/identity"
}

// newProvisioning loads the unit's key (making it on first boot) and any
// identity enrolment installed.
func newProvisioning(local *Config, simulate bool, model string, log *slog.Logger) (*provisioning, error) {
	f := local.Fleet
	p := &provisioning{log: log.With("component", "identity"), dir: identityDir(f, simulate, local.API.Socket),
		fleet: f, renewBefore: f.RenewBefore.Duration, model: model}
	key, created, err := identity.LoadOrCreateKey(p.dir)
	if err != nil {
		return nil, err
	}
	p.key = key
	if p.id, err = identity.DeviceID(key.Signer().Public()); err != nil {
		return nil, err
	}
	if created {
		p.log.Info("first boot: made the unit's key", "device", p.id, "dir", p.dir)
	}
	st, ok, err := identity.Load(p.dir)
	if err != nil {
		return nil, err
	}
	if ok {
		if err := p.adopt(st); err != nil {
			return nil, fmt.Errorf("installed identity: %w: factory-reset the unit (roomctl factory-reset --yes) and enrol it again", err)
		}
	} else {
		p.status = enrol.Status{Phase: enrol.PhaseNeedCode, At: time.Now()}
	}
	return p, nil
}

func (p *provisioning) adopt(st identity.State) error {
	ca, err := identity.ParseCert([]byte(st.CA))
	if err != nil {
		return fmt.Errorf("fleet CA: %w", err)
	}
	cert, err := identity.ParseCert([]byte(st.Certificate))
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if st.DeviceID != p.id {
		return fmt.Errorf("%w (installed for %s, this key is %s)", identity.ErrOtherUnit, st.DeviceID, p.id)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st, p.enrolled, p.ca, p.cert = st, true, ca, cert
	p.status = enrol.Status{Phase: enrol.PhaseEnrolled, Message: "enrolled as " + p.id, At: st.InstalledAt}
	return nil
}

func (p *provisioning) isEnrolled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.enrolled
}

func (p *provisioning) state() identity.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// fleetKeys are the pinned fleet keys enrolment installed.
func (p *provisioning) fleetKeys() ([]ed25519.PublicKey, error) {
	return fleet.ParsePublicKeys([]byte(p.state().FleetKey))
}

// claimCode finds a claim code: the config, then the file on the boot
// partition, then one saved from roomctl enrol.
func (p *provisioning) claimCode() (code, source string) {
	if p.fleet.ClaimCode != "" {
		return p.fleet.ClaimCode, "fleet.claim_code"
	}
	for _, f := range []struct{ path, name string }{
		{p.fleet.ClaimFile, p.fleet.ClaimFile},
		{filepath.Join(p.dir, savedClaimFile), "roomctl enrol"},
	} {
		if f.path == "" {
			continue
		}
		if c := readClaimFile(f.path); c != "" {
			return c, f.name
		}
	}
	return "", ""
}

// readClaimFile reads the first line that is not blank or a # comment.
func readClaimFile(path string) string {
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

// enrol runs enrolment until the fleet approves and the certificate checks
// out, then installs the identity.
func (p *provisioning) enrol(ctx context.Context, version string) error {
	c, err := enrol.NewClient(enrol.ClientOptions{
		Broker: p.fleet.EnrolmentBroker(), CAFile: p.fleet.CAFile, CertFile: p.fleet.EnrolCert, KeyFile: p.fleet.EnrolKey,
		Key: p.key, DeviceID: p.id, Model: p.model, Version: version, FirstRequested: p.firstRequested(),
		Logger: p.log, OnStatus: p.setStatus,
	})
	if err != nil {
		p.setStatus(enrol.Status{Phase: enrol.PhaseRefused, Reason: "config", Message: err.Error(), At: time.Now()})
		return err
	}
	p.mu.Lock()
	p.client = c
	code, src := p.claimCode() // under p.mu: see Enrol
	p.mu.Unlock()
	if code != "" {
		if err := c.SetClaimCode(code); err != nil {
			p.log.Warn("claim code not usable", "source", src, "err", err)
		} else {
			p.log.Info("enrolling with a claim code", "source", src, "device", p.id)
		}
	}
	st, err := c.Run(ctx)
	if err != nil {
		return err
	}
	if err := identity.Install(p.dir, st); err != nil {
		p.setStatus(enrol.Status{Phase: enrol.PhaseRefused, Reason: "install", Message: err.Error(), At: time.Now()})
		return err
	}
	_ = os.Remove(filepath.Join(p.dir, savedClaimFile))
	_ = os.Remove(filepath.Join(p.dir, "first-requested"))
	p.log.Info("enrolled: the unit now uses its own certificate", "device", p.id, "groups", st.Groups)
	return p.adopt(st)
}

// firstRequested is when this unit first asked to enrol, kept across
// restarts so the fleet's list shows how long it has waited.
func (p *provisioning) firstRequested() time.Time {
	path := filepath.Join(p.dir, "first-requested")
	if b, err := os.ReadFile(path); err == nil {
		if t, err := time.Parse(time.RFC3339, strings.TrimSpace(string(b))); err == nil {
			return t
		}
	}
	now := time.Now().UTC()
	_ = atomicfile.Write(path, []byte(now.Format(time.RFC3339)+"\n"), 0o600)
	return now
}

func (p *provisioning) setStatus(s enrol.Status) {
	p.mu.Lock()
	p.status = s
	p.mu.Unlock()
	switch s.Phase {
	case enrol.PhaseRejected, enrol.PhaseRefused:
		p.log.Warn("enrolment", "phase", s.Phase, "reason", s.Reason, "detail", s.Message)
	default:
		p.log.Info("enrolment", "phase", s.Phase, "detail", s.Message)
	}
}

// Enrol takes a claim code from roomctl enrol.
func (p *provisioning) Enrol(code string) error {
	n, err := enrol.NormalizeClaimCode(code)
	if err != nil {
		return err
	}
	// Under p.mu, against enrol(), which starts its client and reads the
	// saved code under it too: a code given just as enrolment starts is
	// either in the file before enrol() reads it or handed to its client,
	// never lost in between (roomctl enrol right after boot).
	p.mu.Lock()
	enrolled, c := p.enrolled, p.client
	if enrolled {
		p.mu.Unlock()
		return fmt.Errorf("this unit is already enrolled as %s: to enrol it again, factory-reset it first (roomctl factory-reset --yes)", p.id)
	}
	if !p.fleet.Enrols() {
		p.mu.Unlock()
		return errors.New("this unit is not set up to enrol: its config needs fleet.broker, fleet.ca_file, fleet.enrol_cert and fleet.enrol_key (the enrolment bundle from fleetctl ca init)")
	}
	err = atomicfile.Write(filepath.Join(p.dir, savedClaimFile), []byte(n+"\n"), 0o600)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("save the claim code: %w", err)
	}
	if c != nil {
		return c.SetClaimCode(n)
	}
	return nil
}

// identityStatus is the identity part of roomctl status. It names no
// secret: not the claim code, not the key.
type identityStatus struct {
	Device    string        `json:"device"`
	Enrolment *enrol.Status `json:"enrolment,omitempty"`
	Serial    string        `json:"certificate_serial,omitempty"`
	NotAfter  time.Time     `json:"certificate_not_after,omitzero"`
	Renewing  bool          `json:"renewing,omitempty"`
	RenewErr  string        `json:"last_renewal_error,omitempty"`
	Revoked   bool          `json:"revoked,omitempty"`
}

func (p *provisioning) statusView() *identityStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.status
	v := &identityStatus{Device: p.id, Enrolment: &st, Renewing: p.renewCSR != "", RenewErr: p.renewErr, Revoked: p.revoked}
	if p.cert != nil {
		v.Serial, v.NotAfter = p.cert.SerialNumber.Text(16), p.cert.NotAfter
	}
	return v
}

// Report implements agent.Identity.
func (p *provisioning) Report() *fleet.IdentityReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cert == nil {
		return nil
	}
	return &fleet.IdentityReport{Serial: p.cert.SerialNumber.Text(16), NotAfter: p.cert.NotAfter,
		RenewalCSR: p.renewCSR, LastRenewalError: p.renewErr}
}

// InstallCertificate implements agent.Identity: a renewed certificate
// must pass the same checks as the first one. The MQTT link reads it at its
// next connect; the running connection and any call are not touched.
func (p *provisioning) InstallCertificate(certPEM string) error {
	p.mu.Lock()
	ca, st := p.ca, p.st
	p.mu.Unlock()
	if ca == nil {
		return errors.New("this unit is not enrolled yet")
	}
	cert, err := identity.Check([]byte(certPEM), ca, p.id, p.key.Signer().Public(), time.Now())
	if err != nil {
		p.mu.Lock()
		p.renewErr = enrol.ReasonFor(err) + ": " + err.Error()
		p.mu.Unlock()
		return fmt.Errorf("renewed certificate refused: %w", err)
	}
	st.Certificate = certPEM
	st.InstalledAt = time.Now().UTC()
	if err := identity.Install(p.dir, st); err != nil {
		return fmt.Errorf("renewed certificate: %w", err)
	}
	p.mu.Lock()
	p.st, p.cert, p.renewCSR, p.renewErr = st, cert, "", ""
	p.mu.Unlock()
	p.log.Info("certificate renewed", "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// watch asks for renewal when the certificate is due and clears the
// revoked fault once the broker takes the unit again.
func (p *provisioning) watch(ctx context.Context, connected func() bool, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		p.checkRenewal()
		p.mu.Lock()
		clear := p.revoked && connected()
		if clear {
			p.revoked = false
		}
		fault := p.fault
		p.mu.Unlock()
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

func (p *provisioning) checkRenewal() {
	p.mu.Lock()
	due := p.cert != nil && p.renewCSR == "" && time.Until(p.cert.NotAfter) < p.renewBefore
	refresh := p.refresh
	p.mu.Unlock()
	if !due {
		return
	}
	csr, err := identity.NewCSR(p.key, p.id)
	if err != nil {
		p.log.Warn("renewal request not made", "err", err)
		return
	}
	p.mu.Lock()
	p.renewCSR = string(csr)
	p.mu.Unlock()
	p.log.Info("certificate due for renewal: asking the fleet", "not_after", p.cert.NotAfter.UTC().Format(time.RFC3339))
	if refresh != nil {
		refresh()
	}
}

// onConnectError turns the broker refusing a revoked certificate into the
// unit's fault (LED fault pattern, roomctl status).
func (p *provisioning) onConnectError(err error) {
	if !link.Revoked(err) {
		return
	}
	p.mu.Lock()
	already := p.revoked
	p.revoked = true
	fault := p.fault
	p.mu.Unlock()
	if !already {
		p.log.Error("the fleet revoked this unit's certificate: it cannot reach its fleet; ask the fleet manager, or factory-reset and enrol it again", "device", p.id)
		if fault != nil {
			fault("the fleet revoked this unit's certificate: ask the fleet manager, or factory-reset and enrol again", false)
		}
	}
}

// wipeAll removes the identity and the fleet state. The key goes first
// (identity.Wipe), so a reset cut short cannot leave a unit that still
// authenticates as itself.
func (p *provisioning) wipeAll() error {
	var errs []error
	if err := identity.Wipe(p.dir); err != nil {
		errs = append(errs, err)
	}
	for _, d := range p.wipe {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("factory reset: %w", err))
		}
	}
	return errors.Join(errs...)
}

// claimPlaceholder is what the boot partition's claim file holds once the
// code is taken (image/claim-placeholder.txt's comment).
const claimPlaceholder = `# Konsult enrolment claim code.
#
# Your fleet manager gives you a claim code for this room unit. Write it on
# the line below this comment (one line, nothing else), save this file, put
# the SD card back in the unit and power it on. The unit enrols on its first
# boot and removes the code from this file.
`

// takeClaimCode moves a claim code from the boot partition (root-only on
// the image) into the identity directory, owned by roomd's user, and blanks
// it on the boot partition so the SD card no longer carries it.
func takeClaimCode(src, idDir string, stdout io.Writer) error {
	code := readClaimFile(src)
	if code == "" {
		return nil // nothing written there: the unit is enrolled or enrols another way
	}
	n, err := enrol.NormalizeClaimCode(code)
	if err != nil {
		return fmt.Errorf("take-claim: %s: %w", src, err)
	}
	if err := os.MkdirAll(idDir, 0o700); err != nil {
		return fmt.Errorf("take-claim: %w", err)
	}
	dst := filepath.Join(idDir, savedClaimFile)
	if err := atomicfile.Write(dst, []byte(n+"\n"), 0o600); err != nil {
		return fmt.Errorf("take-claim: %w", err)
	}
	// roomd runs as the owner of its state directory (/var/lib/konsult).
	if fi, err := os.Stat(filepath.Dir(idDir)); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			for _, p := range []string{idDir, dst} {
				if err := os.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
					return fmt.Errorf("take-claim: %w", err)
				}
			}
		}
	}
	if err := atomicfile.Write(src, []byte(claimPlaceholder), 0o600); err != nil {
		return fmt.Errorf("take-claim: blank %s: %w", src, err)
	}
	_, err = fmt.Fprintf(stdout, "claim code moved from %s to %s\n", src, dst)
	return err
}
