// Package fleet is the unit's trust core for fleet management: Ed25519-signed
// envelopes for configs and commands, their verification against the pinned
// fleet key and the unit's identity, the merge of group and device configs,
// and the replay guard for commands. It has no transport: the MQTT link hands
// it bytes and acts on what it returns.
package fleet

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Domain separates what a signature is for. It is prepended to the payload
// before signing, so a signed config can never be replayed as a command (or
// the reverse) even if the payload bytes were to parse as both.
type Domain string

const (
	DomainConfig  Domain = "konsult-config-v1\n"
	DomainCommand Domain = "konsult-command-v1\n"
)

// MaxEnvelopeSize bounds what the unit parses; a config is a few KiB of TOML.
const MaxEnvelopeSize = 1 << 20

// Envelope is the wire format shared by configs and commands:
//
//	{"payload":"<base64 std>","key_id":"<16 hex>","sig":"<base64 std>"}
//
// Payload holds the exact bytes that were signed (a JSON document); no
// canonicalisation is involved, so the unit verifies precisely what it parses.
type Envelope struct {
	Payload []byte
	KeyID   string
	Sig     []byte
}

type wireEnvelope struct {
	Payload []byte `json:"payload"` // encoding/json writes []byte as base64 std
	KeyID   string `json:"key_id"`
	Sig     []byte `json:"sig"`
}

// KeyID names a public key on the wire: hex of the first 8 bytes of
// sha256(public key).
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Sign signs payload for domain d with priv.
func Sign(priv ed25519.PrivateKey, d Domain, payload []byte) Envelope {
	msg := append([]byte(d), payload...)
	return Envelope{
		Payload: bytes.Clone(payload),
		KeyID:   KeyID(priv.Public().(ed25519.PublicKey)),
		Sig:     ed25519.Sign(priv, msg),
	}
}

// Verify reports whether e carries a valid signature by pub for domain d. It
// does not look at the payload; Verifier does the rest of the checks.
func (e Envelope) Verify(pub ed25519.PublicKey, d Domain) bool {
	if len(pub) != ed25519.PublicKeySize || len(e.Sig) != ed25519.SignatureSize {
		return false
	}
	msg := append([]byte(d), e.Payload...)
	return ed25519.Verify(pub, msg, e.Sig)
}

// Marshal returns the envelope's JSON wire form.
func (e Envelope) Marshal() []byte {
	b, err := json.Marshal(wireEnvelope(e))
	if err != nil {
		// Three plain fields cannot fail to marshal.
		panic(fmt.Sprintf("fleet: marshal envelope: %v", err))
	}
	return b
}

// ParseEnvelope parses the wire form strictly: exactly the three fields,
// each once, with exact (case-sensitive) names, canonical base64, nothing
// after the object. Only whitespace between JSON tokens is free; changing
// any other byte of a signed envelope makes it fail to parse or to verify
// (FuzzVerifyConfig checks this). Errors carry ReasonMalformed.
func ParseEnvelope(b []byte) (Envelope, error) {
	const fix = "publish the output of fleetctl unchanged"
	if len(b) > MaxEnvelopeSize {
		return Envelope{}, newError(ReasonMalformed, "envelope is %d bytes, more than the %d the unit accepts: keep configs small", len(b), MaxEnvelopeSize)
	}
	fields, err := parseFlatObject(b)
	if err != nil {
		return Envelope{}, newError(ReasonMalformed, "envelope: %s: %s", err, fix)
	}
	var env Envelope
	for _, name := range []string{"payload", "key_id", "sig"} {
		if _, ok := fields[name]; !ok {
			return Envelope{}, newError(ReasonMalformed, "envelope has no %s: %s", name, fix)
		}
	}
	if env.Payload, err = base64.StdEncoding.Strict().DecodeString(fields["payload"]); err != nil || len(env.Payload) == 0 {
		return Envelope{}, newError(ReasonMalformed, "envelope payload is not non-empty base64 (standard alphabet, padded): %s", fix)
	}
	if env.Sig, err = base64.StdEncoding.Strict().DecodeString(fields["sig"]); err != nil || len(env.Sig) != ed25519.SignatureSize {
		return Envelope{}, newError(ReasonMalformed, "envelope sig is not a base64 %d-byte Ed25519 signature: %s", ed25519.SignatureSize, fix)
	}
	env.KeyID = fields["key_id"]
	if !validKeyID(env.KeyID) {
		return Envelope{}, newError(ReasonMalformed, "envelope key_id is not 16 lowercase hex digits: %s", fix)
	}
	return env, nil
}

// parseFlatObject reads one JSON object whose values are all strings,
// refusing duplicate or unknown names: encoding/json would match names
// case-insensitively and keep the last of duplicates.
func parseFlatObject(b []byte) (map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	out := map[string]string{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New(jsonProblem(err))
		}
		name, _ := tok.(string)
		switch name {
		case "payload", "key_id", "sig":
		default:
			if len(name) > 32 {
				return nil, errors.New("unknown field (a long name)")
			}
			return nil, fmt.Errorf("unknown field %q", name)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("field %q appears twice", name)
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, errors.New(jsonProblem(err))
		}
		val, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("field %q is not a string", name)
		}
		out[name] = val
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errors.New("unterminated JSON object")
	}
	if !atEOF(dec) {
		return nil, errors.New("data after the JSON object")
	}
	return out, nil
}

func validKeyID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// jsonProblem describes a JSON decoding error without quoting the input: a
// syntax error names its offset, a type error the field. Never the value.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("JSON syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		if te.Field != "" {
			return fmt.Sprintf("field %q must be a JSON %s", te.Field, te.Type.Kind())
		}
		return fmt.Sprintf("expected a JSON %s", te.Type.Kind())
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return strings.TrimPrefix(msg, "json: ")
	}
	// Other errors (a time.ParseError, a base64 error) may quote the input.
	return "a field has the wrong format (times are RFC 3339 like 2026-05-01T12:00:00Z, byte fields base64)"
}

// atEOF reports whether dec has nothing but whitespace left.
func atEOF(dec *json.Decoder) bool {
	_, err := dec.Token()
	return errors.Is(err, io.EOF)
}
