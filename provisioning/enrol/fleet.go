package enrol

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
)

// Pending is a request as the fleet manager sees it.
type Pending struct {
	Request
	// ClaimCode is the fleet's code the proof matches ("" if none).
	ClaimCode string
	// Problem (a Reason*) and Message say why it cannot be approved.
	Problem, Message string
}

// Evaluate checks a request against the ledger: a well-formed CSR for the
// id it claims, and a claim code the fleet handed out, nobody used, and
// still valid.
func Evaluate(req Request, l *ca.Ledger) Pending {
	p := Pending{Request: req}
	fail := func(reason, msg string) Pending { p.Problem, p.Message = reason, msg; return p }
	csr, err := ParseCSR(req.CSR)
	if err != nil {
		return fail(ReasonBadRequest, err.Error())
	}
	id, err := identity.DeviceID(csr.PublicKey)
	if err != nil || id != req.DeviceID || csr.Subject.CommonName != id {
		return fail(ReasonBadRequest, "the device id does not belong to the key in the certificate request")
	}
	if u := l.Units[id]; u != nil && u.Status == "revoked" {
		return fail(ReasonRejected, "this unit was revoked; a revoked unit must be factory-reset to enrol again")
	}
	for _, c := range l.ClaimCodes {
		if ClaimProof(c.Code, id, req.CSR) != req.ClaimProof {
			continue
		}
		p.ClaimCode = c.Code
		if c.UsedBy != "" && c.UsedBy != id {
			return fail(ReasonUsedCode, fmt.Sprintf("claim code %s was already used by %s: give the installer a new one (fleetctl enrol code)", c.Code, c.UsedBy))
		}
		if c.UsedBy == "" && !c.Expires.IsZero() && time.Now().After(c.Expires) {
			return fail(ReasonExpiredCode, fmt.Sprintf("claim code %s expired on %s: give the installer a new one (fleetctl enrol code)", c.Code, c.Expires.UTC().Format("2006-01-02 15:04 MST")))
		}
		return p
	}
	return fail(ReasonWrongCode, "the claim code is not one this fleet handed out: check it with the installer (fleetctl enrol codes lists them)")
}

// ErrNotApprovable: Approve on a request with a problem.
var ErrNotApprovable = errors.New("the request cannot be approved")

// Approve issues the unit's certificate and returns the signed decision to
// publish on its response topic. The claim code is marked used and the unit
// recorded, under the CA's lock.
func Approve(c *ca.CA, req Request, groups []string, broker, fleetKey string) ([]byte, error) {
	for _, g := range groups {
		if err := link.ValidName(g); err != nil {
			return nil, fmt.Errorf("approve: group: %w", err)
		}
	}
	var d Decision
	err := c.Update(func(l *ca.Ledger) error {
		p := Evaluate(req, l)
		if p.Problem != "" {
			return fmt.Errorf("%w: %s (reject it with fleetctl enrol reject %s)", ErrNotApprovable, p.Message, req.DeviceID)
		}
		csr, _ := ParseCSR(req.CSR)
		cert, err := c.Issue(l, ca.KindUnit, req.DeviceID, csr.PublicKey, nil, ca.UnitLifetime)
		if err != nil {
			return err
		}
		now := time.Now()
		for i := range l.ClaimCodes {
			if l.ClaimCodes[i].Code == p.ClaimCode && l.ClaimCodes[i].UsedBy == "" {
				l.ClaimCodes[i].UsedBy, l.ClaimCodes[i].UsedAt = req.DeviceID, now
			}
		}
		kh, _ := ca.KeyHash(csr.PublicKey)
		l.Units[req.DeviceID] = &ca.Unit{ID: req.DeviceID, Status: "approved", Groups: slices.Clone(groups), Model: req.Model,
			ClaimCode: p.ClaimCode, KeyHash: kh, FirstSeen: req.FirstRequested, Decided: now}
		d = Decision{DeviceID: req.DeviceID, Status: Approved, Answers: req.ClaimProof, Certificate: string(cert),
			CA: string(c.CertPEM()), FleetKey: fleetKey, Broker: broker, Groups: groups, At: now}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return SignDecision(c.Signer(), d)
}

// Reject records the refusal and returns the signed decision to publish.
// reason is a Reason*; message is shown on the unit.
func Reject(c *ca.CA, req Request, reason, message string) ([]byte, error) {
	now := time.Now()
	err := c.Update(func(l *ca.Ledger) error {
		if u := l.Units[req.DeviceID]; u != nil && u.Status == "approved" {
			return fmt.Errorf("reject: %s is enrolled; revoke it instead (fleetctl revoke %s)", req.DeviceID, req.DeviceID)
		}
		l.Units[req.DeviceID] = &ca.Unit{ID: req.DeviceID, Status: "rejected", Model: req.Model, FirstSeen: req.FirstRequested, Decided: now, Reason: reason}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return SignDecision(c.Signer(), Decision{DeviceID: req.DeviceID, Status: Rejected, Answers: req.ClaimProof, Reason: reason, Message: message, At: now})
}

// Renew signs a new certificate for an enrolled unit's renewal request. The
// key must be the one it enrolled with (its device id is derived from it).
func Renew(c *ca.CA, deviceID, csrPEM string) ([]byte, error) {
	var cert []byte
	err := c.Update(func(l *ca.Ledger) error {
		u := l.Units[deviceID]
		if u == nil || u.Status != "approved" {
			st := "unknown"
			if u != nil {
				st = u.Status
			}
			return fmt.Errorf("renew %s: the unit is %s, not enrolled", deviceID, st)
		}
		csr, err := ParseCSR(csrPEM)
		if err != nil {
			return fmt.Errorf("renew %s: %w", deviceID, err)
		}
		kh, err := ca.KeyHash(csr.PublicKey)
		if err != nil || kh != u.KeyHash || csr.Subject.CommonName != deviceID {
			return fmt.Errorf("renew %s: the request is not for the key the unit enrolled with", deviceID)
		}
		cert, err = c.Issue(l, ca.KindUnit, deviceID, csr.PublicKey, nil, ca.UnitLifetime)
		return err
	})
	return cert, err
}
