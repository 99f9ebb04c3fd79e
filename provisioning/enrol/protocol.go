// Package enrol is how a new room unit joins its fleet: the unit publishes
// a request (its certificate request, device id, model, software version and
// a proof that it holds a claim code the fleet manager handed out) with the
// fleet's shared enrolment credential; the fleet manager approves or rejects
// it (fleetctl enrol); the unit checks the signed decision against the fleet
// CA it was shipped with, installs its own certificate and never uses the
// enrolment credential again.
//
// Unit is the unit's side over its lifetime: its key and installed
// identity, the enrolment run, renewal, revocation (a fault the caller
// decides about) and the factory reset's wipe. It is here, not in identity,
// because it drives this package's Client; identity stays the files.
//
// Topics (link.Topics): <prefix>/enrol/<id>/request (unit → fleet, retained)
// and <prefix>/enrol/<id>/response (fleet → unit, retained, signed by the
// fleet CA's key). Nothing on them is secret: the claim code travels only as
// an HMAC bound to the unit's key, and certificates are public.
package enrol

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Request is a unit's enrolment request.
type Request struct {
	DeviceID string `json:"device_id"`
	CSR      string `json:"csr"` // PEM
	Model    string `json:"model,omitempty"`
	Version  string `json:"version,omitempty"`
	// ClaimProof is ClaimProof(code, DeviceID, CSR): the code never
	// travels in clear.
	ClaimProof string `json:"claim_proof"`
	// FirstRequested is when this unit first asked (stable across
	// re-publishes); SentAt when this copy was sent.
	FirstRequested time.Time `json:"first_requested"`
	SentAt         time.Time `json:"sent_at"`
	// Refusal is set when the unit refused the fleet's last approval (a
	// certificate for another unit, or from another CA), so the fleet
	// manager sees why it is still pending.
	Refusal *Refusal `json:"refusal,omitempty"`
}

// Refusal is a reason a unit gives for not taking a decision.
type Refusal struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Decision statuses.
const (
	Approved = "approved"
	Rejected = "rejected"
)

// Rejection reasons (Decision.Reason).
const (
	ReasonWrongCode   = "wrong_claim_code"
	ReasonUsedCode    = "claim_code_used"
	ReasonExpiredCode = "claim_code_expired"
	ReasonRejected    = "rejected"
	ReasonBadRequest  = "bad_request"
)

// Decision is the fleet's answer to a request.
type Decision struct {
	DeviceID string `json:"device_id"`
	Status   string `json:"status"`
	// Answers is the ClaimProof of the request decided on: a unit ignores
	// a decision on an earlier request (another claim code).
	Answers string `json:"answers"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Approved only:
	Certificate string    `json:"certificate,omitempty"` // PEM
	CA          string    `json:"ca,omitempty"`          // PEM
	FleetKey    string    `json:"fleet_key,omitempty"`   // fleet.pub text
	Broker      string    `json:"broker,omitempty"`
	Groups      []string  `json:"groups,omitempty"`
	At          time.Time `json:"at"`
}

// signed is a Decision on the wire: its JSON and an ECDSA signature of it
// by the fleet CA's key.
type signed struct {
	Decision  []byte `json:"decision"`
	Signature []byte `json:"signature"`
}

// SignDecision signs d with the fleet CA's key.
func SignDecision(key crypto.Signer, d Decision) ([]byte, error) {
	body, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("sign decision: %w", err)
	}
	sum := sha256.Sum256(append([]byte("konsult-enrol-decision-v1\n"), body...))
	sig, err := key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign decision: %w", err)
	}
	return json.Marshal(signed{Decision: body, Signature: sig})
}

// ErrNotFromFleetCA: a decision whose signature does not verify with the
// CA the unit trusts; the fleet's CA changed, or someone else wrote it.
var ErrNotFromFleetCA = errors.New("the decision is not signed by the fleet CA this unit trusts (the CA changed?)")

// VerifyDecision checks b's signature with ca's key and returns the
// decision.
func VerifyDecision(b []byte, ca *x509.Certificate) (Decision, error) {
	var s signed
	if err := json.Unmarshal(b, &s); err != nil {
		return Decision{}, fmt.Errorf("decision: malformed: %w", err)
	}
	pub, ok := ca.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return Decision{}, fmt.Errorf("decision: the fleet CA key is a %T, not ECDSA", ca.PublicKey)
	}
	sum := sha256.Sum256(append([]byte("konsult-enrol-decision-v1\n"), s.Decision...))
	if !ecdsa.VerifyASN1(pub, sum[:], s.Signature) {
		return Decision{}, ErrNotFromFleetCA
	}
	var d Decision
	if err := json.Unmarshal(s.Decision, &d); err != nil {
		return Decision{}, fmt.Errorf("decision: malformed: %w", err)
	}
	return d, nil
}

// Claim codes are 16 characters of Crockford's base32 (80 bits), written
// in groups of four: easy to read out over the phone, impossible to guess.
const codeAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewClaimCode makes a claim code.
func NewClaimCode() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	var sb strings.Builder
	for i, x := range b {
		if i > 0 && i%4 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(codeAlphabet[int(x)%32])
	}
	return sb.String()
}

// NormalizeClaimCode reads a code as typed: any case, with or without
// dashes or spaces, O for 0 and I/L for 1 (Crockford). It fails on
// anything else, with a message for the installer.
func NormalizeClaimCode(s string) (string, error) {
	var sb strings.Builder
	for _, r := range strings.ToUpper(strings.TrimSpace(s)) {
		switch {
		case r == '-' || r == ' ':
			continue
		case r == 'O':
			r = '0'
		case r == 'I' || r == 'L':
			r = '1'
		}
		if !strings.ContainsRune(codeAlphabet, r) {
			return "", fmt.Errorf("claim code has %q, which is not in a Konsult claim code: type it as printed, e.g. 7K2M-QX9P-4RTV-HB3D", r)
		}
		sb.WriteRune(r)
	}
	if sb.Len() != 16 {
		return "", fmt.Errorf("claim code has %d characters, not 16: type it as printed, e.g. 7K2M-QX9P-4RTV-HB3D", sb.Len())
	}
	n := sb.String()
	return n[0:4] + "-" + n[4:8] + "-" + n[8:12] + "-" + n[12:16], nil
}

// ClaimProof is HMAC-SHA256 keyed with the normalized claim code over the
// device id and the CSR, so the proof cannot be replayed for another key.
func ClaimProof(code, deviceID, csrPEM string) string {
	m := hmac.New(sha256.New, []byte(code))
	m.Write([]byte("konsult-claim-v1\n" + deviceID + "\n"))
	csr := sha256.Sum256([]byte(csrPEM))
	m.Write(csr[:])
	return hex.EncodeToString(m.Sum(nil))
}

// ParseCSR reads a request's CSR and checks its signature.
func ParseCSR(csrPEM string) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode([]byte(csrPEM))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("no PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return csr, nil
}
