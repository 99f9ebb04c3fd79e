package fleetd

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/konsult/konsult/provisioning/fleetd/patientweb"
)

// The patient's page: static files (patientweb) served at /join over
// HTTPS, livekit-client's bundle and E2EE worker from a folder, and the
// exchange of the link's secret for a short patient token.

// DefaultLiveKitClientDir is where the Debian package puts livekit-client's
// dist files (livekit-client.umd.js, livekit-client.e2ee.worker.js).
const DefaultLiveKitClientDir = "/usr/share/konsult/livekit-client"

// PatientWebConfig is [patient_web] in fleetd.toml.
type PatientWebConfig struct {
	// Listen is the HTTPS address of the patient page (e.g. ":8443").
	// Empty: fleetd serves no page (another web server may, see
	// docs/FLEETD.md), and no token exchange.
	Listen string `toml:"listen"`
	Cert   string `toml:"cert"`
	Key    string `toml:"key"`
	// Clinic is the name the notice gives as who processes the call.
	Clinic string `toml:"clinic"`
	// LiveKitURL is the conference server the page connects to
	// (wss://…); fleetd also asks it who is in a room.
	LiveKitURL string `toml:"livekit_url"`
	// ClientDir holds livekit-client's livekit-client.umd.js and
	// livekit-client.e2ee.worker.js.
	ClientDir string `toml:"client_dir"`
	// AllowOrigin, if set, lets the page be served from another web
	// server at that origin (https://clinic.example) and still POST
	// /join/token here.
	AllowOrigin string `toml:"allow_origin"`
	// TrustedProxies are the reverse proxies (addresses or CIDR prefixes)
	// in front of fleetd. Wrong links are counted per patient address; a
	// request from one of these is counted by the X-Forwarded-For address
	// the proxy appended, else every patient behind the proxy would share
	// one count, and one guesser would lock them all out.
	TrustedProxies []string `toml:"trusted_proxies"`

	proxies []netip.Prefix
}

func (c *Config) checkPatientWeb() error {
	p := &c.PatientWeb
	for _, f := range []*string{&p.Cert, &p.Key, &p.ClientDir} {
		c.abs(f)
	}
	if p.ClientDir == "" {
		p.ClientDir = DefaultLiveKitClientDir
	}
	if p.Listen == "" {
		return nil
	}
	if p.Cert == "" || p.Key == "" {
		return errors.New("[patient_web] needs cert and key: the page is served over HTTPS only")
	}
	if p.Clinic == "" {
		return errors.New("[patient_web] clinic is not set: the notice names who processes the call")
	}
	u, err := url.Parse(p.LiveKitURL)
	if err != nil || (u.Scheme != "wss" && !(u.Scheme == "ws" && isLoopbackHost(u.Hostname()))) || u.Host == "" {
		return fmt.Errorf("[patient_web] livekit_url %q: wss://HOST (ws:// only to a loopback host)", p.LiveKitURL)
	}
	p.proxies = nil
	for _, tp := range p.TrustedProxies {
		pf, err := netip.ParsePrefix(tp)
		if err != nil {
			a, aerr := netip.ParseAddr(tp)
			if aerr != nil {
				return fmt.Errorf("[patient_web] trusted_proxies %q: an IP address or a prefix such as 10.0.0.0/8", tp)
			}
			pf = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		p.proxies = append(p.proxies, pf.Masked())
	}
	if p.AllowOrigin != "" {
		o, err := url.Parse(p.AllowOrigin)
		if err != nil || o.Scheme != "https" || o.Host == "" || o.Path != "" {
			return fmt.Errorf("[patient_web] allow_origin %q: https://HOST, no path", p.AllowOrigin)
		}
	}
	return nil
}

// clientKey is what wrong links are counted by: the patient's address, as
// the nearest proxy that is not trusted saw it, and for IPv6 its /64 (one
// home or phone holds a whole /64, and could take a new address per guess).
func clientKey(r *http.Request, trusted []netip.Prefix) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	addr := ap.Addr().Unmap()
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if isTrusted(addr) {
		// Right to left: each trusted proxy appended who it heard from;
		// the first address no trusted proxy stands for is the client.
		// Anything further left is the client's own say, and not believed.
		var hops []string
		for _, v := range r.Header.Values("X-Forwarded-For") {
			hops = append(hops, strings.Split(v, ",")...)
		}
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break
			}
			addr = a.Unmap()
			if !isTrusted(addr) {
				break
			}
		}
	}
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Refusal codes the page turns into a message in the patient's language.
const (
	JoinUnknown   = "unknown"   // no such link (or a wrong secret: the same answer)
	JoinCancelled = "cancelled" // the clinic cancelled the consultation
	JoinEarly     = "early"     // more than lead before the start
	JoinExpired   = "expired"   // the consultation is over
	JoinInUse     = "in_use"    // someone is in the call with this link now
	JoinSlowDown  = "slow_down" // too many wrong links from this address
	JoinTrouble   = "trouble"   // fleetd or the conference server has a problem
)

