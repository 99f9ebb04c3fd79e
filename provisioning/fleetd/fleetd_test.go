package fleetd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// rig is a fleet: a CA, a real Mosquitto with the shipped ACL, fleetd with
// its own certificate, and two units.
type rig struct {
	t      testing.TB
	b      *brokertest.Broker
	ca     *ca.CA
	cfg    *Config
	svc    *Service
	topics link.Topics
	cancel context.CancelFunc
	done   chan error
}

func newRig(t *testing.T, lk *farend.LiveKit) *rig { return newRigTB(t, lk) }

func newRigB(b *testing.B) *rig { return newRigTB(b, nil) }

func (r *rig) unitKeyOnly(name string) *ecdsa.PrivateKey { return unitKey(r.t, r.b.Identity(name)) }

func newRigTB(t testing.TB, lk *farend.LiveKit) *rig {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(filepath.Join(dir, "ca"), "test fleet CA")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := manager.GenerateKeys(c.Dir, false); err != nil {
		t.Fatal(err)
	}
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"room-1": nil, "room-2": nil}, CA: c})
	cert, key, err := c.IssueWithKey(ca.KindAdmin, "fleetd", nil, filepath.Join(dir, "fleetd"))
	if err != nil {
		t.Fatal(err)
	}
	key2, secret := "k", "s"
	if lk != nil {
		key2, secret = lk.APIKey, lk.APISecret
	}
	cfg := &Config{
		Database: filepath.Join(dir, "db", "fleetd.db"),
		CADir:    c.Dir,
		Socket:   filepath.Join(dir, "run", "fleetd.sock"),
		Broker:   BrokerConfig{URL: b.SharedURL(), CA: b.CAFile(), Cert: cert, CertKey: key},
		LiveKit:  LiveKitConfig{APIKey: key2, APISecret: secret},
		Units:    map[string]UnitConfig{"room-1": {StandingRoom: "standing-1"}},
	}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, b: b, ca: c, cfg: cfg, topics: link.Topics{Prefix: "konsult"}}
	r.start()
	return r
}

func (r *rig) start() {
	r.t.Helper()
	svc, err := New(r.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.svc, r.cancel, r.done = svc, cancel, make(chan error, 1)
	go func() { r.done <- svc.Run(ctx) }()
	select {
	case <-svc.Ready():
	case err := <-r.done:
		r.t.Fatalf("fleetd: %v", err)
	case <-time.After(15 * time.Second):
		r.t.Fatal("fleetd did not connect")
	}
	r.t.Cleanup(r.stop)
}

func (r *rig) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.svc.Close()
	r.cancel = nil
}

