package fleetd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	ics "github.com/arran4/golang-ical"
	"github.com/konsult/konsult/provisioning/link"
)

// Import reads a booking system's iCalendar export: each VEVENT is a
// consultation, keyed by its UID so a re-import moves or cancels what it
// booked before instead of booking it twice. The unit is unit if given,
// else the event's X-KONSULT-UNIT, else its LOCATION. Nothing else of the
// event is kept: a SUMMARY or DESCRIPTION often names the patient.
func (s *Service) Import(ctx context.Context, r io.Reader, unit string) (ImportResult, error) {
	res := ImportResult{Added: []Added{}}
	cal, err := ics.ParseCalendar(r)
	if err != nil {
		return res, fmt.Errorf("calendar: %w", err)
	}
	for i, ev := range cal.Events() {
		uid := ev.Id()
		if uid == "" {
			res.Skipped = append(res.Skipped, fmt.Sprintf("event %d: no UID", i+1))
			continue
		}
		u := unit
		if u == "" {
			if p := ev.GetProperty("X-KONSULT-UNIT"); p != nil {
				u = strings.TrimSpace(p.Value)
			} else if p := ev.GetProperty(ics.ComponentPropertyLocation); p != nil {
				u = strings.TrimSpace(p.Value)
			}
		}
		if link.ValidName(u) != nil {
			res.Skipped = append(res.Skipped, fmt.Sprintf("event %d: no unit (give --unit, or X-KONSULT-UNIT or LOCATION)", i+1))
			continue
		}
		start, err := ev.GetStartAt()
		if err != nil {
			res.Skipped = append(res.Skipped, fmt.Sprintf("event %d: DTSTART: %v", i+1, err))
			continue
		}
		end, err := ev.GetEndAt()
		if err != nil {
			if p := ev.GetProperty(ics.ComponentPropertyDuration); p != nil {
				if d, derr := parseICSDuration(p.Value); derr == nil {
					end, err = start.Add(d), nil
				}
			}
		}
		if err != nil || !end.After(start) {
			res.Skipped = append(res.Skipped, fmt.Sprintf("event %d: no DTEND or DURATION after its start", i+1))
			continue
		}
		cancelled := false
		if p := ev.GetProperty(ics.ComponentPropertyStatus); p != nil && strings.EqualFold(strings.TrimSpace(p.Value), "CANCELLED") {
			cancelled = true
		}
		prev, err := s.store.BySourceUID(ctx, uid)
		switch {
		case errors.Is(err, ErrNotFound):
			if cancelled {
				res.Unchanged++
				continue
			}
			c, secret, err := s.store.AddConsultation(ctx, u, start, end, uid, s.Now())
			if err != nil {
				return res, err
			}
			res.Added = append(res.Added, Added{Consultation: c, PatientLink: s.patientLink(c.ID, secret, c.e2eeKey)})
		case err != nil:
			return res, err
		case cancelled && prev.CancelledAt == nil:
			if _, err := s.store.Cancel(ctx, prev.ID, s.Now()); err != nil {
				return res, err
			}
			res.Cancelled++
		case !cancelled && (!prev.Start.Equal(start.UTC().Truncate(time.Second)) || !prev.End.Equal(end.UTC().Truncate(time.Second))):
			if err := s.store.Reschedule(ctx, prev.ID, start.UTC(), end.UTC()); err != nil {
				return res, err
			}
			res.Moved++
		default:
			res.Unchanged++
		}
	}
	s.Changed()
	return res, nil
}

// parseICSDuration reads the RFC 5545 durations bookings use: PT30M,
// PT1H30M, P1D.
func parseICSDuration(v string) (time.Duration, error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "+")
	rest, ok := strings.CutPrefix(v, "P")
	if !ok {
		return 0, fmt.Errorf("duration %q", v)
	}
	var d time.Duration
	inTime := false
	num := 0
	for _, r := range rest {
		switch {
		case r == 'T':
			inTime = true
		case r >= '0' && r <= '9':
			num = num*10 + int(r-'0')
		default:
			unit := map[rune]time.Duration{'W': 7 * 24 * time.Hour, 'D': 24 * time.Hour}[r]
			if inTime {
				unit = map[rune]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second}[r]
			}
			if unit == 0 {
				return 0, fmt.Errorf("duration %q", v)
			}
			d += time.Duration(num) * unit
			num = 0
		}
	}
	return d, nil
}
