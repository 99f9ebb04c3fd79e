package fleetd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

// fleetd runs without the fleet key, and what an intruder finds on its
// server, its schedule key, configures no unit and commands none. A unit
// given that key takes fleetd's schedules; one given another key does not.
func TestFleetdSignsSchedulesWithAKeyThatCannotConfigure(t *testing.T) {
	r := newRig(t, nil)
	// fleetd with a schedule_key and without renew needs no fleet key:
	// take it off the server.
	r.stop()
	r.cfg.ScheduleKey = filepath.Join(filepath.Dir(r.cfg.Database), "schedule.key")
	fleetPub, err := fleet.LoadPublicKeys(filepath.Join(r.cfg.CADir, manager.FleetPubFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(r.cfg.CADir, manager.FleetKeyFile)); err != nil {
		t.Fatal(err)
	}
	r.start()

	sched, a, verifier := bookedSchedule(t, r, fleetPub)
	now := time.Now()
	// Authorised: taken as before (the retained empty schedule may come
	// first).
	var env []byte
	for env == nil {
		select {
		case b := <-sched:
			p, err := verifier(r.svc.ScheduleKey()).VerifySchedule(b)
			if err != nil {
				t.Fatalf("a unit that authorised fleetd's schedule key: %v", err)
			}
			if len(p.Slots) == 1 && p.Slots[0].ID == a.ID {
				env = b
			}
		case <-time.After(15 * time.Second):
			t.Fatal("no schedule with the consultation reached the unit")
		}
	}
	// Another schedule key: refused.
	_, other, _ := ed25519.GenerateKey(nil)
	if _, err := verifier(other.Public().(ed25519.PublicKey)).VerifySchedule(env); fleet.ReasonOf(err) != fleet.ReasonUnknownKey {
		t.Fatalf("a unit that authorised another schedule key: %v, want %s", err, fleet.ReasonUnknownKey)
	}

	// The key file on fleetd's server signs a config and a command: the
	// unit refuses both, naming the key's role.
	stolen, err := fleet.LoadPrivateKey(r.cfg.ScheduleKey)
	if err != nil {
		t.Fatal(err)
	}
	if !stolen.Public().(ed25519.PublicKey).Equal(r.svc.ScheduleKey()) {
		t.Fatal("fleetd signs with a key other than its schedule_key file")
	}
	v := verifier(r.svc.ScheduleKey())
	cfgEnv, err := fleet.SignConfig(stolen, fleet.ConfigPayload{Version: 99, IssuedAt: now, ExpiresAt: now.Add(time.Hour),
		Target: fleet.Target{Device: "room-1"}, Config: "[conference]\nurl = \"wss://rogue.example\"\n"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyConfig(cfgEnv.Marshal(), nil, nil); fleet.ReasonOf(err) != fleet.ReasonWrongRole {
		t.Fatalf("config signed with fleetd's key: %v, want %s", err, fleet.ReasonWrongRole)
	}
	cmdEnv, err := fleet.SignCommand(stolen, fleet.CommandPayload{Name: "identify", Nonce: fleet.NewNonce(), IssuedAt: now,
		ExpiresAt: now.Add(5 * time.Minute), Target: fleet.Target{Device: "room-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyCommand(cmdEnv.Marshal(), fleet.NewNonceStore(nil, nil)); fleet.ReasonOf(err) != fleet.ReasonWrongRole {
		t.Fatalf("command signed with fleetd's key: %v, want %s", err, fleet.ReasonWrongRole)
	}
	// And fleetd's schedule is no longer one a unit takes under the fleet
	// key alone: it has to be authorised.
	if _, err := verifier().VerifySchedule(env); fleet.ReasonOf(err) != fleet.ReasonUnknownKey {
		t.Fatalf("a unit with no schedule key took fleetd's schedule: %v", err)
	}
}

// The move of a running fleet onto fleetd's own key, in the order
// fleetd -schedule-key prints, loses no consultation: fleetd without
// schedule_key signs with the fleet key (an upgraded fleetd keeps its old
// config), units given the key meanwhile still take that, and once fleetd
// restarts on its key it publishes the held consultation again under it. A
// unit the fleet forgot to give the key refuses it, naming the fix.
func TestFleetMovesToTheScheduleKeyWithoutLosingAConsultation(t *testing.T) {
	r := newRig(t, nil)
	fleetPub, err := fleet.LoadPublicKeys(filepath.Join(r.cfg.CADir, manager.FleetPubFile))
	if err != nil {
		t.Fatal(err)
	}
	sched, a, verifier := bookedSchedule(t, r, fleetPub)
	withConsultation := func(what string, v *fleet.Verifier) []byte {
		t.Helper()
		for {
			select {
			case b := <-sched:
				if p, err := v.VerifySchedule(b); err == nil && len(p.Slots) == 1 && p.Slots[0].ID == a.ID {
					return b
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("%s: no schedule with the consultation that the unit takes", what)
			}
		}
	}
	before := verifier()
	env := withConsultation("fleetd on the fleet key, unit without schedule keys", before)

	// Step 1: the key is made and the units get it.
	var steps bytes.Buffer
	if err := WriteScheduleKeySteps(r.cfg, &steps); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(steps.String(), "schedule_key = ") {
		t.Fatalf("steps without the fleetd.toml line: %s", steps.String())
	}
	priv, err := fleet.LoadPrivateKey(r.cfg.DefaultScheduleKey())
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	after := verifier(pub)
	if _, err := after.VerifySchedule(env); err != nil {
		t.Fatalf("a unit given the schedule key before fleetd moved: the held schedule %v", err)
	}

	// Step 2: fleetd restarts on its key and publishes the consultation
	// again under it.
	r.stop()
	r.cfg.ScheduleKey = r.cfg.DefaultScheduleKey()
	r.start()
	if !r.svc.ScheduleKey().Equal(pub) {
		t.Fatal("fleetd signs with a key other than the one -schedule-key printed")
	}
	r.svc.Changed()
	env = withConsultation("fleetd on its schedule key", after)
	_, err = before.VerifySchedule(env)
	if fleet.ReasonOf(err) != fleet.ReasonUnknownKey || !strings.Contains(err.Error(), "fleetd -schedule-key") {
		t.Fatalf("a unit never given the key: %v, want %s naming fleetd -schedule-key", err, fleet.ReasonUnknownKey)
	}
}

// bookedSchedule books a consultation for room-1 an hour from now and
// returns the schedules that reach room-1 on its own topic, the
// consultation, and a verifier as room-1 holds one: pinned to fleetPub,
// with the schedule keys given.
func bookedSchedule(t *testing.T, r *rig, fleetPub []ed25519.PublicKey) (<-chan []byte, Added, func(...ed25519.PublicKey) *fleet.Verifier) {
	t.Helper()
	u := r.unit("room-1")
	sched := make(chan []byte, 8)
	tok := u.c.Subscribe(r.topics.Schedule("room-1"), 1, func(_ mqtt.Client, m mqtt.Message) { sched <- m.Payload() })
	if tok.Wait(); tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	now := time.Now()
	a, err := r.svc.Add(context.Background(), AddRequest{Unit: "room-1", Start: now.Add(time.Hour), End: now.Add(90 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	r.svc.Changed()
	verifier := func(schedKeys ...ed25519.PublicKey) *fleet.Verifier {
		v, err := fleet.NewVerifier(fleet.Identity{Device: "room-1"}, fleetPub...)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.SetScheduleKeys(schedKeys); err != nil {
			t.Fatal(err)
		}
		return v
	}
	return sched, a, verifier
}
