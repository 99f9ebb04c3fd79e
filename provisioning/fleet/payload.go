package fleet

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Payload kinds, the "kind" field of a payload.
const (
	KindConfig  = "config"
	KindCommand = "command"
)

// Target addresses a payload to one device or to a group. Exactly one of the
// two is set. Names are restricted to what can sit in an MQTT topic level and
// a file name: 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'.
type Target struct {
	Device string `json:"device,omitempty"`
	Group  string `json:"group,omitempty"`
}

// Key is the target's stable name in maps of applied versions and stored
// envelopes: "device:<id>" or "group:<name>".
func (t Target) Key() string {
	if t.Device != "" {
		return "device:" + t.Device
	}
	return "group:" + t.Group
}

func (t Target) String() string {
	if t.Device != "" {
		return "device " + t.Device
	}
	return "group " + t.Group
}

// Validate checks that exactly one of Device and Group is set, with a valid name.
func (t Target) Validate() error {
	switch {
	case t.Device != "" && t.Group != "":
		return errors.New("target names both a device and a group: address one of them")
	case t.Device != "":
		return validName("device id", t.Device)
	case t.Group != "":
		return validName("group name", t.Group)
	}
	return errors.New("target names neither a device nor a group")
}

func validName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(s) > 64 {
		return fmt.Errorf("%s is %d characters, at most 64", what, len(s))
	}
	for i, c := range s {
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return fmt.Errorf("%s %q may only use letters, digits, '.', '_' and '-', and must start with a letter or digit", what, s)
		}
	}
	return nil
}

