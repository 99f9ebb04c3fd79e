package fleetd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/screentest"
	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/manager"
)

const testClinic = "Huisartsenpraktijk De Linde"

// patientRig is fleetd's patient web over TLS (httptest's certificate) on
// loopback, with no broker: the page and the token exchange only.
type patientRig struct {
	svc *Service
	srv *httptest.Server
	log *syncbuf.Buffer
	now time.Time
}

func clientDir(t testing.TB) string {
	wd, _ := os.Getwd()
	d := filepath.Join(wd, "..", "..", ".cache", "npm", "node_modules", "livekit-client", "dist")
	if _, err := os.Stat(filepath.Join(d, "livekit-client.umd.js")); err != nil {
		msg := "livekit-client not in .cache/npm (.ci/farend-setup.sh installs it)"
		if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return d
}

func newPatientRig(t testing.TB, lk *farend.LiveKit, wrap func(http.Handler) http.Handler) *patientRig {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(filepath.Join(dir, "ca"), "test fleet CA")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := manager.GenerateKeys(c.Dir, false); err != nil {
		t.Fatal(err)
	}
	key, secret, ws := "k", "s", "ws://127.0.0.1:9"
	if lk != nil {
		key, secret, ws = lk.APIKey, lk.APISecret, lk.WSURL
	}
	cfg := &Config{
		Database:   filepath.Join(dir, "fleetd.db"),
		CADir:      c.Dir,
		Broker:     BrokerConfig{URL: "mqtt://127.0.0.1:9"},
		LiveKit:    LiveKitConfig{APIKey: key, APISecret: secret},
		PatientWeb: PatientWebConfig{Listen: "127.0.0.1:0", Cert: "unused", Key: "unused", Clinic: testClinic, LiveKitURL: ws, ClientDir: clientDir(t)},
	}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	log := &syncbuf.Buffer{}
	svc, err := New(cfg, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	r := &patientRig{svc: svc, log: log, now: time.Now()}
	svc.Now = func() time.Time { return time.Now() }
	var h http.Handler = svc.PatientHandler()
	if wrap != nil {
		h = wrap(h)
	}
	r.srv = httptest.NewTLSServer(h)
	t.Cleanup(r.srv.Close)
	return r
}

// book adds a consultation from start to end and returns it and its link's
// fragment parts.
func (r *patientRig) book(t testing.TB, start, end time.Time) (Added, string, string, string) {
	t.Helper()
	a, err := r.svc.Add(context.Background(), AddRequest{Unit: "room-1", Start: start, End: end})
	if err != nil {
		t.Fatal(err)
	}
	_, frag, ok := strings.Cut(a.PatientLink, "#")
	if !ok {
		t.Fatalf("link %q has no fragment", a.PatientLink)
	}
	p := strings.Split(frag, ".")
	if len(p) != 3 {
		t.Fatalf("link fragment has %d parts, want ID.SECRET.K", len(p))
	}
	return a, p[0], p[1], p[2]
}

func (r *patientRig) exchange(t *testing.T, id, secret string) (JoinAnswer, int) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"id": id, "secret": secret})
	resp, err := r.srv.Client().Post(r.srv.URL+"/join/token", "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a JoinAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatal(err)
	}
	return a, resp.StatusCode
}

func TestPatientLinkCarriesKAndItIsPurgedAfterTheWindow(t *testing.T) {
	r := newPatientRig(t, nil, nil)
	now := time.Now()
	a, _, _, k := r.book(t, now.Add(-time.Hour), now.Add(-10*time.Minute))
	kb, err := base64.RawURLEncoding.DecodeString(k)
	if err != nil || len(kb) != 32 || len(k) != 43 {
		t.Fatalf("K in the link: %d chars, %d bytes, %v; want 43 chars of base64url, 32 bytes", len(k), len(kb), err)
	}
	stored, err := r.svc.Store().E2EEKey(context.Background(), a.ID)
	if err != nil || string(stored) != string(kb) {
		t.Fatalf("stored key differs from the link's (%v)", err)
	}
	b, _, _, k2 := r.book(t, now.Add(time.Hour), now.Add(2*time.Hour))
	if k2 == k {
		t.Fatal("two consultations share a key")
	}
	if n, err := r.svc.Store().PurgeKeys(context.Background(), now); err != nil || n != 1 {
		t.Fatalf("purge: %d, %v; want the one ended consultation's key", n, err)
	}
	if stored, _ := r.svc.Store().E2EEKey(context.Background(), a.ID); stored != nil {
		t.Fatal("the ended consultation's key is still stored")
	}
	if stored, _ := r.svc.Store().E2EEKey(context.Background(), b.ID); len(stored) != 32 {
		t.Fatal("the coming consultation's key was purged")
	}
	if strings.Contains(r.log.String(), k) || strings.Contains(r.log.String(), k2) {
		t.Fatal("a key is in fleetd's log")
	}
}

