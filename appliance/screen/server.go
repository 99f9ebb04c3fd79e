// Package screen serves the unit's own screen: a page, on loopback, that a
// kiosk browser shows full-screen on the unit's display. The page shows the
// idle screen, the call (the far end's pictures, the self-view, a status bar
// that says in words what the LED means), faults, and the notice for the
// people in the room, in the configured language.
//
//	GET  /              the page (embedded; no external URLs, strict CSP)
//	GET  /screen.js, /screen.css
//	GET  /v1/state      the page's view, as server-sent events
//	POST /v1/offer      {"sdp":"..."} → {"sdp":"...","mids":[...]}: the
//	                    loopback WebRTC connection that carries the video
//
// The page may only read: there are no actions here. The listener is
// loopback only and applies the local API's browser checks
// (localapi.LoopbackGuard): a page from another origin can neither read the
// state nor get the media. With Config.Secret, neither can a process on the
// unit that does not know the kiosk's URL.
package screen

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/media/display"
)

// Unit is the appliance as the screen reads it (appliance.Machine fits).
type Unit interface {
	Status() appliance.Status
	Subscribe(buf int) (<-chan appliance.Event, func())
}

// Media is the video hand-over (display.Display fits).
type Media interface {
	State() display.State
	Changed() <-chan struct{}
	Connect(ctx context.Context, offer string) (display.Answer, error)
}

// leaver is a Media that can drop a far-end participant's tile at once
// (display.Display.Left), when the unit's events say they left.
type leaver interface{ Left(participant string) }

// Config for New.
type Config struct {
	Room     string // shown on the idle screen
	Language string // display.language: nl, es, nb, en ("" or another: DefaultLanguage)
	Unit     Unit
	Media    Media      // nil: a unit without video on its screen (state only)
	Others   func() int // far-end people in the call; nil: the far-end tiles are counted
	// Next is the start of the unit's next booked consultation (from the
	// fleet's schedule); nil or false: none.
	Next func() (time.Time, bool)
	// Secret, if set, is the first path segment of every URL served (the
	// page, its state and its offer): only who knows it, the kiosk given
	// the URL at start, can read the screen's state and media. Without it
	// any process on the unit may. NewSecret makes one; it is a secret
	// (invariant 7): never log a URL that holds it.
	Secret string
	Log    *slog.Logger
}

// NewSecret is a random Config.Secret (128 bits, URL-safe).
func NewSecret() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// DueLead is how long before its start the screen shows a consultation as
// due (appliance/unit.ConsultLead: JOIN enters it from then).
const DueLead = 10 * time.Minute

// MaxStateStreams bounds the /v1/state streams served at once (the kiosk
// needs one; a reload briefly two).
const MaxStateStreams = 4

// Server is the screen's HTTP server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	streams chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc

	mu      sync.Mutex
	closed  bool
	servers []*http.Server
	watch   sync.Once
}

//go:embed page
var pageFS embed.FS

// New checks cfg; Serve starts serving.
func New(cfg Config) (*Server, error) {
	if cfg.Unit == nil {
		return nil, errors.New("screen: a unit is needed")
	}
	for _, c := range cfg.Secret {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return nil, errors.New("screen: the secret must be URL-safe (letters, digits, - and _)")
		}
	}
	if cfg.Secret != "" && len(cfg.Secret) < 16 {
		return nil, errors.New("screen: the secret must have at least 16 characters")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, log: cfg.Log, streams: make(chan struct{}, MaxStateStreams), ctx: ctx, cancel: cancel}, nil
}

// Listen listens on addr, which must be loopback ("127.0.0.1:0" picks a port).
func Listen(addr string) (net.Listener, error) { return localapi.ListenLoopback(addr) }

// URL is the page's address on l: what the kiosk opens. With a Secret it
// holds the secret; Origin is what may be printed.
func (s *Server) URL(l net.Listener) string {
	if s.cfg.Secret == "" {
		return Origin(l) + "/"
	}
	return Origin(l) + "/" + s.cfg.Secret + "/"
}

// Origin is the screen's origin on l ("http://127.0.0.1:PORT"), without
// any secret: what roomd may print as "display: ..." and roomctl show.
func Origin(l net.Listener) string {
	return "http://" + l.Addr().String()
}

// Serve serves the screen on l (loopback TCP) until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	h, err := localapi.LoopbackGuard(l.Addr(), s.log, localapi.RequireJSON(s.behindSecret(s.routes()), s.log))
	if err != nil {
		l.Close()
		return fmt.Errorf("screen: %w", err)
	}
	srv := &http.Server{
		Handler:           securityHeaders(s.kioskHandOff(h)),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return http.ErrServerClosed
	}
	s.servers = append(s.servers, srv)
	s.mu.Unlock()
	if lv, ok := s.cfg.Media.(leaver); ok {
		s.watch.Do(func() { go s.watchLeaves(lv) })
	}
	return srv.Serve(l)
}

