package fleet

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultSkew is the clock difference tolerated between the signer and the
// unit, on both issued_at (future) and expires_at (past).
const DefaultSkew = 2 * time.Minute

// Identity is who the unit is for targeting and merging.
type Identity struct {
	Device string
	// Groups the unit belongs to, in merge order: a later group's config
	// wins over an earlier one's.
	Groups []string
}

// Validate checks the device id and group names.
func (id Identity) Validate() error {
	if err := validName("device id", id.Device); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, g := range id.Groups {
		if err := validName("group name", g); err != nil {
			return err
		}
		if seen[g] {
			return fmt.Errorf("group %q is listed twice: list each group once, in merge order", g)
		}
		seen[g] = true
	}
	return nil
}

func (id Identity) addresses(t Target) bool {
	if t.Device != "" {
		return t.Device == id.Device
	}
	for _, g := range id.Groups {
		if g == t.Group {
			return true
		}
	}
	return false
}

// Verifier checks envelopes against the pinned fleet key(s) and the unit's
// identity. It is safe for concurrent use once built; do not change Now or
// Skew after that.
type Verifier struct {
	id   Identity
	keys map[string]ed25519.PublicKey // by KeyID
	// sched are the schedule keys (SetScheduleKeys): they sign
	// consultation schedules and nothing else.
	sched atomic.Pointer[map[string]ed25519.PublicKey]

	// Now is the unit's clock; tests replace it.
	Now func() time.Time
	// Skew is the tolerated clock difference; DefaultSkew unless changed.
	Skew time.Duration
}

// NewVerifier returns a Verifier for the unit id that trusts keys.
func NewVerifier(id Identity, keys ...ed25519.PublicKey) (*Verifier, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("new verifier: %w", err)
	}
	if len(keys) == 0 {
		return nil, errors.New("new verifier: no fleet public key: install fleet.pub at enrolment")
	}
	v := &Verifier{id: id, keys: map[string]ed25519.PublicKey{}, Now: time.Now, Skew: DefaultSkew}
	for _, k := range keys {
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("new verifier: public key is %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		v.keys[KeyID(k)] = k
	}
	return v, nil
}

// Config is a config that passed every check.
type Config struct {
	ConfigPayload
	KeyID string
	// Envelope is the envelope exactly as received, to store alongside the
	// applied config so the unit can re-merge and re-verify it later.
	Envelope []byte
}

// VerifyConfig checks a config envelope and returns its payload, or an error
// carrying the first failed check's Reason, checked in this order: malformed,
// unknown_key, bad_signature, wrong_kind, malformed (payload fields),
// wrong_target, expired / not_yet_valid, stale_version, schema.
//
// applied maps Target.Key() to the version applied for that target (absent
// means none); a config must be above it. validate is roomd's strict config
// decoder run on the config's TOML (nil skips it); its error message is
// included with every string value of the config cut out of it.
//
// On error nothing of the config may be applied: the whole config is refused.
func (v *Verifier) VerifyConfig(envelope []byte, applied map[string]uint64, validate func(toml []byte) error) (*Config, error) {
	env, p, err := v.open(envelope, DomainConfig, KindConfig)
	if err != nil {
		return nil, fmt.Errorf("verify config: %w", err)
	}
	var c ConfigPayload
	if err := decodeStrict(p, &c); err != nil {
		return nil, fmt.Errorf("verify config: %w", newError(ReasonMalformed, "payload: %s: sign it with fleetctl sign", err))
	}
	if err := checkConfigFields(c); err != nil {
		return nil, fmt.Errorf("verify config: %w", newError(ReasonMalformed, "payload: %s: sign it with fleetctl sign", err))
	}
	if err := v.checkAddressTime(c.Target, c.IssuedAt, c.ExpiresAt); err != nil {
		return nil, fmt.Errorf("verify config: %w", err)
	}
	if have := applied[c.Target.Key()]; c.Version <= have {
		return nil, fmt.Errorf("verify config: %w", newError(ReasonStaleVersion,
			"version %d for %s is not above the applied version %d: sign the change with --version %d or higher",
			c.Version, c.Target, have, have+1))
	}
	if _, err := ParseTOML([]byte(c.Config)); err != nil {
		return nil, fmt.Errorf("verify config: %w", newError(ReasonSchema, "%s: fix the file and sign a new version", err))
	}
	if validate != nil {
		if err := validate([]byte(c.Config)); err != nil {
			msg := RedactValues(err.Error(), []byte(c.Config))
			return nil, fmt.Errorf("verify config: %w", newError(ReasonSchema,
				"config refused by the unit's schema: %s: fix it and sign a new version", msg))
		}
	}
	return &Config{ConfigPayload: c, KeyID: env.KeyID, Envelope: append([]byte(nil), envelope...)}, nil
}

// Command is a command that passed every check, including the replay guard.
type Command struct {
	CommandPayload
	Parsed CommandArgs
	KeyID  string
}

