package unittoken

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/fleetd"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fleet starts Mosquitto and fleetd, and returns fleetd and the broker.
func startFleet(t *testing.T) (*fleetd.Service, *brokertest.Broker) {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(filepath.Join(dir, "ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := manager.GenerateKeys(c.Dir, false); err != nil {
		t.Fatal(err)
	}
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"room-1": nil}, CA: c})
	cert, key, err := c.IssueWithKey(ca.KindAdmin, "fleetd", nil, filepath.Join(dir, "fleetd"))
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("database = %q\nca_dir = %q\n[broker]\nurl = %q\nca = %q\ncert = %q\ncert_key = %q\n[livekit]\napi_key = \"k\"\napi_secret = \"s\"\n[units.room-1]\nstanding_room = \"standing-1\"\n",
		filepath.Join(dir, "fleetd.db"), c.Dir, b.SharedURL(), b.CAFile(), cert, key)
	path := filepath.Join(dir, "fleetd.toml")
	os.WriteFile(path, []byte(conf), 0o600)
	cfg, err := fleetd.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := fleetd.New(cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; svc.Close() })
	select {
	case <-svc.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("fleetd did not connect")
	}
	return svc, b
}

func unitKey(t *testing.T, path string) *ecdsa.PrivateKey {
	b, _ := os.ReadFile(path)
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// unitLink opens room-1's real link with the token and schedule hooks.
func unitLink(t *testing.T, b *brokertest.Broker, src *Source, schedules chan<- []byte) *link.Link {
	id := b.Identity("room-1")
	l, err := link.Open(link.Options{Broker: b.URL(), CAFile: b.CAFile(), CertFile: id.CertFile, KeyFile: id.KeyFile,
		DeviceID: "room-1", StoreDir: t.TempDir(), Logger: quiet(), OnToken: src.OnToken,
		OnSchedule: func(p []byte, _ bool) {
			select {
			case schedules <- p:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := l.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestPushedConsultationIsPrefetchedAndCancelledOneIsNot(t *testing.T) {
	svc, b := startFleet(t)
	id := b.Identity("room-1")
	var want atomic.Value
	want.Store("")
	src := &Source{Key: unitKey(t, id.KeyFile), Device: "room-1", Want: func() string { return want.Load().(string) }, Log: quiet()}
	schedules := make(chan []byte, 8)
	l := unitLink(t, b, src, schedules)
	src.Publish = l.PublishTokenRequest
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Run(ctx)

	now := time.Now()
	a, err := svc.Add(ctx, fleetd.AddRequest{Unit: "room-1", Start: now.Add(5 * time.Minute), End: now.Add(35 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	later, err := svc.Add(ctx, fleetd.AddRequest{Unit: "room-1", Start: now.Add(2 * time.Hour), End: now.Add(3 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	// The unit hears its signed schedule: pseudonymous ids and times.
	pub, _ := fleet.LoadPublicKeys(filepath.Join(svc.CADir(), "fleet.pub"))
	v, err := fleet.NewVerifier(fleet.Identity{Device: "room-1"}, pub...)
	if err != nil {
		t.Fatal(err)
	}
	var sched *fleet.SchedulePayload
	deadline := time.After(15 * time.Second)
	for sched == nil || len(sched.Slots) < 2 {
		select {
		case p := <-schedules:
			if sched, err = v.VerifySchedule(p); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("no schedule with both consultations reached the unit")
		}
	}
	due, ok := sched.Due(time.Now(), fleetd.DefaultLead)
	if !ok || due.ID != a.ID {
		t.Fatalf("due %+v, want %s", due, a.ID)
	}
	// What JOIN enters: the due one. Prefetched before any press.
	want.Store(due.ID)
	src.Kick()
	waitFor(t, func() bool { _, ok := src.Cached(a.ID); return ok })
	start := time.Now()
	tok, err := src.Token(ctx)
	if err != nil || tok == "" {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Millisecond {
		t.Fatalf("a prefetched token took %s", d)
	}
	// Cancelled: the new schedule drops it, and fleetd refuses it.
	if _, err := svc.Store().Cancel(ctx, later.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	svc.Changed()
	if _, err := src.Fetch(ctx, later.ID); !errors.Is(err, fleet.ErrTokenRefused) {
		t.Fatalf("a cancelled consultation's token: %v", err)
	}
	// Not yet due (two hours ahead) is refused as well: the unit's clock
	// cannot bring it forward.
	other, _ := svc.Add(ctx, fleetd.AddRequest{Unit: "room-1", Start: now.Add(2 * time.Hour), End: now.Add(3 * time.Hour)})
	if _, err := src.Fetch(ctx, other.ID); !errors.Is(err, fleet.ErrTokenRefused) {
		t.Fatalf("a consultation two hours ahead: %v", err)
	}
	// Standing meeting.
	if g, err := src.Fetch(ctx, fleet.StandingMeeting); err != nil || g.Room != "standing-1" {
		t.Fatalf("standing: %+v %v", g, err)
	}
}

func TestClockSkewBeyondTheWindowIsRefused(t *testing.T) {
	svc, b := startFleet(t)
	id := b.Identity("room-1")
	src := &Source{Key: unitKey(t, id.KeyFile), Device: "room-1", Want: func() string { return "" }, Log: quiet(),
		Now: func() time.Time { return time.Now().Add(-10 * time.Minute) }}
	l := unitLink(t, b, src, make(chan []byte, 8))
	src.Publish = l.PublishTokenRequest
	_ = svc
	// fleetd answers nothing to a request it cannot trust the time of (it
	// could be a replay), so the unit times out rather than join.
	answerTimeout = 2 * time.Second
	defer func() { answerTimeout = 5 * time.Second }()
	if _, err := src.Fetch(context.Background(), fleet.StandingMeeting); err == nil {
		t.Fatal("a request 10 minutes off fleetd's clock got a token")
	}
	// Within the skew allowed it works.
	src.Now = func() time.Time { return time.Now().Add(-time.Minute) }
	if _, err := src.Fetch(context.Background(), fleet.StandingMeeting); err != nil {
		t.Fatal(err)
	}
}

func TestBrokerOutageDuringDeliveryHeals(t *testing.T) {
	svc, b := startFleet(t)
	id := b.Identity("room-1")
	src := &Source{Key: unitKey(t, id.KeyFile), Device: "room-1", Want: func() string { return fleet.StandingMeeting }, Log: quiet()}
	schedules := make(chan []byte, 8)
	l := unitLink(t, b, src, schedules)
	src.Publish = l.PublishTokenRequest
	b.Stop()
	ctx := context.Background()
	// Booked while the broker is down: fleetd keeps it and publishes when
	// it is back; the unit's prefetch retries.
	now := time.Now()
	a, err := svc.Add(ctx, fleetd.AddRequest{Unit: "room-1", Start: now, End: now.Add(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Fetch(ctx, fleet.StandingMeeting); err == nil {
		t.Fatal("a token with the broker down")
	}
	b.Restart()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go src.Run(rctx)
	waitFor(t, func() bool { _, ok := src.Cached(fleet.StandingMeeting); return ok })
	pub, _ := fleet.LoadPublicKeys(filepath.Join(svc.CADir(), "fleet.pub"))
	v, _ := fleet.NewVerifier(fleet.Identity{Device: "room-1"}, pub...)
	deadline := time.After(60 * time.Second)
	for {
		select {
		case p := <-schedules:
			if s, err := v.VerifySchedule(p); err == nil && len(s.Slots) == 1 && s.Slots[0].ID == a.ID {
				return
			}
		case <-deadline:
			t.Fatal("the schedule booked during the outage never reached the unit")
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("timed out")
}