func unitKey(t testing.TB, id brokertest.Identity) *ecdsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(id.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// unit is one unit's MQTT client, listening on its own token topic.
type unit struct {
	name string
	key  *ecdsa.PrivateKey
	c    mqtt.Client
	in   chan []byte
}

func (r *rig) unit(name string) *unit {
	r.t.Helper()
	u := &unit{name: name, key: unitKey(r.t, r.b.Identity(name)), c: r.b.UnitClient(r.t, name), in: make(chan []byte, 16)}
	tok := u.c.Subscribe(r.topics.Token(name), 1, func(_ mqtt.Client, m mqtt.Message) { u.in <- m.Payload() })
	tok.Wait()
	if err := tok.Error(); err != nil {
		r.t.Fatal(err)
	}
	return u
}

// ask publishes a token request (signed with signer, on topicUnit's topic,
// for device) and waits up to wait for an answer.
func (r *rig) ask(u *unit, topicUnit, consultation string, wait time.Duration) (fleet.TokenResponse, bool) {
	r.t.Helper()
	req, err := fleet.SignTokenRequest(u.key, fleet.TokenRequest{Device: topicUnit, Consultation: consultation, Nonce: fleet.NewNonce(), At: time.Now()})
	if err != nil {
		r.t.Fatal(err)
	}
	u.c.Publish(r.topics.TokenRequest(topicUnit), 1, false, req).Wait()
	select {
	case b := <-u.in:
		resp, err := fleet.ParseTokenResponse(b)
		if err != nil {
			r.t.Fatal(err)
		}
		return resp, true
	case <-time.After(wait):
		return fleet.TokenResponse{}, false
	}
}

func (r *rig) grant(u *unit, consultation string) fleet.TokenGrant {
	r.t.Helper()
	resp, ok := r.ask(u, u.name, consultation, 10*time.Second)
	if !ok {
		r.t.Fatal("no answer from fleetd")
	}
	g, err := fleet.OpenTokenGrant(u.key, u.name, resp)
	if err != nil {
		r.t.Fatal(err)
	}
	return g
}

func twirp(t *testing.T, lk *farend.LiveKit, method, token string, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, lk.URL+"/twirp/livekit.RoomService/"+method, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func validate(t *testing.T, lk *farend.LiveKit, token string) int {
	t.Helper()
	resp, err := http.Get(lk.URL + "/rtc/validate?access_token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// withRoom re-encodes a token's claims with another room, keeping the
// signature: what a stolen unit would try.
func withRoom(t *testing.T, tok, from, to string) string {
	parts := strings.Split(tok, ".")
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(bytes.Replace(claims, []byte(`"room":"`+from+`"`), []byte(`"room":"`+to+`"`), 1))
	return strings.Join(parts, ".")
}

func TestUnitTokenIsForItsConsultationOnlyAndLiveKitRefusesTheRest(t *testing.T) {
	lk := farend.StartLiveKit(t)
	r := newRig(t, lk)
	ctx := context.Background()
	now := time.Now()
	a, err := r.svc.Add(ctx, AddRequest{Unit: "room-1", Start: now.Add(5 * time.Minute), End: now.Add(35 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := r.svc.Add(ctx, AddRequest{Unit: "room-2", Start: now, End: now.Add(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	u1 := r.unit("room-1")
	g := r.grant(u1, a.ID)
	if g.Room != a.Room || g.Consultation != a.ID {
		t.Fatalf("grant for %q/%q, want room %q", g.Room, g.Consultation, a.Room)
	}
	// The consultation's end-to-end key K is in the sealed grant, the same
	// as the patient link's third part.
	if parts := strings.Split(a.PatientLink, "."); len(g.E2EEKey) != 32 || base64.RawURLEncoding.EncodeToString(g.E2EEKey) != parts[len(parts)-1] {
		t.Fatalf("grant's E2EE key (%d bytes) is not the link's K", len(g.E2EEKey))
	}
	if ttl := time.Until(g.Expires); ttl > MaxTokenTTL+time.Second || ttl < MaxTokenTTL-time.Minute {
		t.Fatalf("token valid for %s, want ≤ %s", ttl, MaxTokenTTL)
	}
	if code := validate(t, lk, g.Token); code != http.StatusOK {
		t.Fatalf("LiveKit refused the unit's own token: %d", code)
	}
	// Another room: the claim cannot be changed without the secret.
	if code := validate(t, lk, withRoom(t, g.Token, a.Room, other.Room)); code == http.StatusOK {
		t.Fatal("LiveKit let a token edited for another room join")
	}
	// No room list, no admin, no room creation, no recording.
	for _, m := range []struct{ method, body string }{
		{"ListRooms", `{}`},
		{"ListParticipants", `{"room":"` + a.Room + `"}`},
		{"CreateRoom", `{"name":"` + other.Room + `"}`},
		{"DeleteRoom", `{"room":"` + a.Room + `"}`},
		{"RemoveParticipant", `{"room":"` + a.Room + `","identity":"room-2"}`},
		{"MutePublishedTrack", `{"room":"` + a.Room + `","identity":"room-1","track_sid":"TR_x","muted":true}`},
	} {
		if code := twirp(t, lk, m.method, g.Token, m.body); code == http.StatusOK {
			t.Errorf("LiveKit let the unit's token call %s", m.method)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, lk.URL+"/twirp/livekit.Egress/StartRoomCompositeEgress", strings.NewReader(`{"room_name":"`+a.Room+`"}`))
	req.Header.Set("Authorization", "Bearer "+g.Token)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("LiveKit let the unit's token start a recording")
		}
	}
	// A unit cannot ask for another unit's consultation by id.
	resp, ok := r.ask(u1, "room-1", other.ID, 10*time.Second)
	if !ok || resp.Error == "" || len(resp.Sealed) > 0 {
		t.Fatalf("room-1 asked for room-2's consultation: %+v", resp)
	}
	// Standing meeting from fleetd's config; room-2 has none.
	if g := r.grant(u1, fleet.StandingMeeting); g.Room != "standing-1" {
		t.Fatalf("standing room %q", g.Room)
	}
}

func TestTokenRequestWithAnotherUnitsCertificateFails(t *testing.T) {
	r := newRig(t, nil)
	now := time.Now()
	a, err := r.svc.Add(context.Background(), AddRequest{Unit: "room-1", Start: now, End: now.Add(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	u1, u2 := r.unit("room-1"), r.unit("room-2")
	// room-2 on room-1's request topic: the broker's ACL drops it, and
	// nothing is answered on room-1's topic either.
	if resp, ok := r.ask(u2, "room-1", a.ID, 2*time.Second); ok {
		t.Fatalf("room-2 got an answer on room-1's behalf: %+v", resp)
	}
	select {
	case b := <-u1.in:
		t.Fatalf("room-1 got an answer it did not ask for: %s", b)
	default:
	}
	// On a broker with a loose ACL fleetd itself refuses: the key is not
	// room-1's.
	req, _ := fleet.SignTokenRequest(u2.key, fleet.TokenRequest{Device: "room-1", Consultation: a.ID, Nonce: fleet.NewNonce(), At: time.Now()})
	resp, err := r.svc.Issue(context.Background(), "room-1", req)
	if err == nil || bytes.Contains(resp, []byte("sealed")) {
		t.Fatalf("fleetd issued room-1's token to room-2's key: %s", resp)
	}
	// Nor does a sealed answer open with another unit's key.
	resp2, ok := r.ask(u1, "room-1", a.ID, 10*time.Second)
	if !ok {
		t.Fatal("no answer")
	}
	if _, err := fleet.OpenTokenGrant(u2.key, "room-1", resp2); err == nil {
		t.Fatal("room-2's key opened room-1's token")
	}
	if _, err := fleet.OpenTokenGrant(u1.key, "room-1", resp2); err != nil {
		t.Fatal(err)
	}
}

func TestRevokedUnitGetsNoNewToken(t *testing.T) {
	r := newRig(t, nil)
	u1 := r.unit("room-1")
	r.grant(u1, fleet.StandingMeeting)
	if _, err := r.ca.Revoke("room-1", "stolen"); err != nil {
		t.Fatal(err)
	}
	// The broker still lets it in until Mosquitto restarts; fleetd does not.
	resp, ok := r.ask(u1, "room-1", fleet.StandingMeeting, 10*time.Second)
	if !ok || resp.Error == "" || len(resp.Sealed) != 0 {
		t.Fatalf("a revoked unit got %+v", resp)
	}
}

func TestBrokerSubscriberSeesOnlyCiphertext(t *testing.T) {
	r := newRig(t, nil)
	var mu sync.Mutex
	var seen [][]byte
	spy := r.b.Client(t, "fleet-admin")
	spy.Subscribe("konsult/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		seen = append(seen, m.Payload())
		mu.Unlock()
	}).Wait()
	u1 := r.unit("room-1")
	g := r.grant(u1, fleet.StandingMeeting)
	if g.E2EEKey != nil {
		t.Fatal("a standing meeting's grant carries an E2EE key")
	}
	now := time.Now()
	a, err := r.svc.Add(context.Background(), AddRequest{Unit: "room-1", Start: now, End: now.Add(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	gc := r.grant(u1, a.ID)
	if len(gc.E2EEKey) != 32 {
		t.Fatalf("the consultation's grant carries a %d-byte E2EE key, want 32", len(gc.E2EEKey))
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 {
		t.Fatalf("the spy saw %d messages, want the request and the answer", len(seen))
	}
	for _, p := range seen {
		if bytes.Contains(p, []byte(g.Token)) || bytes.Contains(p, []byte(strings.Split(g.Token, ".")[1])) || bytes.Contains(p, []byte("standing-1")) ||
			bytes.Contains(p, gc.E2EEKey) || bytes.Contains(p, []byte(base64.StdEncoding.EncodeToString(gc.E2EEKey))) || bytes.Contains(p, []byte(base64.RawURLEncoding.EncodeToString(gc.E2EEKey))) {
			t.Fatalf("the broker carried the token or its room in clear: %.80s", p)
		}
	}
}
