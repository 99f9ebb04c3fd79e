package agent

import (
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
)

// The unit's audit log (provisioning/audit) is written by the agent's
// recorder (recorder.go; with the fleet off, by Standalone's), from the
// same facts the fleet events come from, and shipped from here to the
// fleet on the unit's audit topic: what the agent decides about configs
// and commands, what the appliance reports (calls, privacy, mute, faults,
// the factory reset), and the identity's enrolment, renewal and
// revocation.
//
// Shipping: the log is the queue of record. The agent hands every record
// after the last one it handed over (sentFile) to the link, which keeps
// it on disk until the broker has it. When the link's queue is full the
// rest wait in the log and go at the next append or connect; the log's own
// bound (retention, size) is the policy when the broker stays away.

// sentFile, in the log's directory, is "<chain> <seq>": the last record
// handed to the link.
const sentFile = "sent"

// auditState is owned by the goroutine running Run, apart from what the
// mutex guards.
type auditState struct {
	chain   string
	sent    uint64
	serial  string // the certificate serial last recorded
	revoked bool
}

func (a *Agent) auditDir() string { return filepath.Join(a.opts.StateDir, "audit") }

// loadAudit reads what was shipped, and the certificate serial last
// recorded.
func (a *Agent) loadAudit() {
	if a.opts.Audit == nil {
		return
	}
	b, err := os.ReadFile(filepath.Join(a.auditDir(), sentFile))
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 && f[0] == a.opts.Audit.Head().Chain {
			a.aud.chain = f[0]
			a.aud.sent, _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	if a.aud.chain == "" {
		a.aud.chain = a.opts.Audit.Head().Chain
	}
	for _, r := range a.opts.Audit.Records() {
		if s := r.Fields["serial"]; s != "" && (r.Kind == audit.KindEnrolled || r.Kind == audit.KindRenewed) {
			a.aud.serial = s
		}
	}
}

// auditIdentity records enrolment (the first certificate this chain sees),
// renewal (a new serial) and revocation (the broker refusing the
// certificate as revoked).
func (a *Agent) auditIdentity(connErr error) {
	if a.opts.Audit == nil {
		return
	}
	if a.opts.Identity != nil {
		if rep := a.opts.Identity.Report(); rep != nil && rep.Serial != "" && rep.Serial != a.aud.serial {
			kind := audit.KindRenewed
			if a.aud.serial == "" {
				kind = audit.KindEnrolled
			}
			a.aud.serial = rep.Serial
			a.rec.record(kind, map[string]string{"serial": rep.Serial, "not_after": rep.NotAfter.UTC().Format("2006-01-02T15:04:05Z")})
		}
	}
	if link.Revoked(connErr) && !a.aud.revoked {
		a.aud.revoked = true
		a.rec.record(audit.KindRevoked, nil)
	}
}

// shipAudit hands the records not yet handed over to the link, and
// refreshes the reported document's high-water mark.
func (a *Agent) shipAudit() {
	l := a.opts.Audit
	if l == nil {
		return
	}
	head := l.Head()
	if head.Chain != a.aud.chain {
		a.aud.chain, a.aud.sent = head.Chain, 0
	}
	before := a.aud.sent
	for _, r := range l.After(a.aud.sent) {
		if err := a.link.PublishAudit(r.Line()); err != nil {
			if !errors.Is(err, link.ErrQueueFull) && !errors.Is(err, link.ErrClosed) {
				a.log.Warn("audit record not queued; it stays in the log", "seq", r.Seq, "err", err)
			}
			break
		}
		a.aud.sent = r.Seq
	}
	if a.aud.sent != before {
		line := fmt.Sprintf("%s %d\n", a.aud.chain, a.aud.sent)
		if err := atomicfile.Write(filepath.Join(a.auditDir(), sentFile), []byte(line), 0o600); err != nil {
			a.log.Warn("audit: where shipping stands was not saved; records may go twice", "err", err)
		}
		a.mu.Lock()
		a.auditSent = a.aud.sent
		a.mu.Unlock()
		a.publishReported()
	}
}

// auditReport is the reported document's audit part.
func (a *Agent) auditReport() *fleet.AuditReport {
	if a.opts.Audit == nil {
		return nil
	}
	h := a.opts.Audit.Head()
	a.mu.Lock()
	sent := a.auditSent
	a.mu.Unlock()
	return &fleet.AuditReport{Chain: h.Chain, Sent: sent, Head: h.Seq, HeadHash: h.Hash()}
}

// OpenAudit opens the unit's audit log in <stateDir>/audit with the
// retention of c's [audit], signed with signer (the enrolled unit's key),
// or, for a unit given its certificate by hand or the --sim demo, with the
// unit's own key in identityDir (made there on first use, as enrolment
// would).
func OpenAudit(stateDir, identityDir string, signer crypto.Signer, c *config.Config) (*audit.Log, error) {
	if signer == nil {
		k, _, err := identity.LoadOrCreateKey(identityDir)
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		signer = k.Signer()
	}
	return audit.Open(audit.Options{Dir: filepath.Join(stateDir, "audit"), Signer: signer,
		Retention: c.Audit.Retention.Duration, MaxBytes: c.Audit.MaxBytes,
		ResetMark: filepath.Join(filepath.Dir(identityDir), audit.ResetFile)})
}

// RecordUpdate is the update code's hook into the audit log: an update
// installed (installed true) or rolled back, with the version, the slot
// and why. Safe from any goroutine; a no-op without an audit log.
func (a *Agent) RecordUpdate(installed bool, version, slot, reason string) {
	kind := audit.KindUpdateRolledBack
	if installed {
		kind = audit.KindUpdateInstalled
	}
	a.rec.record(kind, map[string]string{"version": version, "slot": slot, "reason": reason})
}