func TestPatientTokenRefusals(t *testing.T) {
	r := newPatientRig(t, nil, nil)
	now := time.Now()
	_, idOld, secOld, _ := r.book(t, now.Add(-time.Hour), now.Add(-time.Minute))
	_, idLate, secLate, _ := r.book(t, now.Add(20*time.Minute), now.Add(50*time.Minute))
	cancelled, idC, secC, _ := r.book(t, now, now.Add(30*time.Minute))
	if _, err := r.svc.Store().Cancel(context.Background(), cancelled.ID, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, id, secret, want string
		code                   int
	}{
		{"expired", idOld, secOld, JoinExpired, http.StatusGone},
		{"too early", idLate, secLate, JoinEarly, http.StatusForbidden},
		{"cancelled", idC, secC, JoinCancelled, http.StatusGone},
		{"wrong secret", idOld, secLate, JoinUnknown, http.StatusNotFound},
		{"unknown id", "c-nosuchthing", secOld, JoinUnknown, http.StatusNotFound},
	} {
		a, code := r.exchange(t, c.id, c.secret)
		if a.Error != c.want || code != c.code || a.Token != "" {
			t.Errorf("%s: %d %q (token %v); want %d %q and no token", c.name, code, a.Error, a.Token != "", c.code, c.want)
		}
	}
	// Two wrong ones were counted above; three more reach the limit, and
	// then even the right secret is refused from that address.
	for range 3 {
		r.exchange(t, idOld, "guess")
	}
	if a, code := r.exchange(t, idOld, secOld); a.Error != JoinSlowDown || code != http.StatusTooManyRequests {
		t.Fatalf("after %d wrong secrets: %d %q; want 429 %q", badLimit, code, a.Error, JoinSlowDown)
	}
	for _, s := range []string{secOld, secLate, secC} {
		if strings.Contains(r.log.String(), s) {
			t.Fatal("a patient secret is in fleetd's log")
		}
	}
}

func TestPatientPageHeaders(t *testing.T) {
	r := newPatientRig(t, nil, nil)
	for _, p := range []string{"/join", "/join/assets/patient.js", "/join/lib/livekit-client.umd.js", "/join/lib/livekit-client.e2ee.worker.js"} {
		resp, err := r.srv.Client().Get(r.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		h := resp.Header
		csp := h.Get("Content-Security-Policy")
		if resp.StatusCode != 200 || n == 0 {
			t.Errorf("%s: %s, %d bytes", p, resp.Status, n)
		}
		if h.Get("Referrer-Policy") != "no-referrer" || !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self';") || strings.Contains(csp, "unsafe") {
			t.Errorf("%s: Referrer-Policy %q, CSP %q", p, h.Get("Referrer-Policy"), csp)
		}
		t.Logf("%s: %d bytes", p, n)
	}
}

// page opens the patient page at link in its own Chromium with fake
// devices; lang is its browser language; deny refuses camera and mic.
func (r *patientRig) page(t testing.TB, frag, lang string, deny bool) *screentest.Browser {
	t.Helper()
	flags := []string{"--use-fake-device-for-media-stream", "--ignore-certificate-errors", "--lang=" + lang, "--accept-lang=" + lang}
	if !deny {
		flags = append(flags, "--use-fake-ui-for-media-stream")
	}
	b := screentest.Start(t, "about:blank", 800, 600, flags...)
	if deny {
		b.Call("Browser.setPermission", map[string]any{"permission": map[string]any{"name": "camera"}, "setting": "denied"})
		b.Call("Browser.setPermission", map[string]any{"permission": map[string]any{"name": "microphone"}, "setting": "denied"})
	}
	b.Navigate(r.srv.URL + "/join#" + frag)
	return b
}

