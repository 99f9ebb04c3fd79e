package fleet

import (
	"errors"
	"fmt"
)

// Reason is why the unit refused a config or command. The strings are stable:
// the unit reports them to the fleet and dashboards match on them.
type Reason string

const (
	ReasonMalformed    Reason = "malformed"     // not a well-formed envelope or payload
	ReasonUnknownKey   Reason = "unknown_key"   // signed by a key the unit does not pin
	ReasonBadSignature Reason = "bad_signature" // signature does not match the payload
	ReasonWrongKind    Reason = "wrong_kind"    // a command where a config was expected, or the reverse
	ReasonWrongTarget  Reason = "wrong_target"  // addressed to another device or a group the unit is not in
	ReasonExpired      Reason = "expired"       // expires_at has passed
	ReasonNotYetValid  Reason = "not_yet_valid" // issued_at is in the future: usually the unit's clock is behind
	ReasonStaleVersion Reason = "stale_version" // version not above the one applied for the target
	ReasonSchema       Reason = "schema"        // the config or command arguments fail validation
	ReasonReplayed     Reason = "replayed"      // a command nonce the unit has already seen
	ReasonTooMany      Reason = "too_many"      // the replay guard is full of unexpired nonces
	ReasonInternal     Reason = "internal"      // the unit could not record the nonce; nothing was run
	ReasonWrongRole    Reason = "wrong_role"    // signed by a key the unit knows, but for another role (a schedule key on a config)
)

// Error is a refusal. Its message names the problem and the fix and never
// contains a value from the config or command (they can hold secrets). It
// deliberately wraps no cause: a validator's or decoder's error may quote
// values, and a wrapped error is one errors.Unwrap away from a log line.
type Error struct {
	Reason Reason
	Msg    string
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Msg }

func newError(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the Reason of a refusal anywhere in err's chain, or "" if
// err is not one.
func ReasonOf(err error) Reason {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Reason
	}
	return ""
}
