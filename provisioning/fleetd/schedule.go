package fleetd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

// republish is how often fleetd looks at every schedule again: a
// consultation that ended drops out of its unit's schedule, and a publish
// the broker did not take (an outage) is tried again. Only changed
// schedules are sent, so this costs a database query.
var republish = 5 * time.Second

// scheduleWindow is how far ahead a schedule reaches.
const scheduleWindow = 14 * 24 * time.Hour

func (s *Service) publishLoop(ctx context.Context, fc *manager.Client) {
	t := time.NewTicker(republish)
	defer t.Stop()
	for {
		if err := s.PublishSchedules(ctx, fc); err != nil && ctx.Err() == nil {
			s.log.Warn("fleetd: schedules not all published; trying again", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.changed:
		}
	}
}

// SlotsFor is unit's schedule at now: its consultations that have not
// ended, that start within scheduleWindow, and are not cancelled.
func (s *Service) SlotsFor(ctx context.Context, unit string, now time.Time) ([]fleet.Slot, error) {
	cs, err := s.store.List(ctx, unit, now, false)
	if err != nil {
		return nil, err
	}
	slots := []fleet.Slot{}
	for _, c := range cs {
		if c.Start.After(now.Add(scheduleWindow)) || len(slots) == fleet.MaxSlots {
			break
		}
		slots = append(slots, fleet.Slot{ID: c.ID, Start: c.Start, End: c.End})
	}
	return slots, nil
}

// PublishSchedules publishes, retained and signed, the schedule of every
// unit whose consultations changed since the last publish that the broker
// acknowledged.
func (s *Service) PublishSchedules(ctx context.Context, fc *manager.Client) error {
	now := s.Now()
	units, err := s.store.Units(ctx, now.Add(-24*time.Hour))
	if err != nil {
		return err
	}
	s.mu.Lock()
	for u := range s.published {
		units = append(units, u) // a unit whose last consultation ended gets its empty schedule
	}
	s.mu.Unlock()
	var firstErr error
	done := map[string]bool{}
	for _, u := range units {
		if done[u] {
			continue
		}
		done[u] = true
		slots, err := s.SlotsFor(ctx, u, now)
		if err != nil {
			return err
		}
		b, _ := json.Marshal(slots)
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		s.mu.Lock()
		same := s.published[u] == h
		s.mu.Unlock()
		if same {
			continue
		}
		env, err := fleet.SignSchedule(s.schedKey, fleet.SchedulePayload{Device: u, IssuedAt: now.UTC(), Slots: slots})
		if err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = fc.Publish(pctx, s.topics.Schedule(u), true, env.Marshal())
		cancel()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("schedule of %s: %w", u, err)
			}
			continue
		}
		s.mu.Lock()
		s.published[u] = h
		s.mu.Unlock()
		s.log.Info("fleetd: schedule published", "unit", u, "consultations", len(slots))
	}
	return firstErr
}