func state(t testing.TB, b *screentest.Browser, want string, d time.Duration) {
	t.Helper()
	screentest.WaitUntil(t, b, "page state "+want, d, "(document.body && document.body.dataset.state) || ''", func(s string) bool { return s == want })
}

func TestPatientNoticeInEachLanguage(t *testing.T) {
	r := newPatientRig(t, nil, nil)
	now := time.Now()
	_, id, sec, k := r.book(t, now, now.Add(30*time.Minute))
	// What each language's notice must say: the clinic, end-to-end
	// encryption, no recording, how to leave.
	words := map[string][]string{
		"nl": {"verwerkt door " + testClinic, "end-to-end versleuteld", "niets opgenomen", "Verlaten"},
		"es": {"trata " + testClinic, "cifrada de extremo a extremo", "No se graba nada", "Salir"},
		"nb": {"behandles av " + testClinic, "ende-til-ende-kryptert", "Ingenting blir tatt opp", "Forlat"},
		"en": {"processed by " + testClinic, "encrypted end to end", "Nothing is recorded", "Leave"},
	}
	b := r.page(t, id+"."+sec+"."+k, "es", false)
	state(t, b, "notice", 20*time.Second)
	order := []string{"es", "nl", "nb", "en"} // es by the browser's language, then switched
	for i, l := range order {
		if i > 0 {
			b.Eval(fmt.Sprintf(`(()=>{const s=document.getElementById('lang'); s.value=%q; s.dispatchEvent(new Event('change')); return true})()`, l), nil)
		}
		var text, lang string
		b.Eval(`document.getElementById('notice').innerText`, &text)
		b.Eval(`document.documentElement.lang`, &lang)
		if lang != l {
			t.Errorf("page language %q, want %q", lang, l)
		}
		for _, w := range words[l] {
			if !strings.Contains(text, w) {
				t.Errorf("%s notice lacks %q:\n%s", l, w, text)
			}
		}
	}
	// The contract's test vector: K = 00..1f.
	var code string
	b.Eval(`konsultSafetyCode("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")`, &code)
	if code != "1978 4840" || code != goSafetyCode(seq32()) {
		t.Errorf("page's safety code of 00..1f: %q, want %q", code, goSafetyCode(seq32()))
	}
}

func seq32() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// goSafetyCode is the contract's safety code, written here from its text
// (media/e2ee.SafetyCode is the unit's; provisioning may not import media).
func goSafetyCode(k []byte) string {
	h := sha256.Sum256(append([]byte("konsult-safety-code-v1"), k...))
	s := fmt.Sprintf("%08d", binary.BigEndian.Uint64(h[:8])%100000000)
	return s[:4] + " " + s[4:]
}

type pageView struct {
	State  string  `json:"state"`
	E2EE   string  `json:"e2ee"`
	Frames int     `json:"frames"`
	Errors int     `json:"errors"`
	Code   string  `json:"code"`
	Text   string  `json:"text"`
	InCall float64 `json:"in_call"`
}

const viewExpr = `!window.konsult ? {} : ({state: document.body.dataset.state, e2ee: document.body.dataset.e2ee || "", frames: konsult.framesDecoded, errors: konsult.decryptErrors, code: konsult.code, in_call: konsult.tInCall, text: document.querySelector('main').innerText})`

func waitView(t testing.TB, b *screentest.Browser, what string, d time.Duration, ok func(pageView) bool) pageView {
	t.Helper()
	return screentest.WaitUntil(t, b, what, d, viewExpr, ok)
}

