package unit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/unittoken"
)

// A fleet unit without the conference's API secret gets its tokens from
// fleetd (docs/FLEETD.md). What JOIN enters is decided here, on the unit:
// the consultation of its signed schedule that is due (from Lead before its
// start until its end), else the unit's standing meeting, which fleetd
// grants only if its config gives the unit one; else "no consultation
// now". The token for that is fetched while the unit is idle and renewed
// before it expires (unittoken), so a press never waits for the fleet.

// ConsultLead is how long before its start a consultation is due.
const ConsultLead = 10 * time.Minute

// ErrNoConsultation is a JOIN with nothing to enter: the machine goes
// back to idle and says so (appliance.ErrNothingDue), not a fault.
var ErrNoConsultation = appliance.ErrNothingDue

type consult struct {
	u      *Unit
	tokens *unittoken.Source
	now    func() time.Time
	// active says the running config takes its tokens from fleetd: only
	// then are tokens prefetched (a unit with its own api_secret asks
	// nobody).
	active atomic.Bool

	mu    sync.Mutex
	sched *fleet.SchedulePayload
	ver   *fleet.Verifier
	// held is the envelope of sched, last the last one received (taken
	// or not), and keysFor the fleet.schedule_keys they were checked
	// under: when the running config changes them, both are checked again
	// (recheck), so a schedule refused before fleetd's key was authorised
	// is taken once it is, and one the new keys do not cover is dropped.
	held, last []byte
	keysFor    string
	endTimer   *time.Timer // ends the call at the consultation's end (call.end_with_consultation)
	// pending is the end-to-end key of the token last handed to a join,
	// or pendingErr why it has none it may use (e2ee.go).
	pending    joinKey
	pendingErr error

	dueKick chan struct{} // the schedule changed: showDue looks again now
}

// newConsult is nil unless the unit enrols and roomd carries its token
// requests (Deps.TokenRequests).
func newConsult(u *Unit) *consult {
	if u.d.Identity == nil || u.d.TokenRequests == nil {
		return nil
	}
	c := &consult{u: u, now: time.Now, dueKick: make(chan struct{}, 1)}
	c.tokens = &unittoken.Source{Key: u.d.Identity.Signer(), Device: u.d.Identity.ID(), Publish: u.d.TokenRequests,
		Want: c.want, Log: u.d.Log}
	return c
}

