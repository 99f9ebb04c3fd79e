package unit

import (
	"bytes"
	"crypto/ed25519"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/unittoken"
)

// scheduleUnit is a fleet unit's consult side on cfg, trusting fleetKey,
// logging to log.
func scheduleUnit(t *testing.T, fleetKey ed25519.PrivateKey, cfg *config.Config, log *bytes.Buffer) *consult {
	t.Helper()
	lg := slog.New(slog.NewTextHandler(log, nil))
	v, err := fleet.NewVerifier(fleet.Identity{Device: "room-1"}, fleetKey.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	c := &consult{now: time.Now, dueKick: make(chan struct{}, 1), ver: v}
	c.active.Store(true)
	c.tokens = &unittoken.Source{Device: "room-1", Want: c.want, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.u = &Unit{d: Deps{Log: lg}, cfg: cfg}
	return c
}

func signedSchedule(t *testing.T, key ed25519.PrivateKey, id string, issued time.Time) []byte {
	t.Helper()
	now := time.Now()
	env, err := fleet.SignSchedule(key, fleet.SchedulePayload{Device: "room-1", IssuedAt: issued,
		Slots: []fleet.Slot{{ID: id, Start: now.Add(-time.Minute), End: now.Add(time.Hour)}}})
	if err != nil {
		t.Fatal(err)
	}
	return env.Marshal()
}

// A unit takes schedules under the fleet key; fleetd's, under its own key,
// once a config authorises that key (and the fleet key's still, so a
// fleetd not yet moved onto its key loses nothing), never under an
// unauthorised key. JOIN enters the consultation of the schedule taken.
func TestScheduleTakenUnderTheFleetKeyOrAnAuthorisedScheduleKey(t *testing.T) {
	fleetKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	fleetdKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	rogue := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	var log bytes.Buffer
	cfg := &config.Config{}
	c := scheduleUnit(t, fleetKey, cfg, &log)
	t0 := time.Now().Add(-time.Hour)

	// No schedule key yet: the fleet key's schedule is taken (migration),
	// fleetd's own is not.
	c.onSchedule(signedSchedule(t, fleetKey, "old-fleet", t0))
	if w := c.want(); w != "old-fleet" {
		t.Fatalf("migration: JOIN enters %q, want the fleet-signed schedule's old-fleet", w)
	}
	c.onSchedule(signedSchedule(t, fleetdKey, "fleetd-1", t0.Add(time.Minute)))
	if w := c.want(); w != "old-fleet" {
		t.Fatalf("fleetd's schedule taken before its key was authorised: JOIN enters %q", w)
	}

	// A fleet config authorises fleetd's key: the schedule it refused is
	// taken now, without waiting for fleetd to publish again.
	c.u.cfg = &config.Config{}
	c.u.cfg.Fleet.ScheduleKeys = []string{fleet.ScheduleKeyLine(fleetdKey.Public().(ed25519.PublicKey))}
	c.recheck()
	if w := c.want(); w != "fleetd-1" {
		t.Fatalf("after the schedule key was authorised JOIN enters %q, want fleetd-1", w)
	}

	// From now on: an unauthorised key's schedule is refused, newer as it
	// is; the fleet key's and fleetd's are joined.
	log.Reset()
	c.onSchedule(signedSchedule(t, rogue, "rogue", t0.Add(2*time.Minute)))
	if w := c.want(); w != "fleetd-1" {
		t.Fatalf("a schedule under an unauthorised key moved JOIN to %q", w)
	}
	if !strings.Contains(log.String(), string(fleet.ReasonUnknownKey)) {
		t.Fatalf("refusal not logged with its reason: %s", log.String())
	}
	c.onSchedule(signedSchedule(t, fleetKey, "fleet-again", t0.Add(3*time.Minute)))
	if w := c.want(); w != "fleet-again" {
		t.Fatalf("a schedule under the fleet key (fleetd before its move): JOIN enters %q, want fleet-again", w)
	}
	c.onSchedule(signedSchedule(t, fleetdKey, "fleetd-2", t0.Add(4*time.Minute)))
	if w := c.want(); w != "fleetd-2" {
		t.Fatalf("fleetd's next schedule: JOIN enters %q, want fleetd-2", w)
	}

	// Keys withdrawn for another: the held schedule is dropped, nothing is
	// due but the standing meeting.
	c.u.cfg = &config.Config{}
	c.u.cfg.Fleet.ScheduleKeys = []string{fleet.ScheduleKeyLine(rogue.Public().(ed25519.PublicKey))}
	c.recheck()
	if w := c.want(); w != fleet.StandingMeeting {
		t.Fatalf("schedule under a withdrawn key still held: JOIN enters %q", w)
	}
}

// doctor says whether schedules are taken under the fleet key (no
// schedule key yet) or fleetd's key only.
func TestDoctorNamesTheScheduleKey(t *testing.T) {
	cfg := &config.Config{}
	p := &parts{cfg: cfg, fleetUnit: true, tokens: (&consult{}).token}
	got := p.scheduleKeyCheck()
	if len(got) != 1 || got[0].OK || !strings.Contains(got[0].Detail, "fleet key") || got[0].Fix == "" {
		t.Fatalf("no schedule key: %+v", got)
	}
	pub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	cfg.Fleet.ScheduleKeys = []string{fleet.ScheduleKeyLine(pub)}
	got = p.scheduleKeyCheck()
	if len(got) != 1 || !got[0].OK || !strings.Contains(got[0].Detail, fleet.KeyID(pub)) {
		t.Fatalf("schedule key set: %+v", got)
	}
	p.tokens = nil // a unit with its own conference credential asks no fleetd
	if got := p.scheduleKeyCheck(); len(got) != 0 {
		t.Fatalf("unit not on fleetd: %+v", got)
	}
}
