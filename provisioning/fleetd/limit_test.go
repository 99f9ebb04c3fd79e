package fleetd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

// A stolen card that asks for tokens in a loop gets tokenAsksPerMinute of
// them a minute and then refusals; the unit's next minute, and every other
// unit, are untouched.
func TestUnitTokenRequestsAreRateLimited(t *testing.T) {
	r := newRig(t, nil)
	u1, u2 := r.unit("room-1"), r.unit("room-2")
	// A second Service on the rig's database and CA, not running: its
	// clock can be moved without racing the running one's loops.
	svc, err := New(r.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	now := time.Now()
	svc.Now = func() time.Time { return now }
	c2, err := svc.Add(context.Background(), AddRequest{Unit: "room-2", Start: now, End: now.Add(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(u *unit) ([]byte, error) {
		consultation := fleet.StandingMeeting
		if u == u2 {
			consultation = c2.ID
		}
		req, err := fleet.SignTokenRequest(u.key, fleet.TokenRequest{Device: u.name, Consultation: consultation, Nonce: fleet.NewNonce(), At: now})
		if err != nil {
			t.Fatal(err)
		}
		return svc.Issue(context.Background(), u.name, req)
	}
	for i := range tokenAsksPerMinute {
		if resp, err := ask(u1); err != nil || !strings.Contains(string(resp), "sealed") {
			t.Fatalf("request %d of a minute refused: %v %s", i+1, err, resp)
		}
	}
	resp, err := ask(u1)
	if !errors.Is(err, ErrTooManyAsks) || strings.Contains(string(resp), "sealed") {
		t.Fatalf("request %d in a minute: %v %s; want a refusal", tokenAsksPerMinute+1, err, resp)
	}
	if refusal, perr := fleet.ParseTokenResponse(resp); perr != nil || !strings.Contains(refusal.Error, "wait a minute") {
		t.Errorf("the unit is not told why: %+v %v", refusal, perr)
	}
	if resp, err := ask(u2); err != nil || !strings.Contains(string(resp), "sealed") {
		t.Fatalf("another unit refused because of room-1: %v %s", err, resp)
	}
	now = now.Add(61 * time.Second)
	if resp, err := ask(u1); err != nil || !strings.Contains(string(resp), "sealed") {
		t.Fatalf("a minute later: %v %s", err, resp)
	}
}

// Behind a reverse proxy every patient arrives from the proxy's address.
// Counted by that, one guesser locks every patient out for a minute; with
// the proxy trusted, wrong links count by the address it forwarded, and a
// client's own X-Forwarded-For is never believed.
func TestWrongLinksCountedPerPatientBehindAProxy(t *testing.T) {
	r := newPatientRig(t, nil, nil)
	now := time.Now()
	_, id, secret, _ := r.book(t, now.Add(-time.Hour), now.Add(-time.Minute)) // expired: a right secret answers "expired"
	r.svc.cfg.PatientWeb.TrustedProxies = []string{"10.0.0.7", "192.0.2.0/24"}
	if err := r.svc.cfg.checkPatientWeb(); err != nil {
		t.Fatal(err)
	}
	h := r.svc.PatientHandler()
	post := func(remote, xff, sec string) string {
		req := httptest.NewRequest(http.MethodPost, "https://clinic.example/join/token", strings.NewReader(`{"id":"`+id+`","secret":"`+sec+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = remote
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Body.String()
	}
	// The guesser, through the proxy, spoofing an address on the left.
	for range badLimit {
		post("10.0.0.7:4000", "198.51.100.1, 203.0.113.66", "guess")
	}
	if b := post("10.0.0.7:4000", "203.0.113.66", secret); !strings.Contains(b, JoinSlowDown) {
		t.Errorf("the guesser is not slowed down: %s", b)
	}
	if b := post("10.0.0.7:4001", "198.51.100.1", secret); !strings.Contains(b, JoinExpired) {
		t.Errorf("another patient behind the same proxy is locked out by the guesser: %s", b)
	}
	// Through two trusted hops, the client is the first untrusted address.
	if b := post("10.0.0.7:4002", "203.0.113.66, 192.0.2.9", secret); !strings.Contains(b, JoinSlowDown) {
		t.Errorf("the guesser behind two proxies is not recognised: %s", b)
	}
	// Not from a trusted proxy: X-Forwarded-For is the client's own say.
	for range badLimit {
		post("198.51.100.20:5000", "203.0.113.1", "guess")
	}
	if b := post("198.51.100.20:5001", "203.0.113.2", secret); !strings.Contains(b, JoinSlowDown) {
		t.Errorf("a direct client escapes the count by sending X-Forwarded-For: %s", b)
	}
	// A phone's IPv6 /64 is one patient, whatever address it picks.
	for i := range badLimit {
		post("[2001:db8:1:2::"+string(rune('a'+i))+"]:6000", "", "guess")
	}
	if b := post("[2001:db8:1:2::ff]:6000", "", secret); !strings.Contains(b, JoinSlowDown) {
		t.Errorf("new addresses in one /64 escape the count: %s", b)
	}
	if b := post("[2001:db8:1:3::1]:6000", "", secret); !strings.Contains(b, JoinExpired) {
		t.Errorf("the next /64 is locked out too: %s", b)
	}
}

func TestTrustedProxiesConfig(t *testing.T) {
	cfg := PatientWebConfig{Listen: ":8443", Cert: "c", Key: "k", Clinic: testClinic, LiveKitURL: "wss://lk.example", TrustedProxies: []string{"10.0.0.0/8", "::1", "nonsense"}}
	c := &Config{PatientWeb: cfg}
	err := c.checkPatientWeb()
	if err == nil || !strings.Contains(err.Error(), `"nonsense"`) || !strings.Contains(err.Error(), "trusted_proxies") {
		t.Fatalf("a bad trusted_proxies entry: %v", err)
	}
	c.PatientWeb.TrustedProxies = []string{"10.0.0.0/8", "::1"}
	if err := c.checkPatientWeb(); err != nil {
		t.Fatal(err)
	}
	if got := c.PatientWeb.proxies; len(got) != 2 || !got[1].Contains(netip.MustParseAddr("::1")) {
		t.Fatalf("parsed %v", got)
	}
}