// JoinAnswer is POST /join/token's answer.
type JoinAnswer struct {
	Token   string    `json:"token,omitempty"`
	URL     string    `json:"url,omitempty"`
	Expires time.Time `json:"expires,omitempty"`
	Start   time.Time `json:"start,omitempty"`
	End     time.Time `json:"end,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// patientIdentity is the patient's LiveKit identity: the same for every
// join with the link (so a second concurrent one is seen), saying nothing
// about who they are.
func patientIdentity(consultation string) string {
	s := sha256.Sum256([]byte("konsult-patient-identity-v1\n" + consultation))
	return "patient-" + hex.EncodeToString(s[:6])
}

// badSecrets limits wrong links per client address: after badLimit in
// badWindow, the address is refused until the window passes.
type badSecrets = counter

const (
	badLimit  = 5
	badWindow = time.Minute
)

// counter counts events per key over a sliding window: a key with limit
// events (badLimit when 0) in window (badWindow when 0) is blocked until
// the oldest leaves it.
type counter struct {
	mu     sync.Mutex
	m      map[string][]time.Time
	limit  int
	window time.Duration
}

func (b *counter) blocked(key string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := b.limit
	if limit == 0 {
		limit = badLimit
	}
	return len(b.prune(key, now)) >= limit
}

func (b *counter) add(key string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string][]time.Time{}
	}
	if len(b.m) > 100000 { // a flood from many keys: forget, keep memory bounded
		b.m = map[string][]time.Time{}
	}
	b.m[key] = append(b.prune(key, now), now)
}

func (b *counter) prune(key string, now time.Time) []time.Time {
	window := b.window
	if window == 0 {
		window = badWindow
	}
	ts := b.m[key]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(b.m, key)
		return nil
	}
	b.m[key] = ts
	return ts
}

// JoinToken exchanges a patient link's id and secret for a LiveKit token
// for that consultation's room: only from lead before its start until its
// end, valid until the earlier of TokenTTL and the end, publish and
// subscribe only, with a pseudonymous identity. addr is the client's
// address for the rate limit. A link that is in a call right now is
// refused (JoinInUse): the clinic sent one patient one link.
func (s *Service) JoinToken(ctx context.Context, addr, id, secret string) (JoinAnswer, int) {
	now := s.Now()
	if s.bad.blocked(addr, now) {
		return JoinAnswer{Error: JoinSlowDown}, http.StatusTooManyRequests
	}
	if len(id) > 64 || len(secret) > 128 {
		s.bad.add(addr, now)
		return JoinAnswer{Error: JoinUnknown}, http.StatusNotFound
	}
	c, ok, err := s.store.CheckPatientSecret(ctx, id, secret)
	if err != nil && !errors.Is(err, ErrNotFound) {
		s.log.Warn("fleetd: patient join: database", "err", err)
		return JoinAnswer{Error: JoinTrouble}, http.StatusServiceUnavailable
	}
	if !ok {
		s.bad.add(addr, now)
		return JoinAnswer{Error: JoinUnknown}, http.StatusNotFound
	}
	ans := JoinAnswer{Start: c.Start, End: c.End}
	switch {
	case c.CancelledAt != nil:
		ans.Error = JoinCancelled
		return ans, http.StatusGone
	case !now.Before(c.End):
		ans.Error = JoinExpired
		return ans, http.StatusGone
	case now.Before(c.Start.Add(-s.cfg.Consultations.Lead.Duration)):
		ans.Error = JoinEarly
		return ans, http.StatusForbidden
	}
	identity := patientIdentity(c.ID)
	in, err := s.inRoom(ctx, c.Room, identity)
	if err != nil {
		s.log.Warn("fleetd: patient join: cannot ask the conference server who is in the call", "consultation", c.ID, "err", err)
		ans.Error = JoinTrouble
		return ans, http.StatusServiceUnavailable
	}
	if in {
		ans.Error = JoinInUse
		return ans, http.StatusConflict
	}
	ttl := s.cfg.LiveKit.TokenTTL.Duration
	if until := c.End.Sub(now); until < ttl {
		ttl = until
	}
	tok, exp, err := joinToken(s.cfg.LiveKit.APIKey, s.cfg.LiveKit.APISecret, identity, c.Room, now, ttl)
	if err != nil {
		ans.Error = JoinTrouble
		return ans, http.StatusServiceUnavailable
	}
	if err := s.store.RecordPatientJoin(ctx, c.ID, identity, now, exp); err != nil {
		s.log.Warn("fleetd: patient join not logged", "consultation", c.ID, "err", err)
	}
	s.log.Info("fleetd: patient token issued", "consultation", c.ID, "identity", identity)
	ans.Token, ans.URL, ans.Expires = tok, s.cfg.PatientWeb.LiveKitURL, exp
	return ans, http.StatusOK
}

// inRoom asks LiveKit (RoomService.ListParticipants, with a token for that
// room's admin that never leaves fleetd) whether identity is in room.
func (s *Service) inRoom(ctx context.Context, room, identity string) (bool, error) {
	u, err := url.Parse(s.cfg.PatientWeb.LiveKitURL)
	if err != nil {
		return false, err
	}
	u.Scheme = strings.Replace(strings.Replace(u.Scheme, "wss", "https", 1), "ws", "http", 1)
	u.Path = "/twirp/livekit.RoomService/ListParticipants"
	tok, err := adminToken(s.cfg.LiveKit.APIKey, s.cfg.LiveKit.APISecret, room, s.Now())
	if err != nil {
		return false, err
	}
	body, _ := json.Marshal(map[string]string{"room": room})
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, u.String(), strings.NewReader(string(body)))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := s.lkHTTP.Do(req)
	if err != nil {
		return false, fmt.Errorf("list participants: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusNotFound {
		return false, nil // no room yet: nobody in it
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("list participants: %s", resp.Status)
	}
	var lp struct {
		Participants []struct {
			Identity string `json:"identity"`
			State    any    `json:"state"`
		} `json:"participants"`
	}
	if err := json.Unmarshal(b, &lp); err != nil {
		return false, fmt.Errorf("list participants: %w", err)
	}
	for _, p := range lp.Participants {
		if p.Identity == identity && p.State != "DISCONNECTED" && p.State != float64(3) {
			return true, nil
		}
	}
	return false, nil
}

// securityHeaders are on every answer of the patient web.
func securityHeaders(h http.Header, connect string) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; connect-src 'self' "+connect+"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(self), microphone=(self), geolocation=(), payment=(), usb=()")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	h.Set("Cache-Control", "no-store")
}

// PatientHandler serves the page at /join, its assets, livekit-client
// from the configured folder, and POST /join/token. Nothing it logs
// carries the URL (whose fragment never reaches it anyway), the secret or
// the token.
func (s *Service) PatientHandler() http.Handler {
	pw := s.cfg.PatientWeb
	lk, _ := url.Parse(pw.LiveKitURL)
	connect := ""
	if lk != nil && lk.Host != "" {
		connect = lk.Scheme + "://" + lk.Host
	}
	mux := http.NewServeMux()
	static := http.FileServerFS(patientweb.Files)
	mux.HandleFunc("GET /join", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		http.ServeFileFS(w, r, patientweb.Files, "index.html")
	})
	mux.Handle("GET /join/assets/", http.StripPrefix("/join/assets/", static))
	mux.HandleFunc("GET /join/config.json", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"clinic": pw.Clinic})
	})
	for _, f := range []string{"livekit-client.umd.js", "livekit-client.e2ee.worker.js"} {
		path := filepath.Join(pw.ClientDir, f)
		mux.HandleFunc("GET /join/lib/"+f, func(w http.ResponseWriter, r *http.Request) {
			fh, err := os.Open(path)
			if err != nil {
				s.log.Warn("fleetd: patient page: livekit-client missing", "file", path, "err", err)
				http.Error(w, "not found", http.StatusNotFound)
				return
			}
			defer fh.Close()
			fi, err := fh.Stat()
			if err != nil {
				http.Error(w, "not found", http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
			http.ServeContent(w, r, f, fi.ModTime(), fh)
		})
	}
	mux.HandleFunc("POST /join/token", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID     string `json:"id"`
			Secret string `json:"secret"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, JoinAnswer{Error: JoinUnknown})
			return
		}
		ans, code := s.JoinToken(r.Context(), clientKey(r, pw.proxies), req.ID, req.Secret)
		writeJSON(w, code, ans)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securityHeaders(w.Header(), connect)
		if pw.AllowOrigin != "" {
			w.Header().Set("Access-Control-Allow-Origin", pw.AllowOrigin)
			w.Header().Set("Access-Control-Allow-Headers", "Content-Type")
			w.Header().Set("Vary", "Origin")
			if r.Method == http.MethodOptions && r.URL.Path == "/join/token" {
				w.Header().Set("Access-Control-Allow-Methods", "POST")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// CheckPatientWeb checks what the patient web needs on disk (fleetd
// --check): its certificate and key, and livekit-client's two files.
func (s *Service) CheckPatientWeb() error {
	pw := s.cfg.PatientWeb
	if pw.Listen == "" {
		return nil
	}
	if _, err := tls.LoadX509KeyPair(pw.Cert, pw.Key); err != nil {
		return fmt.Errorf("[patient_web] cert and key: %w", err)
	}
	for _, f := range []string{"livekit-client.umd.js", "livekit-client.e2ee.worker.js"} {
		if _, err := os.Stat(filepath.Join(pw.ClientDir, f)); err != nil {
			return fmt.Errorf("[patient_web] client_dir: %w (the konsult-fleetctl package installs livekit-client in %s)", err, DefaultLiveKitClientDir)
		}
	}
	return nil
}

// ServePatient serves the patient web on ln (TLS with the configured
// certificate) until ctx ends.
func (s *Service) ServePatient(ctx context.Context, ln net.Listener) error {
	pw := s.cfg.PatientWeb
	cert, err := tls.LoadX509KeyPair(pw.Cert, pw.Key)
	if err != nil {
		return fmt.Errorf("[patient_web] certificate: %w", err)
	}
	srv := &http.Server{
		Handler:           s.PatientHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// net/http's own complaints (TLS handshakes, bad requests) name
		// a patient's address: debug only, and through slog.
		ErrorLog:  slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("patient web: %w", err)
	}
	return nil
}
