package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/fleetd"
)

// startFleetd runs the fleet service beside f's broker, with the
// certificate fleetctl ca init made for it, as its server would, and
// signing schedules with its own key as the shipped fleetd.toml has it
// (units take them once given f.scheduleKeys).
func startFleetd(t testing.TB, f *enrolFleet, lk *farend.LiveKit, extra string) *fleetd.Service {
	t.Helper()
	dir := t.TempDir()
	// extra is top-level keys (renew = true), ahead of the tables.
	conf := fmt.Sprintf(`%s
database = %q
ca_dir = %q
schedule_key = %q
[broker]
url = %q
ca = %q
cert = %q
cert_key = %q
[livekit]
api_key = %q
api_secret = %q
`, extra, filepath.Join(dir, "fleetd.db"), f.caDir, f.scheduleKeyFile(), f.b.SharedURL(), f.b.CAFile(),
		filepath.Join(f.caDir, "fleetd", "fleetd.crt"), filepath.Join(f.caDir, "fleetd", "fleetd.key"), lk.APIKey, lk.APISecret)
	path := filepath.Join(dir, "fleetd.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := fleetd.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := fleetd.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; svc.Close() })
	select {
	case <-svc.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("fleetd did not connect")
	}
	return svc
}

// scheduleKeyFile is where startFleetd keeps fleetd's schedule key.
func (f *enrolFleet) scheduleKeyFile() string { return filepath.Join(f.caDir, "fleetd-schedule.key") }

// scheduleKeys is the line of a unit's [fleet] table that authorises
// fleetd's schedule key (what fleetd -schedule-key prints), making the key
// as fleetd would if it has not started yet. It goes first in enrolUnit's
// extra, which lands in [fleet].
func (f *enrolFleet) scheduleKeys(t testing.TB) string {
	t.Helper()
	priv, _, err := fleet.LoadOrCreateScheduleKey(f.scheduleKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	return fleetd.ScheduleKeysLine(priv.Public().(ed25519.PublicKey)) + "\n"
}

// fleetConference is a unit's [conference] with no credential: its tokens
// come from fleetd.
func fleetConference(lk *farend.LiveKit) string {
	return fmt.Sprintf("\n[conference]\nconnector = \"livekit\"\nurl = %q\nidentity = \"unit-1\"\n", lk.URL)
}

func inRoom(t *testing.T, lk *farend.LiveKit, room, who string, d time.Duration) bool {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ps, err := lk.Participants(context.Background(), room)
		if err == nil && slices.Contains(ps, who) {
			return true
		}
	}
	return false
}

// A consultation booked in fleetd reaches the unit as its schedule; one
// press at its time enters its room with a token fleetd issued for it. A
// cancelled one is not entered: with no standing meeting, JOIN says "no
// consultation now" (status and event, not a fault). The unit holds no
// API secret.
func TestConsultationJoinedByOnePress(t *testing.T) {
	lk := farend.StartLiveKit(t)
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, f.scheduleKeys(t)+fleetConference(lk))
	svc := startFleetd(t, f, lk, "")
	ctx := context.Background()

	now := time.Now()
	a, err := svc.Add(ctx, fleetd.AddRequest{Unit: id, Start: now.Add(5 * time.Minute), End: now.Add(35 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	// The schedule is delivered and the token prefetched in the background.
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, _ := svc.Store().TokensIssued(ctx, id)
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the unit never fetched a token for its consultation")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The status shows it, due (it starts in 5 minutes): ids and times only.
	st := u.within(20*time.Second, "the next consultation in the status", func(s status) bool {
		return s.Consultation != nil && s.Consultation.ID == a.ID && s.Consultation.Due
	})
	if !st.Consultation.Start.Equal(a.Start) {
		t.Fatalf("status shows %+v, booked %s", st.Consultation, a.Start)
	}
	// And the LED says it is time to press JOIN.
	u.within(10*time.Second, "the LED shows the consultation due", func(s status) bool { return s.LED == "consultation_due" })
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	if !inRoom(t, lk, a.Room, id, 10*time.Second) {
		t.Fatalf("%s is not in the consultation's room %s", id, a.Room)
	}
	u.press("leave")
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))

	// Cancelled: the new schedule drops it and fleetd refuses it.
	if _, err := svc.Store().Cancel(ctx, a.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	svc.Changed()
	time.Sleep(2 * time.Second) // the schedule's delivery
	u.press("join")
	u.waitFor("nothing due", 20*time.Second, func(e appliance.Event) bool { return e.Type == "call" && e.Detail == "nothing_due" })
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	// Not a fault: the unit says so and goes back to idle, shutter closed.
	if s := u.status(); s.Notice != "no consultation now" || s.LastError != "" || s.LED != "off" || s.Sim.Shutter.Position != "closed" {
		t.Fatalf("JOIN with nothing due: notice %q error %q LED %s shutter %s", s.Notice, s.LastError, s.LED, s.Sim.Shutter.Position)
	}
	if inRoom(t, lk, a.Room, id, time.Second) {
		t.Fatal("the unit entered a cancelled consultation")
	}
}

// BenchmarkJoinFleetdToken is JOIN → the far end sees the room, for a unit
// whose token comes from fleetd (prefetched while idle) beside a unit that
// mints its own from a local secret, alternating in one run against one
// LiveKit. Goal: fleetd-p50 / secret-p50 ≤ 1.05 (issue 21).
func BenchmarkJoinFleetdToken(b *testing.B) {
	lk := farend.StartLiveKit(b)
	f := newEnrolFleet(b)
	fu, id, _ := f.enrolUnit(b, f.scheduleKeys(b)+fleetConference(lk))
	svc := startFleetd(b, f, lk, "")
	now := time.Now()
	a, err := svc.Add(context.Background(), fleetd.AddRequest{Unit: id, Start: now, End: now.Add(2 * time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	// Every fleetd consultation is encrypted end to end with its own key:
	// the secret unit is given one too (a key file), so that both joins
	// are alike but for where the token comes from.
	material, err := svc.Store().E2EEKey(context.Background(), a.ID)
	if err != nil || len(material) != 32 {
		b.Fatalf("fleetd holds no key for the consultation: %d bytes, %v", len(material), err)
	}
	keyFile := filepath.Join(b.TempDir(), "e2ee.key")
	if err := os.WriteFile(keyFile, []byte(base64.RawURLEncoding.EncodeToString(material)+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	su := startUnit(b, connectorConfig("livekit", lk, "bench-secret", fmt.Sprintf("e2ee_key_file = %q", keyFile))) // the same connector as fleetConference
	// The schedule and the first token reach the fleet unit.
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if n, _ := svc.Store().TokensIssued(context.Background(), id); n > 0 {
			break
		}
		if time.Now().After(end) {
			b.Fatal("the fleet unit never fetched its token")
		}
	}
	measure := func(u *unitUnderTest, room string) time.Duration {
		b.StopTimer()
		fe := farend.StartFarEnd(b, lk, room, "patient", farend.ReportInterval(20*time.Millisecond), farend.E2EE(material))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected }); err != nil {
			b.Fatalf("far end did not connect: %v", err)
		}
		// Polled, not from the event stream: two units run in this process.
		u.within(15*time.Second, "idle before the press", func(s status) bool { return s.State == appliance.Idle })
		b.StartTimer()
		press := time.Now()
		u.press("join")
		if _, err := fe.WaitFor(ctx, isRoom); err != nil {
			b.Fatalf("the room never appeared at the far end in %s: %v", room, err)
		}
		d := time.Since(press)
		b.StopTimer()
		u.press("leave")
		u.within(15*time.Second, "idle after leave", func(s status) bool { return s.State == appliance.Idle })
		fe.Close()
		b.StartTimer()
		return d
	}
	var withFleetd, withSecret []time.Duration
	for b.Loop() {
		withSecret = append(withSecret, measure(su, "bench-secret"))
		withFleetd = append(withFleetd, measure(fu, a.Room))
	}
	slices.Sort(withFleetd)
	slices.Sort(withSecret)
	p50f, p50s := withFleetd[len(withFleetd)/2], withSecret[len(withSecret)/2]
	b.ReportMetric(float64(p50f.Milliseconds()), "fleetd-p50-ms")
	b.ReportMetric(float64(p50s.Milliseconds()), "secret-p50-ms")
	b.ReportMetric(float64(p50f)/float64(p50s), "ratio")
}

// fleetd takes over fleetctl renew --watch: a unit that asks for a renewal
// gets its new certificate without anyone running fleetctl, once; the
// answer is remembered across a restart of fleetd.
func TestFleetdRenewsAsUnitsAsk(t *testing.T) {
	lk := farend.StartLiveKit(t)
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, "renew_before = \"2200h\"\n")
	before := u.within(30*time.Second, "renewal asked", func(s status) bool { return s.Fleet.Enrolment.Renewing })
	svc := startFleetd(t, f, lk, "renew = true\n")
	s := u.within(30*time.Second, "new certificate installed", func(s status) bool {
		return s.Fleet.Enrolment.Serial != before.Fleet.Enrolment.Serial && !s.Fleet.Enrolment.Renewing
	})
	if !s.Fleet.Connected {
		t.Fatal("the unit lost its connection over the renewal")
	}
	if h, err := svc.Store().Renewal(context.Background(), id); err != nil || h == "" {
		t.Fatalf("the renewal is not recorded: %q %v", h, err)
	}
}

// call.end_with_consultation: the consultation's end ends the call.
func TestConsultationEndEndsTheCall(t *testing.T) {
	lk := farend.StartLiveKit(t)
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, f.scheduleKeys(t)+fleetConference(lk)+"\n[call]\nend_with_consultation = true\n")
	svc := startFleetd(t, f, lk, "")
	ctx := context.Background()
	now := time.Now()
	a, err := svc.Add(ctx, fleetd.AddRequest{Unit: id, Start: now, End: now.Add(15 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if n, _ := svc.Store().TokensIssued(ctx, id); n > 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the unit never fetched a token for its consultation")
		}
	}
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	if !inRoom(t, lk, a.Room, id, 10*time.Second) {
		t.Fatal("not in the consultation's room")
	}
	u.waitFor("idle at the consultation's end", 30*time.Second, isState(appliance.Idle))
	if left := time.Now(); left.Before(a.End.Add(-time.Second)) {
		t.Fatalf("the call ended at %s, before the consultation's end %s", left.Format(time.TimeOnly), a.End.Format(time.TimeOnly))
	}
}