// TestPatientPagesEndToEnd: until the unit encrypts, two patient pages that
// share K decrypt each other; a page with another K decodes nothing and
// says it cannot decrypt; a patient who denies the camera joins listening
// and sees the room; a second join with a link in use, and an expired
// link, are refused with the patient's message; a clear publisher in the
// room makes the page warn.
func TestPatientPagesEndToEnd(t *testing.T) {
	clientDir(t)
	began := time.Now()
	defer func() { t.Logf("took %s", time.Since(began)) }()
	lk := farend.StartLiveKit(t)
	var room string
	extra := map[string]string{} // test ids → identities for the extra pages in the same room
	r := newPatientRig(t, lk, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
			if q.Method == http.MethodPost && q.URL.Path == "/join/token" {
				body, _ := io.ReadAll(q.Body)
				var req struct{ ID string }
				_ = json.Unmarshal(body, &req)
				if ident, ok := extra[req.ID]; ok {
					writeJSON(w, 200, JoinAnswer{Token: lk.Token(ident, room, true, true, 10*time.Minute), URL: lk.WSURL})
					return
				}
				q.Body = io.NopCloser(strings.NewReader(string(body)))
			}
			h.ServeHTTP(w, q)
		})
	})
	now := time.Now()
	a, id, sec, k := r.book(t, now.Add(5*time.Minute), now.Add(35*time.Minute)) // within the 10-minute lead
	room = a.Room
	extra["c-peer"], extra["c-wrong"], extra["c-listen"] = "peer", "wrong", "listen"
	wrong := make([]byte, 32)
	_, _ = rand.Read(wrong)
	kw := base64.RawURLEncoding.EncodeToString(wrong)

	t.Logf("%s at %s", "pa", time.Since(began))
	pa := r.page(t, id+"."+sec+"."+k, "en", false)
	state(t, pa, "notice", 20*time.Second)
	pa.Eval(`document.getElementById('continue').click(), true`, nil)
	state(t, pa, "prejoin", 20*time.Second)
	var pickers struct{ Cams, Mics int }
	pa.Eval(`({cams: document.getElementById('cam').options.length, mics: document.getElementById('mic').options.length})`, &pickers)
	if pickers.Cams == 0 || pickers.Mics == 0 {
		t.Errorf("device pickers: %d cameras, %d microphones", pickers.Cams, pickers.Mics)
	}
	pa.Eval(`document.getElementById('join').click(), true`, nil)

	t.Logf("%s at %s", "pb", time.Since(began))
	pb := r.page(t, "c-peer.x."+k, "nl", false)
	state(t, pb, "notice", 20*time.Second)
	pb.Eval(`document.getElementById('continue').click(), true`, nil)
	state(t, pb, "prejoin", 20*time.Second)
	pb.Eval(`document.getElementById('join').click(), true`, nil)

	t0 := time.Now()
	va := waitView(t, pa, "patient A decrypts B", 40*time.Second, func(v pageView) bool { return v.E2EE == "ok" })
	vb := waitView(t, pb, "page B decrypts A", 40*time.Second, func(v pageView) bool { return v.E2EE == "ok" })
	t.Logf("both decrypt %s after B's join click", time.Since(t0).Round(time.Millisecond))
	kb, _ := base64.RawURLEncoding.DecodeString(k)
	if va.Code != goSafetyCode(kb) || vb.Code != va.Code || !strings.Contains(va.Text, "Safety code: "+va.Code) {
		t.Errorf("safety codes: A %q, B %q, want %q shown", va.Code, vb.Code, goSafetyCode(kb))
	}
	t.Logf("page load → in call: %.0f ms (A), %.0f ms (B, including the clicks)", va.InCall, vb.InCall)

	// The wrong key: nothing decoded, "cannot decrypt".
	t.Logf("%s at %s", "pw", time.Since(began))
	pw := r.page(t, "c-wrong.x."+kw, "en", false)
	state(t, pw, "notice", 20*time.Second)
	pw.Eval(`document.getElementById('continue').click(), true`, nil)
	state(t, pw, "prejoin", 20*time.Second)
	pw.Eval(`document.getElementById('join').click(), true`, nil)
	t0 = time.Now()
	vw := waitView(t, pw, "wrong key says it cannot decrypt", 40*time.Second, func(v pageView) bool { return v.E2EE == "cannot_decrypt" })
	t.Logf("wrong key: cannot decrypt after %s", time.Since(t0).Round(time.Millisecond))
	if vw.Frames != 0 || !strings.Contains(vw.Text, "cannot be decrypted") {
		t.Errorf("wrong key: %d frames decoded, text %q", vw.Frames, vw.Text)
	}
	// It leaves: a page that cannot decrypt someone's tracks says so, and
	// the pages below are to decrypt everyone in the room.
	pw.Eval(`document.getElementById('leave').click(), true`, nil)
	state(t, pw, "left", 10*time.Second)

	// Camera and microphone denied: the message, then a listen-only join
	// that sees the room.
	t.Logf("%s at %s", "pl", time.Since(began))
	pl := r.page(t, "c-listen.x."+k, "en", true)
	state(t, pl, "notice", 20*time.Second)
	pl.Eval(`document.getElementById('continue').click(), true`, nil)
	state(t, pl, "denied", 20*time.Second)
	var denied string
	pl.Eval(`document.getElementById('denied').innerText`, &denied)
	if !strings.Contains(denied, "will not see or hear you") {
		t.Errorf("denied message: %q", denied)
	}
	pl.Eval(`document.getElementById('join-listen').click(), true`, nil)
	waitView(t, pl, "listen-only page decrypts the room", 40*time.Second, func(v pageView) bool { return v.State == "call" && v.E2EE == "ok" })
	ids, err := lk.Participants(context.Background(), room)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("in the room: %v", ids)

	// The same link again while A is in the call: refused.
	t.Logf("%s at %s", "pr", time.Since(began))
	pr := r.page(t, id+"."+sec+"."+k, "en", false)
	state(t, pr, "notice", 20*time.Second)
	pr.Eval(`document.getElementById('continue').click(), true`, nil)
	state(t, pr, "prejoin", 20*time.Second)
	pr.Eval(`document.getElementById('join').click(), true`, nil)
	vr := waitView(t, pr, "a link in use is refused", 20*time.Second, func(v pageView) bool { return v.State == "refused" })
	if !strings.Contains(vr.Text, "Someone is already in this consultation") {
		t.Errorf("in use: %q", vr.Text)
	}
	// Once A has left, the same link works again (a reload, a dropped
	// phone, another device).
	pa.Eval(`document.getElementById('leave').click(), true`, nil)
	state(t, pa, "left", 10*time.Second)
	pr.Navigate(r.srv.URL + "/join?again#" + id + "." + sec + "." + k)
	state(t, pr, "notice", 20*time.Second)
	pr.Eval(`document.getElementById('continue').click(), true`, nil)
	state(t, pr, "prejoin", 20*time.Second)
	pr.Eval(`document.getElementById('join').click(), true`, nil)
	waitView(t, pr, "the link works again after its patient left", 30*time.Second, func(v pageView) bool { return v.State == "call" && v.E2EE == "ok" })

	// An expired link.
	_, ido, seco, ko := r.book(t, now.Add(-time.Hour), now.Add(-time.Minute))
	t.Logf("%s at %s", "pe", time.Since(began))
	pe := pw // the wrong-key page's browser, reused
	pe.Navigate(r.srv.URL + "/join?expired#" + ido + "." + seco + "." + ko)
	state(t, pe, "notice", 20*time.Second)
	pe.Eval(`(()=>{const s=document.getElementById('lang'); s.value='nl'; s.dispatchEvent(new Event('change')); return true})()`, nil)
	pe.Eval(`document.getElementById('continue').click(), true`, nil)
	state(t, pe, "prejoin", 20*time.Second)
	pe.Eval(`document.getElementById('join').click(), true`, nil)
	ve := waitView(t, pe, "an expired link is refused", 20*time.Second, func(v pageView) bool { return v.State == "refused" })
	if !strings.Contains(ve.Text, "Dit consult is voorbij") {
		t.Errorf("expired: %q", ve.Text)
	}
	// Someone publishing in clear joins: the page no longer says the call
	// is encrypted end to end, it warns.
	farend.StartFarEnd(t, lk, room, "clear-publisher", farend.Publish())
	vc := waitView(t, pb, "a clear publisher makes the page warn", 45*time.Second, func(v pageView) bool { return v.E2EE == "clear" })
	if strings.Contains(vc.Text, "Encrypted end to end") || !strings.Contains(vc.Text, "niet end-to-end versleuteld") {
		t.Errorf("with a clear publisher: %q", vc.Text)
	}
	for _, s := range []string{sec, k, seco} {
		if strings.Contains(r.log.String(), s) {
			t.Fatal("a secret or key is in fleetd's log")
		}
	}
}