// want is what JOIN enters now ("" while the unit does not use fleetd).
func (c *consult) want() string {
	if !c.active.Load() {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sched != nil {
		if s, ok := c.sched.Due(c.now(), ConsultLead); ok {
			return s.ID
		}
	}
	return fleet.StandingMeeting
}

// token is the connector's TokenSource.
func (c *consult) token(ctx context.Context) (string, error) {
	want := c.want()
	if want == "" {
		return "", ErrNoConsultation
	}
	c.setPending(joinKey{}, nil)
	g, err := c.tokens.Grant(ctx)
	if err != nil && want == fleet.StandingMeeting && errors.Is(err, fleet.ErrTokenRefused) {
		return "", ErrNoConsultation
	}
	if err != nil {
		return "", err
	}
	if g.Consultation != fleet.StandingMeeting {
		// Every consultation from fleetd is end to end encrypted: without
		// a usable key the join is refused (invariant 10).
		var k joinKey
		kerr := ErrNoE2EEKey
		if len(g.E2EEKey) > 0 {
			k, kerr = newJoinKey(g.E2EEKey)
		}
		c.setPending(k, kerr)
	}
	// Not here: the join runs under the unit's parts, and a config
	// being applied holds them while it waits for the join to end.
	go c.armEnd(want)
	return g.Token, nil
}

// setPending keeps the end-to-end key of the token just handed to a join
// (or why there is none usable) for the connector's E2EESource, which asks
// right after the token.
func (c *consult) setPending(k joinKey, err error) {
	c.mu.Lock()
	c.pending, c.pendingErr = k, err
	c.mu.Unlock()
}

// takeKey is the end-to-end key of the join's token (zero for the
// standing meeting), or why the join must be refused.
func (c *consult) takeKey() (joinKey, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, err := c.pending, c.pendingErr
	c.pending, c.pendingErr = joinKey{}, nil
	return k, err
}

// armEnd ends the call that joins consultation id at its end, if the
// config says so; a join of anything else disarms it.
func (c *consult) armEnd(id string) {
	cfg := c.u.Running()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.endTimer != nil {
		c.endTimer.Stop()
		c.endTimer = nil
	}
	if cfg == nil || !cfg.Call.EndWithConsultation || c.sched == nil {
		return
	}
	for _, s := range c.sched.Slots {
		if s.ID == id {
			c.endTimer = time.AfterFunc(s.End.Sub(c.now()), c.endCall)
		}
	}
}

func (c *consult) endCall() {
	m, err := c.u.machine()
	if err != nil {
		return
	}
	if st := m.Status().State; st == appliance.InCall || st == appliance.Joining {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.Do(ctx, appliance.ActLeave, "consultation end"); err != nil {
			c.u.d.Log.Warn("could not end the call at the consultation's end", "err", err)
		}
	}
}

// onSchedule takes a schedule from the unit's schedule topic: verified
// against the schedule keys of the running config (fleet.schedule_keys)
// and the pinned fleet keys, and kept only if newer than
// the one held (a replayed older one must not bring back a cancelled
// consultation).
func (c *consult) onSchedule(payload []byte) {
	cfg := c.u.Running() // not under c.mu: the unit's lock is held while it re-opens
	c.mu.Lock()
	c.last = append([]byte(nil), payload...)
	taken := c.takeLocked(cfg, payload)
	c.mu.Unlock()
	if taken {
		c.changed()
	}
}

// verifierLocked is the schedule verifier under cfg's schedule keys.
func (c *consult) verifierLocked(cfg *config.Config) (*fleet.Verifier, error) {
	if c.ver == nil {
		keys, err := c.u.d.Identity.FleetKeys()
		if err == nil {
			c.ver, err = fleet.NewVerifier(fleet.Identity{Device: c.u.d.Identity.ID()}, keys...)
		}
		if err != nil {
			return nil, fmt.Errorf("no fleet key to check it with: %w", err)
		}
	}
	var sk []ed25519.PublicKey
	c.keysFor = ""
	if cfg != nil {
		var err error
		if sk, err = cfg.Fleet.ScheduleKeyList(); err != nil {
			return nil, err
		}
		c.keysFor = strings.Join(cfg.Fleet.ScheduleKeys, ",")
	}
	if err := c.ver.SetScheduleKeys(sk); err != nil {
		return nil, fmt.Errorf("fleet.schedule_keys: %w", err)
	}
	return c.ver, nil
}

func (c *consult) takeLocked(cfg *config.Config, payload []byte) bool {
	v, err := c.verifierLocked(cfg)
	if err != nil {
		c.u.d.Log.Warn("consultation schedule refused", "err", err)
		return false
	}
	s, err := v.VerifySchedule(payload)
	if err != nil {
		c.u.d.Log.Warn("consultation schedule refused", "err", err)
		return false
	}
	if c.sched != nil && !s.IssuedAt.After(c.sched.IssuedAt) {
		return false
	}
	c.sched, c.held = s, append([]byte(nil), payload...)
	c.u.d.Log.Info("consultation schedule", "consultations", len(s.Slots), "under_fleet_key", v.ScheduleUnderFleetKey())
	return true
}

// recheck checks the held and the last schedule again if the running
// config's schedule keys changed since they were checked.
func (c *consult) recheck() {
	cfg := c.u.Running()
	if cfg == nil {
		return
	}
	c.mu.Lock()
	if strings.Join(cfg.Fleet.ScheduleKeys, ",") == c.keysFor || (c.held == nil && c.last == nil) {
		c.mu.Unlock()
		return
	}
	changed := false
	if c.held != nil {
		v, err := c.verifierLocked(cfg)
		if err == nil {
			_, err = v.VerifySchedule(c.held)
		}
		if err != nil {
			c.u.d.Log.Warn("consultation schedule dropped: the new schedule keys do not cover it", "err", err)
			c.sched, c.held, changed = nil, nil, true
		}
	}
	if c.last != nil && c.takeLocked(cfg, c.last) {
		changed = true
	}
	c.mu.Unlock()
	if changed {
		c.changed()
	}
}

func (c *consult) changed() {
	c.tokens.Kick()
	select {
	case c.dueKick <- struct{}{}:
	default:
	}
}

// next is the first consultation that has not ended.
func (c *consult) next() (fleet.Slot, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sched == nil {
		return fleet.Slot{}, false
	}
	return c.sched.Next(c.now())
}

// OnToken is the fleet link's hook for fleetd's answers (link.Options).
func (u *Unit) OnToken(payload []byte) {
	if u.consult != nil {
		u.consult.tokens.OnToken(payload)
	}
}

// OnSchedule is the fleet link's hook for the unit's schedule.
func (u *Unit) OnSchedule(payload []byte, _ bool) {
	if u.consult != nil {
		u.consult.onSchedule(payload)
	}
}

// RunTokens keeps a conference token ready until ctx ends (a no-op for a
// unit that does not get its tokens from fleetd).
func (u *Unit) RunTokens(ctx context.Context) {
	if u.consult != nil {
		go u.consult.showDue(ctx)
		u.consult.tokens.Run(ctx)
	}
}

// dueEvery is how often showDue looks at the schedule: a consultation's
// due window opens and closes by the clock, not only when the schedule
// changes.
const dueEvery = 5 * time.Second

// showDue tells the running machine whether a booked consultation is due
// now, so its LED can say so while idle (the screen shows it from the
// status). A machine started by a config change is told at the next look.
func (c *consult) showDue(ctx context.Context) {
	t := time.NewTicker(dueEvery)
	defer t.Stop()
	var told *appliance.Machine
	var was bool
	for {
		c.recheck()
		w := c.want()
		due := w != "" && w != fleet.StandingMeeting
		if m, err := c.u.machine(); err == nil && (m != told || due != was) {
			if m.ConsultationDue(ctx, due) == nil {
				told, was = m, due
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.dueKick:
		}
	}
}

// NextConsultation is the unit's next consultation, if its schedule has
// one.
func (u *Unit) NextConsultation() (fleet.Slot, bool) {
	if u.consult == nil {
		return fleet.Slot{}, false
	}
	return u.consult.next()
}

// NextStart is when the unit's next consultation starts, if it has one
// (appliance/screen's Config.Next).
func (u *Unit) NextStart() (time.Time, bool) {
	c, ok := u.NextConsultation()
	return c.Start, ok
}

// fleetTokens is the TokenSource for a conference config without a
// credential of its own, on a unit that gets its tokens from fleetd.
func (u *Unit) fleetTokens(apiSecret, token string) func(context.Context) (string, error) {
	if u.consult == nil {
		return nil
	}
	if apiSecret != "" || token != "" {
		u.consult.active.Store(false)
		return nil
	}
	u.consult.active.Store(true)
	u.consult.tokens.Kick()
	return u.consult.token
}

// secretCheck is doctor's checks of a fleet unit's consultation trust:
// the conference secret it should not hold (apiSecretCheck) and the key
// its schedules are taken under (scheduleKeyCheck).
func (p *parts) secretCheck() []localapi.Check {
	return append(p.apiSecretCheck(), p.scheduleKeyCheck()...)
}

// scheduleKeyCheck says, for a unit that gets its tokens from fleetd,
// whether fleetd may sign its schedules with a key of its own, or must
// hold the fleet key to do so (no fleet.schedule_keys).
func (p *parts) scheduleKeyCheck() []localapi.Check {
	if !p.fleetUnit || p.tokens == nil {
		return nil
	}
	keys, err := p.cfg.Fleet.ScheduleKeyList()
	if err == nil && len(keys) == 0 {
		return []localapi.Check{{Name: "schedule key", OK: false,
			Detail: "no fleet.schedule_keys: consultation schedules are taken under the fleet key only, so fleetd must hold the fleet key, which can configure every unit",
			Fix:    "run fleetd -schedule-key on the fleet server and follow its two steps (docs/FLEETD.md)"}}
	}
	if err != nil {
		return []localapi.Check{{Name: "schedule key", OK: false, Detail: err.Error(), Fix: "push a fleet config with the line fleetd -schedule-key prints"}}
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = fleet.KeyID(k)
	}
	return []localapi.Check{{Name: "schedule key", OK: true,
		Detail: "consultation schedules under fleetd's schedule key " + strings.Join(ids, ", ") + ", which can sign no config or command (or the fleet key)"}}
}

// apiSecretCheck is doctor's warning for a fleet unit that still holds the
// conference's API secret: one stolen SD card would mint tokens for every
// room, admin included. fleetd issues tokens instead.
func (p *parts) apiSecretCheck() []localapi.Check {
	if !p.fleetUnit || p.cfg.Conference.APISecret == "" {
		return nil
	}
	return []localapi.Check{{Name: "conference secret", OK: false,
		Detail: "this fleet unit holds conference.api_secret: anyone with its SD card can mint tokens for any room, admin and recording included",
		Fix:    "remove api_key and api_secret from its config and let fleetd issue its tokens (docs/FLEETD.md)"}}
}

// consultStatus is the next consultation in the status.
type consultStatus struct {
	fleet.Slot
	Due bool `json:"due"`
	// UnderFleetKey says the unit has no fleet.schedule_keys, so its
	// schedules can only come signed with the fleet key (doctor says so).
	UnderFleetKey bool `json:"under_fleet_key,omitempty"`
}

func (u *Unit) consultStatus() *consultStatus {
	if u.consult == nil || !u.consult.active.Load() {
		return nil
	}
	s, ok := u.consult.next()
	if !ok {
		return nil
	}
	now := u.consult.now()
	cfg := u.Running()
	return &consultStatus{Slot: s, Due: !now.Before(s.Start.Add(-ConsultLead)) && now.Before(s.End),
		UnderFleetKey: cfg != nil && len(cfg.Fleet.ScheduleKeys) == 0}
}