// ConfigPayload is a signed config. Config is TOML text in roomd's config
// format holding only the keys this target sets; see Merge.
type ConfigPayload struct {
	Kind      string    `json:"kind"`
	Version   uint64    `json:"version"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Target    Target    `json:"target"`
	Urgent    bool      `json:"urgent"`
	Config    string    `json:"config"`
}

// Command names.
const (
	CommandJoin      = "join"
	CommandLeave     = "leave"
	CommandIdentify  = "identify"
	CommandReboot    = "reboot"
	CommandReportNow = "report-now"
	// CommandCertificate installs a renewed certificate (arg
	// "certificate": PEM), sent by fleetctl renew.
	CommandCertificate = "certificate"
	// CommandDoctor runs the unit's self-check (what roomctl doctor shows)
	// and sends the checks back with command_done: the Konsult image has no
	// login, so this is how a fleet manager sees an installation's wiring.
	CommandDoctor = "doctor"
	// CommandPrivacyReport makes the unit's privacy report (what roomctl
	// privacy-report shows, appliance/report) and sends it back with
	// command_done, for fleetctl privacy-report.
	CommandPrivacyReport = "privacy-report"
)

// MaxCommandLifetime bounds expires_at - issued_at for a command: a command is
// for now, and the replay guard must remember each nonce for that long.
const MaxCommandLifetime = time.Hour

// Identify's blink duration: default and bounds, in seconds.
const (
	IdentifyDefaultSeconds = 10
	IdentifyMaxSeconds     = 300
)

// CommandPayload is a signed command. Args depend on Name: identify takes an
// optional "seconds" (1-300, default 10); the others take none.
type CommandPayload struct {
	Kind      string                     `json:"kind"`
	Name      string                     `json:"name"`
	Args      map[string]json.RawMessage `json:"args,omitempty"`
	Nonce     string                     `json:"nonce"`
	IssuedAt  time.Time                  `json:"issued_at"`
	ExpiresAt time.Time                  `json:"expires_at"`
	Target    Target                     `json:"target"`
}

// CommandArgs are a command's arguments after validation.
type CommandArgs struct {
	Seconds     int    // identify: how long to blink
	Certificate string // certificate: the renewed certificate, PEM
	Update      UpdateArgs
}

// MaxCertificateArg bounds the certificate command's PEM.
const MaxCertificateArg = 16 << 10

// ValidateCommand checks a command name and its arguments. Its errors name
// the argument, not its value.
func ValidateCommand(name string, args map[string]json.RawMessage) (CommandArgs, error) {
	var out CommandArgs
	allowed := map[string]bool{}
	switch name {
	case CommandJoin, CommandLeave, CommandReboot, CommandReportNow, CommandDoctor, CommandPrivacyReport:
	case CommandIdentify:
		allowed["seconds"] = true
		out.Seconds = IdentifyDefaultSeconds
	case CommandCertificate:
		allowed["certificate"] = true
		raw, ok := args["certificate"]
		if !ok {
			return out, errors.New("command certificate needs its \"certificate\" argument (PEM): send it with fleetctl renew")
		}
		if err := json.Unmarshal(raw, &out.Certificate); err != nil || len(out.Certificate) > MaxCertificateArg ||
			!strings.HasPrefix(strings.TrimSpace(out.Certificate), "-----BEGIN CERTIFICATE-----") {
			return out, fmt.Errorf("certificate's argument must be one PEM certificate of at most %d bytes", MaxCertificateArg)
		}
	case CommandUpdate:
		for _, k := range []string{"url", "version", "sha256", "downgrade", "reboot"} {
			allowed[k] = true
		}
		for k := range args {
			if !allowed[k] {
				return out, fmt.Errorf("command %s takes no argument %q", name, k)
			}
		}
		u, err := validateUpdate(args)
		out.Update = u
		return out, err
	default:
		return out, fmt.Errorf("unknown command %q: use join, leave, identify, reboot, report-now, doctor, privacy-report, update or certificate", name)
	}
	for k := range args {
		if !allowed[k] {
			return out, fmt.Errorf("command %s takes no argument %q", name, k)
		}
	}
	if raw, ok := args["seconds"]; ok {
		var s int
		if err := json.Unmarshal(raw, &s); err != nil || s < 1 || s > IdentifyMaxSeconds {
			return out, fmt.Errorf("identify's seconds must be a whole number from 1 to %d", IdentifyMaxSeconds)
		}
		out.Seconds = s
	}
	return out, nil
}

// NewNonce returns a fresh random command nonce (32 hex digits).
func NewNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

func validNonce(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// SignConfig checks p the way a unit will (target, times, version, TOML
// syntax), sets its kind and signs it. The fleet manager's tool uses it so a
// broken config is refused before it is published rather than by every unit.
func SignConfig(priv ed25519.PrivateKey, p ConfigPayload) (Envelope, error) {
	p.Kind = KindConfig
	if err := checkConfigFields(p); err != nil {
		return Envelope{}, fmt.Errorf("sign config: %w", err)
	}
	if _, err := ParseTOML([]byte(p.Config)); err != nil {
		return Envelope{}, fmt.Errorf("sign config: %w", err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return Envelope{}, fmt.Errorf("sign config: %w", err)
	}
	return Sign(priv, DomainConfig, b), nil
}

// SignCommand checks p the way a unit will, sets its kind, fills in a fresh
// nonce if it has none, and signs it.
func SignCommand(priv ed25519.PrivateKey, p CommandPayload) (Envelope, error) {
	p.Kind = KindCommand
	if p.Nonce == "" {
		p.Nonce = NewNonce()
	}
	if err := checkCommandFields(p); err != nil {
		return Envelope{}, fmt.Errorf("sign command: %w", err)
	}
	if _, err := ValidateCommand(p.Name, p.Args); err != nil {
		return Envelope{}, fmt.Errorf("sign command: %w", err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return Envelope{}, fmt.Errorf("sign command: %w", err)
	}
	return Sign(priv, DomainCommand, b), nil
}

func checkConfigFields(p ConfigPayload) error {
	if p.Version == 0 {
		return errors.New("version must be 1 or more")
	}
	if err := p.Target.Validate(); err != nil {
		return err
	}
	return checkTimes(p.IssuedAt, p.ExpiresAt)
}

func checkCommandFields(p CommandPayload) error {
	if !validNonce(p.Nonce) {
		return errors.New("nonce must be 32 lowercase hex digits")
	}
	if err := p.Target.Validate(); err != nil {
		return err
	}
	if err := checkTimes(p.IssuedAt, p.ExpiresAt); err != nil {
		return err
	}
	if p.ExpiresAt.Sub(p.IssuedAt) > MaxCommandLifetime {
		return fmt.Errorf("command is valid for %s, at most %s: sign it with a shorter --expires", p.ExpiresAt.Sub(p.IssuedAt), MaxCommandLifetime)
	}
	return nil
}

func checkTimes(issued, expires time.Time) error {
	if issued.IsZero() || expires.IsZero() {
		return errors.New("issued_at and expires_at must both be set")
	}
	if !expires.After(issued) {
		return errors.New("expires_at must be after issued_at")
	}
	return nil
}

// decodeStrict decodes one JSON document into v, refusing unknown fields and
// trailing data: fields the unit does not understand must not be silently
// dropped from something that was signed.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errors.New(jsonProblem(err))
	}
	if !atEOF(dec) {
		return errors.New("data after the JSON object")
	}
	return nil
}