// VerifyCommand checks a command envelope like VerifyConfig (without
// versions), validates its name and arguments (schema), and finally records
// its nonce in nonces, refusing one already seen (replayed). The nonce is
// recorded, and persisted, before VerifyCommand returns: run the command only
// after it returns without error.
func (v *Verifier) VerifyCommand(envelope []byte, nonces *NonceStore) (*Command, error) {
	env, p, err := v.open(envelope, DomainCommand, KindCommand)
	if err != nil {
		return nil, fmt.Errorf("verify command: %w", err)
	}
	var c CommandPayload
	if err := decodeStrict(p, &c); err != nil {
		return nil, fmt.Errorf("verify command: %w", newError(ReasonMalformed, "payload: %s: sign it with fleetctl sign-command", err))
	}
	if err := checkCommandFields(c); err != nil {
		return nil, fmt.Errorf("verify command: %w", newError(ReasonMalformed, "payload: %s: sign it with fleetctl sign-command", err))
	}
	if err := v.checkAddressTime(c.Target, c.IssuedAt, c.ExpiresAt); err != nil {
		return nil, fmt.Errorf("verify command: %w", err)
	}
	args, err := ValidateCommand(c.Name, c.Args)
	if err != nil {
		return nil, fmt.Errorf("verify command: %w", newError(ReasonSchema, "%s", err))
	}
	if err := nonces.Record(c.Nonce, c.ExpiresAt, v.Now()); err != nil {
		return nil, fmt.Errorf("verify command: %w", err)
	}
	return &Command{CommandPayload: c, Parsed: args, KeyID: env.KeyID}, nil
}

// open runs the checks shared by configs and commands up to the payload's
// kind and returns the signed payload bytes.
func (v *Verifier) open(envelope []byte, d Domain, kind string) (Envelope, []byte, error) {
	env, err := ParseEnvelope(envelope)
	if err != nil {
		return env, nil, err
	}
	pub, ok := v.keys[env.KeyID]
	if !ok {
		if _, sk := v.scheduleKeys()[env.KeyID]; sk {
			return env, nil, newError(ReasonWrongRole, "signed by schedule key %s: a schedule key (fleetd's) signs consultation schedules only, never a %s: sign it with the fleet key",
				env.KeyID, kind)
		}
		return env, nil, newError(ReasonUnknownKey, "signed by key %s but this unit trusts %s: sign with the fleet's key, or if the fleet key was rotated install the new fleet.pub on the unit",
			env.KeyID, strings.Join(sortedIDs(v.keys), ", "))
	}
	return openUnder(env, pub, d, kind)
}

// openUnder checks env's signature by pub under domain d and its payload's
// kind.
func openUnder(env Envelope, pub ed25519.PublicKey, d Domain, kind string) (Envelope, []byte, error) {
	if !env.Verify(pub, d) {
		return env, nil, newError(ReasonBadSignature, "signature by key %s does not match the payload: it was altered after signing or is not a %s; publish the output of fleetctl unchanged",
			env.KeyID, kind)
	}
	var k struct {
		Kind string `json:"kind"`
	}
	if err := json.Unmarshal(env.Payload, &k); err != nil {
		return env, nil, newError(ReasonMalformed, "payload: %s: sign it with fleetctl", jsonProblem(err))
	}
	if k.Kind != kind {
		return env, nil, newError(ReasonWrongKind, "payload kind is %q, this topic takes a %s: use fleetctl sign for configs and fleetctl sign-command for commands",
			k.Kind, kind)
	}
	return env, env.Payload, nil
}

// SetScheduleKeys replaces the keys the unit takes consultation schedules
// from (fleet.schedule_keys), beside the fleet key, which always may sign
// one (VerifySchedule says why). A
// schedule key is never also accepted on a config or command: one signed
// by it is refused with ReasonWrongRole. A key that is also a fleet key is
// refused: it would carry the fleet key's power to wherever it is kept.
// Safe to call while other goroutines verify.
func (v *Verifier) SetScheduleKeys(keys []ed25519.PublicKey) error {
	m := make(map[string]ed25519.PublicKey, len(keys))
	for _, k := range keys {
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("schedule key is %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		id := KeyID(k)
		if _, fk := v.keys[id]; fk {
			return fmt.Errorf("schedule key %s is a fleet key: give fleetd its own key (its schedule.key, shown by fleetd -schedule-key), never the fleet's", id)
		}
		m[id] = k
	}
	v.sched.Store(&m)
	return nil
}

// ScheduleUnderFleetKey says whether no schedule key is set, so that
// fleetd must sign schedules with the fleet key, which it then holds
// (doctor says so).
func (v *Verifier) ScheduleUnderFleetKey() bool { return len(v.scheduleKeys()) == 0 }

func (v *Verifier) scheduleKeys() map[string]ed25519.PublicKey {
	if m := v.sched.Load(); m != nil {
		return *m
	}
	return nil
}

func (v *Verifier) checkAddressTime(t Target, issued, expires time.Time) error {
	if !v.id.addresses(t) {
		groups := "no groups"
		if len(v.id.Groups) > 0 {
			groups = "groups " + strings.Join(v.id.Groups, ", ")
		}
		return newError(ReasonWrongTarget, "addressed to %s but this unit is device %s in %s: check the target, or the unit's group list",
			t, v.id.Device, groups)
	}
	now := v.Now()
	if now.After(expires.Add(v.Skew)) {
		return newError(ReasonExpired, "expired at %s, the unit's clock says %s: sign it again with a later --expires",
			expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if issued.After(now.Add(v.Skew)) {
		return newError(ReasonNotYetValid, "issued at %s, %s ahead of the unit's clock (%s): check the unit's time sync (NTP) and the signer's clock",
			issued.UTC().Format(time.RFC3339), issued.Sub(now).Round(time.Second), now.UTC().Format(time.RFC3339))
	}
	return nil
}

func sortedIDs(keys map[string]ed25519.PublicKey) []string {
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
