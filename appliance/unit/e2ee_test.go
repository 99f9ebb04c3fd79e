package unit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/unittoken"
)

// fakeFleetd answers the unit's token requests with grant, sealed to the
// unit's key as fleetd does.
func fakeFleetd(t *testing.T, grant fleet.TokenGrant) *consult {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := &consult{now: time.Now}
	c.active.Store(true)
	c.sched = &fleet.SchedulePayload{Slots: []fleet.Slot{{ID: grant.Consultation, Start: time.Now().Add(-time.Minute), End: time.Now().Add(time.Hour)}}}
	src := &unittoken.Source{Key: key, Device: "room-1", Want: c.want, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	src.Publish = func(req []byte) error {
		r, pub, err := fleet.ParseTokenRequest(req, "room-1", time.Now())
		if err != nil {
			return err
		}
		g := grant
		g.Consultation = r.Consultation
		resp, err := fleet.SealTokenGrant(pub, "room-1", r.Nonce, g)
		if err != nil {
			return err
		}
		go src.OnToken(resp)
		return nil
	}
	c.tokens = src
	c.u = &Unit{}
	return c
}

func material(seed byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = seed + byte(i)
	}
	return k
}

// The join's key is the one in its token's grant, with that key's safety
// code; a consultation whose grant has no key, or an unusable one, is
// refused with the reason, and the reason never holds the key.
func TestConsultationKeyFromGrant(t *testing.T) {
	ctx := context.Background()
	k := material(7)
	c := fakeFleetd(t, fleet.TokenGrant{Token: "tok", Consultation: "c-1", Expires: time.Now().Add(10 * time.Minute), E2EEKey: k})
	if tok, err := c.token(ctx); err != nil || tok != "tok" {
		t.Fatalf("token %q, %v", tok, err)
	}
	jk, err := c.takeKey()
	if err != nil || jk.key == nil || jk.code != e2ee.SafetyCode(k) {
		t.Fatalf("the join's key: %v, code %q, %v", jk.key, jk.code, err)
	}
	if again, err := c.takeKey(); again.key != nil || err != nil {
		t.Fatal("the join's key was handed out twice")
	}

	for name, bad := range map[string][]byte{"no key": nil, "a 16-byte key": k[:16]} {
		c := fakeFleetd(t, fleet.TokenGrant{Token: "tok", Consultation: "c-1", Expires: time.Now().Add(10 * time.Minute), E2EEKey: bad})
		if _, err := c.token(ctx); err != nil {
			t.Fatalf("%s: token: %v", name, err)
		}
		jk, err := c.takeKey()
		if err == nil || jk.key != nil || !strings.Contains(err.Error(), "end-to-end") {
			t.Fatalf("%s: joined with key %v, err %v", name, jk.key, err)
		}
		if name == "no key" && !errors.Is(err, ErrNoE2EEKey) {
			t.Errorf("no key: %v", err)
		}
	}

	// The standing meeting is not a consultation: no key, no refusal.
	c = fakeFleetd(t, fleet.TokenGrant{Token: "tok", Expires: time.Now().Add(10 * time.Minute)})
	c.sched = nil
	if _, err := c.token(ctx); err != nil {
		t.Fatal(err)
	}
	if jk, err := c.takeKey(); jk.key != nil || err != nil {
		t.Fatalf("standing meeting: key %v, err %v", jk.key, err)
	}
}

// The connector's source hands the fleet's key to the join and remembers
// its code for the call; a refusal reaches the connector as an error.
func TestE2EESource(t *testing.T) {
	k := material(1)
	jk, err := newJoinKey(k)
	if err != nil {
		t.Fatal(err)
	}
	e := &e2eeParts{take: func() (joinKey, error) { return jk, nil }}
	if got, err := e.source(); err != nil || got != jk.key || e.current().code != e2ee.SafetyCode(k) {
		t.Fatalf("source: %v %v code %q", got, err, e.current().code)
	}
	e = &e2eeParts{take: func() (joinKey, error) { return joinKey{}, ErrNoE2EEKey }}
	if got, err := e.source(); err == nil || got != nil {
		t.Fatal("a refused key reached the join")
	}
	e = &e2eeParts{file: jk}
	if got, _ := e.source(); got != jk.key {
		t.Fatal("the stand-alone unit's file key was not used")
	}
	if s := jk.key.String(); strings.Contains(s, string(k)) || s != "e2ee key (redacted)" {
		t.Fatalf("the key prints as %q", s)
	}
}
