package fleet

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
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

// VerifySchedule checks a schedule envelope: signed by a trusted fleet key,
// for this unit. It does not order it against the one the unit holds.
func (v *Verifier) VerifySchedule(envelope []byte) (*SchedulePayload, error) {
	_, body, err := v.open(envelope, DomainSchedule, KindSchedule)
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
