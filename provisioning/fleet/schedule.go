package fleet

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DomainSchedule separates a unit's consultation schedule from configs and
// commands signed with the same fleet key.
const DomainSchedule Domain = "konsult-schedule-v1\n"

// KindSchedule is a schedule payload's kind.
const KindSchedule = "schedule"

// MaxSlots bounds the consultations one schedule carries: the next ones,
// not a year of bookings.
const MaxSlots = 64

// Slot is one consultation as the unit sees it: a pseudonymous id and its
// times. Never a patient's name, nor the room: the unit asks fleetd for a
// token by id and fleetd chooses the room.
type Slot struct {
	ID    string    `json:"id"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// SchedulePayload is a unit's upcoming consultations, retained on its
// schedule topic. IssuedAt orders them: a unit keeps the newest it has
// verified, so a replayed older one cannot bring back a cancelled slot.
type SchedulePayload struct {
	Kind     string    `json:"kind"`
	Device   string    `json:"device"`
	IssuedAt time.Time `json:"issued_at"`
	Slots    []Slot    `json:"slots"`
}

// SignSchedule signs a schedule for one unit.
func SignSchedule(priv ed25519.PrivateKey, p SchedulePayload) (Envelope, error) {
	p.Kind = KindSchedule
	if err := validName("device id", p.Device); err != nil {
		return Envelope{}, err
	}
	if len(p.Slots) > MaxSlots {
		return Envelope{}, fmt.Errorf("schedule: %d consultations, over %d", len(p.Slots), MaxSlots)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return Envelope{}, fmt.Errorf("schedule: %w", err)
	}
	return Sign(priv, DomainSchedule, b), nil
}

// VerifySchedule checks a schedule envelope: signed by one of the unit's
// schedule keys (SetScheduleKeys) or by a pinned fleet key, for this unit.
// The fleet key stays good for schedules: whoever holds it can already
// push a config naming any schedule key, so refusing it would add no
// protection, and it lets a fleet move fleetd to its own key in either
// order without a window in which schedules are lost (docs/FLEETD.md). It
// does not order it against the one the unit holds.
func (v *Verifier) VerifySchedule(envelope []byte) (*SchedulePayload, error) {
	body, err := v.openSchedule(envelope)
	if err != nil {
		return nil, err
	}
	var p SchedulePayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, newError(ReasonMalformed, "schedule: %s", jsonProblem(err))
	}
	if p.Device != v.id.Device {
		return nil, newError(ReasonWrongTarget, "schedule for device %s, this unit is %s", p.Device, v.id.Device)
	}
	if len(p.Slots) > MaxSlots {
		return nil, newError(ReasonMalformed, "schedule: %d consultations, over %d", len(p.Slots), MaxSlots)
	}
	for _, s := range p.Slots {
		if s.ID == "" || len(s.ID) > 64 || !s.End.After(s.Start) {
			return nil, newError(ReasonMalformed, "schedule: consultation %.20q has no id or ends before it starts", s.ID)
		}
	}
	return &p, nil
}

func (v *Verifier) openSchedule(envelope []byte) ([]byte, error) {
	sk := v.scheduleKeys()
	env, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	if pub, ok := sk[env.KeyID]; ok {
		_, body, err := openUnder(env, pub, DomainSchedule, KindSchedule)
		return body, err
	}
	if _, fk := v.keys[env.KeyID]; fk || len(sk) == 0 {
		_, body, err := v.open(envelope, DomainSchedule, KindSchedule)
		if len(sk) == 0 && ReasonOf(err) == ReasonUnknownKey {
			return nil, newError(ReasonUnknownKey, "schedule signed by key %s, which is not the fleet key (%s) and no fleet.schedule_keys are set: if fleetd signs with its own schedule_key, push the line fleetd -schedule-key prints in the fleet config",
				env.KeyID, strings.Join(sortedIDs(v.keys), ", "))
		}
		return body, err
	}
	return nil, newError(ReasonUnknownKey, "schedule signed by key %s, but this unit takes schedules from the fleet key and its schedule keys %s: add fleetd's schedule key to fleet.schedule_keys in the fleet config (fleetd -schedule-key prints the line)",
		env.KeyID, strings.Join(sortedIDs(sk), ", "))
}

// Due returns the slot JOIN enters at now: the one from lead before its
// start until its end (the earliest starting, if two overlap).
func (p *SchedulePayload) Due(now time.Time, lead time.Duration) (Slot, bool) {
	var best Slot
	found := false
	for _, s := range p.Slots {
		if now.Before(s.Start.Add(-lead)) || !now.Before(s.End) {
			continue
		}
		if !found || s.Start.Before(best.Start) {
			best, found = s, true
		}
	}
	return best, found
}

// Next returns the first slot that has not ended at now.
func (p *SchedulePayload) Next(now time.Time) (Slot, bool) {
	var best Slot
	found := false
	for _, s := range p.Slots {
		if !now.Before(s.End) {
			continue
		}
		if !found || s.Start.Before(best.Start) {
			best, found = s, true
		}
	}
	return best, found
}

// fleetd's schedule key: an Ed25519 key of its own, made on its first start
// and kept in a file like fleet.key (one base64 seed line, mode 0600). It
// is authorised on the units by its public key in fleet.schedule_keys, in
// a config signed with the fleet key. Whoever holds it can only publish
// schedules: a unit refuses a config or command signed by it.

// FormatSchedulePrivateKey returns the schedule.key text for priv.
func FormatSchedulePrivateKey(priv ed25519.PrivateKey) []byte {
	pub := priv.Public().(ed25519.PublicKey)
	return fmt.Appendf(nil, "# konsult fleetd SCHEDULE signing key (Ed25519 seed), key id %s: signs schedules only; keep secret, mode 0600\n%s\n",
		KeyID(pub), base64.StdEncoding.EncodeToString(priv.Seed()))
}

// ScheduleKeyLine is pub as it goes into fleet.schedule_keys.
func ScheduleKeyLine(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// ParseScheduleKey parses one fleet.schedule_keys entry: base64 (std,
// padded) of a raw 32-byte Ed25519 public key.
func ParseScheduleKey(s string) (ed25519.PublicKey, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("not a base64 32-byte Ed25519 public key: copy the line fleetd -schedule-key prints")
	}
	return ed25519.PublicKey(raw), nil
}

// LoadOrCreateScheduleKey reads the schedule key at path, or makes one
// there (mode 0600, its folder 0700) if there is none; created says which.
// Like LoadPrivateKey it refuses a file others can read.
func LoadOrCreateScheduleKey(path string) (priv ed25519.PrivateKey, created bool, err error) {
	priv, err = LoadPrivateKey(path)
	if err == nil {
		return priv, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("schedule key: %w", err)
	}
	_, priv, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("schedule key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("schedule key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("schedule key: %w", err)
	}
	if _, err := f.Write(FormatSchedulePrivateKey(priv)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, false, fmt.Errorf("schedule key: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("schedule key: %w", err)
	}
	return priv, true, nil
}