// The indicator covers audio too: with the room's picture decrypting, a
// track of sound that cannot be decrypted makes the page say so, and one
// announced in clear makes it warn. (livekit-client encrypts all of one
// participant's tracks with one key, so the sound comes from a second
// publisher; the page holds every remote track to the same rule.)
func TestPatientPageIndicatorCoversAudio(t *testing.T) {
	clientDir(t)
	lk := farend.StartLiveKit(t)
	var room string
	r := newPatientRig(t, lk, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
			if q.Method == http.MethodPost && q.URL.Path == "/join/token" {
				body, _ := io.ReadAll(q.Body)
				if strings.Contains(string(body), `"c-room"`) {
					writeJSON(w, 200, JoinAnswer{Token: lk.Token("room-picture", room, true, true, 10*time.Minute), URL: lk.WSURL})
					return
				}
				q.Body = io.NopCloser(strings.NewReader(string(body)))
			}
			h.ServeHTTP(w, q)
		})
	})
	now := time.Now()
	a, id, sec, k := r.book(t, now.Add(5*time.Minute), now.Add(35*time.Minute))
	room = a.Room
	join := func(frag, lang string) *screentest.Browser {
		p := r.page(t, frag, lang, false)
		state(t, p, "notice", 20*time.Second)
		p.Eval(`document.getElementById('continue').click(), true`, nil)
		state(t, p, "prejoin", 20*time.Second)
		p.Eval(`document.getElementById('join').click(), true`, nil)
		return p
	}
	pa := join(id+"."+sec+"."+k, "en")
	join("c-room.x."+k, "en") // stands in for the unit: picture and sound under K
	waitView(t, pa, "the patient decrypts the room", 40*time.Second, func(v pageView) bool { return v.E2EE == "ok" })

	// Sound under another key: the picture still decodes, the page no
	// longer says encrypted end to end.
	wrong := make([]byte, 32)
	_, _ = rand.Read(wrong)
	fw := farend.StartFarEnd(t, lk, room, "sound-wrong-key", farend.PublishSignal(farend.Signal{Level: 0.3}), farend.E2EE(wrong))
	t0 := time.Now()
	vw := waitView(t, pa, "sound that cannot be decrypted", 40*time.Second, func(v pageView) bool { return v.E2EE == "cannot_decrypt" })
	t.Logf("cannot_decrypt %s after the sound's publisher started", time.Since(t0).Round(time.Millisecond))
	if vw.Frames == 0 || !strings.Contains(vw.Text, "picture or sound") || strings.Contains(vw.Text, "Encrypted end to end") {
		t.Errorf("undecryptable sound: %d video frames decoded, text %q", vw.Frames, vw.Text)
	}
	fw.Close()
	waitView(t, pa, "back to encrypted once it left", 40*time.Second, func(v pageView) bool { return v.E2EE == "ok" })

	// Sound in clear: the page warns.
	farend.StartFarEnd(t, lk, room, "sound-in-clear", farend.PublishSignal(farend.Signal{Level: 0.3}))
	t0 = time.Now()
	vc := waitView(t, pa, "sound in clear", 40*time.Second, func(v pageView) bool { return v.E2EE == "clear" })
	t.Logf("clear %s after the clear sound's publisher started", time.Since(t0).Round(time.Millisecond))
	if strings.Contains(vc.Text, "Encrypted end to end") || !strings.Contains(vc.Text, "not encrypted end to end") {
		t.Errorf("sound in clear: %q", vc.Text)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "patient web test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "patient.crt"), filepath.Join(dir, "patient.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

// TestPatientWebServesHTTPSOnly: fleetd's own listener ([patient_web]
// listen, cert, key) answers over TLS with the configured certificate, and
// a plain-HTTP request to it gets no page.
func TestPatientWebServesHTTPSOnly(t *testing.T) {
	r := newPatientRig(t, nil, nil)
	cert, key, pool := selfSigned(t, t.TempDir())
	if err := r.svc.CheckPatientWeb(); err == nil {
		t.Fatal("CheckPatientWeb passed without a certificate")
	}
	r.svc.cfg.PatientWeb.Cert, r.svc.cfg.PatientWeb.Key = cert, key
	if err := r.svc.CheckPatientWeb(); err != nil {
		t.Fatalf("CheckPatientWeb: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.svc.ServePatient(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get("https://" + ln.Addr().String() + "/join")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `<section id="notice"`) || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("https /join: %s, %d bytes, Referrer-Policy %q", resp.Status, len(body), resp.Header.Get("Referrer-Policy"))
	}
	plain, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ln.Addr().String() + "/join")
	if err == nil {
		b, _ := io.ReadAll(plain.Body)
		plain.Body.Close()
		if strings.Contains(string(b), "notice") {
			t.Fatal("the page was served over plain HTTP")
		}
	}
}

func TestPatientWebConfigChecks(t *testing.T) {
	base := func() *Config {
		return &Config{Database: "/x/db", CADir: "/x/ca", Broker: BrokerConfig{URL: "mqtt://127.0.0.1:1"}, LiveKit: LiveKitConfig{APIKey: "k", APISecret: "s"},
			PatientWeb: PatientWebConfig{Listen: ":8443", Cert: "/c", Key: "/k", Clinic: "C", LiveKitURL: "wss://lk.example"}}
	}
	if err := base().check(); err != nil {
		t.Fatalf("a good [patient_web]: %v", err)
	}
	for name, edit := range map[string]func(*Config){
		"no cert":                  func(c *Config) { c.PatientWeb.Cert = "" },
		"no clinic":                func(c *Config) { c.PatientWeb.Clinic = "" },
		"plain ws to a host":       func(c *Config) { c.PatientWeb.LiveKitURL = "ws://lk.example" },
		"http livekit":             func(c *Config) { c.PatientWeb.LiveKitURL = "https://lk.example" },
		"allow_origin over http":   func(c *Config) { c.PatientWeb.AllowOrigin = "http://clinic.example" },
		"allow_origin with a path": func(c *Config) { c.PatientWeb.AllowOrigin = "https://clinic.example/join" },
	} {
		c := base()
		edit(c)
		if err := c.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c := base()
	c.PatientWeb = PatientWebConfig{}
	if err := c.check(); err != nil || c.PatientWeb.ClientDir != DefaultLiveKitClientDir {
		t.Errorf("no [patient_web]: %v, client_dir %q", err, c.PatientWeb.ClientDir)
	}
}

// BenchmarkPatientPageToInCall: the patient page opened (navigation start)
// to "in call" (token exchanged, connected, camera and mic published), in
// Chromium with its fake devices, the clicks included; then Leave.
func BenchmarkPatientPageToInCall(b *testing.B) {
	clientDir(b)
	lk := farend.StartLiveKit(b)
	r := newPatientRig(b, lk, nil)
	now := time.Now()
	_, id, sec, k := r.book(b, now, now.Add(30*time.Minute))
	p := r.page(b, id+"."+sec+"."+k, "en", false)
	var total float64
	for i := 0; b.Loop(); i++ {
		if i > 0 {
			p.Navigate(r.srv.URL + fmt.Sprintf("/join?%d#", i) + id + "." + sec + "." + k)
		}
		state(b, p, "notice", 20*time.Second)
		p.Eval(`document.getElementById('continue').click(), true`, nil)
		state(b, p, "prejoin", 20*time.Second)
		p.Eval(`document.getElementById('join').click(), true`, nil)
		v := waitView(b, p, "in call", 30*time.Second, func(v pageView) bool { return v.State == "call" })
		total += v.InCall
		p.Eval(`document.getElementById('leave').click(), true`, nil)
		state(b, p, "left", 10*time.Second)
	}
	b.ReportMetric(total/float64(b.N), "ms-to-in-call")
}
