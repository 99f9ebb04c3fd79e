package fleet

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func scheduleFor(t testing.TB, priv ed25519.PrivateKey) []byte {
	t.Helper()
	env, err := SignSchedule(priv, SchedulePayload{Device: "room-12", IssuedAt: t0,
		Slots: []Slot{{ID: "c1", Start: t0.Add(time.Hour), End: t0.Add(90 * time.Minute)}}})
	if err != nil {
		t.Fatal(err)
	}
	return env.Marshal()
}

// A schedule key (fleetd's) signs schedules and nothing else: a config or
// command signed by it is refused, and the refusal names its role.
func TestScheduleKeyCannotSignConfigsOrCommands(t *testing.T) {
	fleetKey, schedKey := testKey(t, 1), testKey(t, 7)
	v := testVerifier(t, fleetKey)
	if err := v.SetScheduleKeys([]ed25519.PublicKey{schedKey.Public().(ed25519.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	_, err := v.VerifyConfig(signConfig(t, schedKey, configPayload()), nil, nil)
	if ReasonOf(err) != ReasonWrongRole || !strings.Contains(err.Error(), "schedule key") {
		t.Fatalf("config signed by the schedule key: %v, want %s naming the schedule key", err, ReasonWrongRole)
	}
	_, err = v.VerifyCommand(signCommand(t, schedKey, commandPayload("identify")), NewNonceStore(nil, nil))
	if ReasonOf(err) != ReasonWrongRole || !strings.Contains(err.Error(), "schedule key") {
		t.Fatalf("command signed by the schedule key: %v, want %s naming the schedule key", err, ReasonWrongRole)
	}
	// The fleet key still configures the unit.
	if _, err := v.VerifyConfig(signConfig(t, fleetKey, configPayload()), nil, nil); err != nil {
		t.Fatalf("config signed by the fleet key: %v", err)
	}
}

// With a schedule key given, schedules come under it or the fleet key (which
// could authorise any schedule key anyway), never under an unauthorised key.
func TestScheduleOnlyUnderAuthorisedScheduleKey(t *testing.T) {
	fleetKey, schedKey, rogue := testKey(t, 1), testKey(t, 7), testKey(t, 9)
	v := testVerifier(t, fleetKey)

	// Before any schedule key (a unit running today): the fleet key's
	// schedules are taken, and the unit says it is in that state.
	if !v.ScheduleUnderFleetKey() {
		t.Fatal("no schedule key set, but ScheduleUnderFleetKey is false")
	}
	if _, err := v.VerifySchedule(scheduleFor(t, fleetKey)); err != nil {
		t.Fatalf("migration: schedule under the fleet key: %v", err)
	}
	_, err := v.VerifySchedule(scheduleFor(t, schedKey))
	if ReasonOf(err) != ReasonUnknownKey || !strings.Contains(err.Error(), "fleetd -schedule-key") {
		t.Fatalf("schedule key not yet authorised: %v, want %s naming the fix", err, ReasonUnknownKey)
	}

	if err := v.SetScheduleKeys([]ed25519.PublicKey{schedKey.Public().(ed25519.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	if v.ScheduleUnderFleetKey() {
		t.Fatal("schedule key set, but ScheduleUnderFleetKey is true")
	}
	p, err := v.VerifySchedule(scheduleFor(t, schedKey))
	if err != nil || len(p.Slots) != 1 || p.Slots[0].ID != "c1" {
		t.Fatalf("schedule under the authorised schedule key: %+v, %v", p, err)
	}
	if _, err := v.VerifySchedule(scheduleFor(t, rogue)); ReasonOf(err) != ReasonUnknownKey {
		t.Fatalf("schedule under an unauthorised key: %v, want %s", err, ReasonUnknownKey)
	}
	if _, err := v.VerifySchedule(scheduleFor(t, fleetKey)); err != nil {
		t.Fatalf("schedule under the fleet key once a schedule key is set (a fleetd not yet moved to its key): %v", err)
	}
	// A schedule key's signature over another domain is no schedule.
	b := signRaw(t, schedKey, DomainConfig, SchedulePayload{Kind: KindSchedule, Device: "room-12", IssuedAt: t0})
	if _, err := v.VerifySchedule(b); ReasonOf(err) != ReasonBadSignature {
		t.Fatalf("schedule key's signature under the config domain: %v", err)
	}
}

func TestScheduleKeyMayNotBeAFleetKey(t *testing.T) {
	fleetKey := testKey(t, 1)
	v := testVerifier(t, fleetKey)
	if err := v.SetScheduleKeys([]ed25519.PublicKey{fleetKey.Public().(ed25519.PublicKey)}); err == nil {
		t.Fatal("the fleet key was taken as a schedule key")
	}
	if !v.ScheduleUnderFleetKey() {
		t.Fatal("a refused SetScheduleKeys changed the keys")
	}
}

func TestScheduleKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "schedule.key")
	k1, created, err := LoadOrCreateScheduleKey(path)
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("schedule.key: %v %v", fi.Mode(), err)
	}
	k2, created, err := LoadOrCreateScheduleKey(path)
	if err != nil || created || !k1.Equal(k2) {
		t.Fatalf("second start: created %v, same %v, %v", created, k1.Equal(k2), err)
	}
	pub, err := ParseScheduleKey(ScheduleKeyLine(k1.Public().(ed25519.PublicKey)))
	if err != nil || !pub.Equal(k1.Public()) {
		t.Fatalf("key line round trip: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateScheduleKey(path); err == nil {
		t.Fatal("a schedule.key readable by others was used")
	}
}
