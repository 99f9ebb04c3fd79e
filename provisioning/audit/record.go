// Package audit is the unit's tamper-evident audit log: an append-only,
// hash-chained list of security-relevant events, each record signed with
// the unit's own key (the key of its fleet certificate, provisioning/
// identity), kept under the unit's state directory and bounded in age and
// size, and its verification (Verify), which the fleet side runs on what it
// holds.
//
// A record holds no personal data: meetings by pseudonymous id only, no
// names, no URLs, no addresses of far ends. Fields are checked on the way
// in (Clean).
//
// The chain: record n carries Prev, the SHA-256 of record n-1's canonical
// line (the whole record, signature included), and a signature over its own
// canonical line without the signature. The first record of a chain is a
// KindChainStarted; it carries the unit's public key, whose SHA-256 is the
// unit's device id, so nobody can start a chain for a unit without its key.
// Pruning drops the oldest records and appends a KindCheckpoint that names
// the last dropped record's hash and carries the key again: what remains
// still verifies.
package audit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Record kinds. The strings are stable: the fleet stores them.
const (
	// KindChainStarted opens a chain. Fields: reason (first_start,
	// factory_reset, key_changed, log_unreadable), key (the unit's public
	// key, base64 PKIX DER), device (the device id the key makes).
	KindChainStarted = "chain_started"
	// KindCheckpoint follows a prune. Fields: pruned_through (seq),
	// pruned_hash (that record's hash), pruned (how many went in this
	// prune), policy (age or size), key.
	KindCheckpoint = "checkpoint"
	KindStarted    = "roomd_started" // version
	KindCallJoined = "call_joined"   // meeting (pseudonymous), e2ee (true, false or unknown)
	KindCallLeft   = "call_left"     // meeting, reason
	KindPrivacyOn  = "privacy_on"
	KindPrivacyOff = "privacy_off"
	KindMuteOn     = "mute_on"
	KindMuteOff    = "mute_off"
	// KindConfigApplied, KindConfigRejected, KindConfigRolledBack: target,
	// version, generation; reason for the latter two.
	KindConfigApplied    = "config_applied"
	KindConfigRejected   = "config_rejected"
	KindConfigRolledBack = "config_rolled_back"
	// KindCommand: name, result (done, refused), reason.
	KindCommand = "command"
	// KindEnrolled, KindRenewed: serial, not_after.
	KindEnrolled = "enrolled"
	KindRenewed  = "renewed"
	// KindRevoked: the broker refused the unit's certificate as revoked.
	KindRevoked = "revoked"
	// KindFactoryReset: a factory reset was asked for (the last record of
	// a chain; the next chain starts with reason factory_reset).
	KindFactoryReset = "factory_reset"
	KindFault        = "fault"         // source, reason
	KindFaultCleared = "fault_cleared" // source
	// KindUpdateInstalled and KindUpdateRolledBack: version, slot, reason.
	// The update code records them through Log.Append.
	KindUpdateInstalled  = "update_installed"
	KindUpdateRolledBack = "update_rolled_back"
)

// Record is one entry of the log, one JSON line on disk and one MQTT
// message to the fleet.
type Record struct {
	// Chain is the random id of this chain (a new one after a factory
	// reset).
	Chain string `json:"chain"`
	// Seq counts from 1 within a chain, without gaps.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`
	// Fields are the event's details, never personal data.
	Fields map[string]string `json:"fields,omitempty"`
	// Prev is the hex SHA-256 of the previous record's canonical line
	// (empty for seq 1).
	Prev string `json:"prev"`
	// Sig is the unit key's ECDSA signature (ASN.1, base64) over the
	// record's canonical line with Sig empty.
	Sig string `json:"sig,omitempty"`
}

const domain = "konsult-audit-v1\n"

// Line is the record's canonical line: its JSON as encoding/json writes
// it (fields in struct order, map keys sorted), no newline.
func (r Record) Line() []byte {
	r.Time = r.Time.UTC()
	b, _ := json.Marshal(r) // cannot fail: strings, numbers, a time
	return b
}

// Hash is the hex SHA-256 of the record's canonical line, which the next
// record's Prev names.
func (r Record) Hash() string {
	s := sha256.Sum256(r.Line())
	return hex.EncodeToString(s[:])
}

func (r Record) signed() []byte {
	r.Sig = ""
	s := sha256.Sum256(append([]byte(domain), r.Line()...))
	return s[:]
}

// sign fills in Sig with k.
func (r *Record) sign(k crypto.Signer) error {
	sig, err := k.Sign(rand.Reader, r.signed(), crypto.SHA256)
	if err != nil {
		return fmt.Errorf("audit: sign record %d: %w", r.Seq, err)
	}
	r.Sig = base64.StdEncoding.EncodeToString(sig)
	return nil
}

// VerifySig checks the record's signature with pub.
func (r Record) VerifySig(pub *ecdsa.PublicKey) bool {
	sig, err := base64.StdEncoding.DecodeString(r.Sig)
	if err != nil || pub == nil {
		return false
	}
	return ecdsa.VerifyASN1(pub, r.signed(), sig)
}

// EncodeKey is pub as a record's key field.
func EncodeKey(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("audit: key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(der), nil
}

// DecodeKey reads a record's key field.
func DecodeKey(s string) (*ecdsa.PublicKey, error) {
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("audit: key is not base64")
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("audit: key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("audit: key is a %T, not ECDSA", k)
	}
	return ek, nil
}

// Parse reads one record line.
func Parse(line []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return r, fmt.Errorf("audit: record: %w", err)
	}
	return r, nil
}

// MaxField bounds a field value: reasons are one line, not documents.
const MaxField = 200

var (
	// A URL's userinfo or query (tokens ride in both).
	urlRe = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"']+`)
	// Long runs of token-like characters: JWTs, keys, secrets.
	tokenRe = regexp.MustCompile(`[A-Za-z0-9_\-+/=.]{40,}`)
	// IPv4 addresses (a far end's, a TURN server's).
	ipRe = regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(:\d+)?\b`)
)

// Clean makes a field value fit for the log: URLs are cut to their host,
// token-like strings and IPv4 addresses are replaced, and the value is cut
// to MaxField bytes on one line. Keys the log itself writes (key,
// pruned_hash) do not pass through here.
func Clean(v string) string {
	v = strings.Join(strings.Fields(v), " ")
	v = urlRe.ReplaceAllStringFunc(v, func(s string) string {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return "[url]"
		}
		return u.Scheme + "://" + u.Hostname()
	})
	v = tokenRe.ReplaceAllString(v, "[redacted]")
	v = ipRe.ReplaceAllString(v, "[address]")
	if len(v) > MaxField {
		v = v[:MaxField]
	}
	return v
}