// watchLeaves drops a far-end participant's tile as soon as the unit
// reports them gone, not only once their video has stopped for
// display.IdleAfter. It ends with Shutdown.
func (s *Server) watchLeaves(lv leaver) {
	events, cancel := s.cfg.Unit.Subscribe(64)
	defer cancel()
	for {
		select {
		case <-s.ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Type == "participant" && ev.Detail == "left" && ev.Participant != "" {
				lv.Left(ev.Participant)
			}
		}
	}
}

// Shutdown ends the state streams and stops serving.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	servers := s.servers
	s.mu.Unlock()
	s.cancel()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// csp allows the page its own script, style and state stream, and nothing
// else: no inline script, no other origin, no framing. WebRTC is not
// under CSP; the offer endpoint's checks hold it.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; media-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// kioskHandOff lets a top-level navigation to the page under the secret
// through the guard's Sec-Fetch-Site check, and nothing else. The kiosk
// must not put the URL on Chromium's command line (any local user reads
// /proc/PID/cmdline), so it opens a private file:// page that sends
// Chromium on, and that navigation arrives marked cross-site. Letting it
// in gives nothing away: only who knows the secret can name the page, a
// navigation cannot read across origins, the page refuses framing
// (Sec-Fetch-Dest must be document, and frame-ancestors 'none'), and its
// state, stream and offer are fetched from its own origin, still checked
// in full. Host is still checked by the guard.
func (s *Server) kioskHandOff(guarded http.Handler) http.Handler {
	if s.cfg.Secret == "" {
		return guarded
	}
	page := []byte("/" + s.cfg.Secret + "/")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header
		if r.Method == http.MethodGet && h.Get("Sec-Fetch-Mode") == "navigate" && h.Get("Sec-Fetch-Dest") == "document" &&
			len(h.Values("Origin")) == 0 && r.URL.RawQuery == "" &&
			subtle.ConstantTimeCompare([]byte(r.URL.Path), page) == 1 {
			r = r.Clone(r.Context())
			r.Header.Del("Sec-Fetch-Site")
		}
		guarded.ServeHTTP(w, r)
	})
}

// behindSecret serves inner only under /<secret>/ (compared in constant
// time), and nothing else.
func (s *Server) behindSecret(inner http.Handler) http.Handler {
	if s.cfg.Secret == "" {
		return inner
	}
	want := []byte("/" + s.cfg.Secret + "/")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if len(p) < len(want) || subtle.ConstantTimeCompare([]byte(p[:len(want)]), want) != 1 {
			http.NotFound(w, r)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path, r2.URL.RawPath = p[len(want)-1:], ""
		inner.ServeHTTP(w, r2)
	})
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for path, f := range map[string][2]string{
		"/{$}":        {"page/index.html", "text/html; charset=utf-8"},
		"/screen.js":  {"page/screen.js", "text/javascript; charset=utf-8"},
		"/screen.css": {"page/screen.css", "text/css; charset=utf-8"},
	} {
		body, err := pageFS.ReadFile(f[0])
		if err != nil {
			panic(err) // embedded at build time
		}
		ctype := f[1]
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ctype)
			_, _ = w.Write(body)
		})
	}
	mux.HandleFunc("GET /v1/state", s.serveState)
	mux.HandleFunc("POST /v1/offer", s.serveOffer)
	return mux
}

// serveState streams the page's view: one event at once, then one per
// change of the unit or of the media (coalesced), and a comment every 15 s
// so a dead stream is noticed.
func (s *Server) serveState(w http.ResponseWriter, r *http.Request) {
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		w.Header().Set("Retry-After", "2")
		http.Error(w, "too many state streams", http.StatusServiceUnavailable)
		return
	}
	events, cancel := s.cfg.Unit.Subscribe(64)
	defer cancel()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	var last []byte
	for {
		var mediaChanged <-chan struct{}
		var m *display.State
		if s.cfg.Media != nil {
			mediaChanged = s.cfg.Media.Changed()
			st := s.cfg.Media.State()
			m = &st
		}
		b, err := json.Marshal(s.view(s.cfg.Unit.Status(), m))
		if err != nil {
			return
		}
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if string(b) != string(last) {
			if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
				return
			}
			last = b
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case _, ok := <-events:
			if !ok {
				return
			}
			drain(events)
		case <-mediaChanged:
		case <-keep.C:
			_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
		}
	}
}

// drain takes the events already waiting: one view covers them all.
func drain(ch <-chan appliance.Event) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

func (s *Server) serveOffer(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Media == nil {
		http.Error(w, "this unit shows no video on its screen", http.StatusNotFound)
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(10 * time.Second))
	var req struct {
		SDP string `json:"sdp"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, display.MaxOfferBytes+1024))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "bad offer: "+err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	ans, err := s.cfg.Media.Connect(ctx, req.SDP)
	if err != nil {
		s.log.Info("screen: page offer refused", "err", err)
		code := http.StatusServiceUnavailable
		if errors.Is(err, display.ErrBadOffer) {
			code = http.StatusBadRequest
		}
		http.Error(w, err.Error(), code)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ans)
}
