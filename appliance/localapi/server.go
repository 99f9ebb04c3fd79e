// Package localapi is the unit's local control API: JSON over HTTP, served
// on a unix socket (mode 0600, for roomctl on the unit) and, when asked for,
// on a loopback-only TCP address (for a page on the unit itself). Nothing
// here is reachable from the network, and the TCP listener refuses what a
// browser could send from any other site (guard.go).
//
//	GET  /v1/status           unit status (state, gate, LED, shutter, faults)
//	GET  /v1/events           live events, one JSON object per line
//	POST /v1/action           {"action":"join"}  as a button or command would
//	GET  /v1/doctor           wiring checks
//	POST /v1/enrol            {"code":"..."}                     unix socket only
//	POST /v1/factory-reset    {"confirm":true}                   unix socket only
//	POST /v1/press            {"button":"join","hold_ms":100}   simulated board, unix socket only
//	POST /v1/fault            {"fault":"stuck_shutter","on":true} simulated board, unix socket only
package localapi

import (
	"context"
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
)

// Unit is what the API serves. roomd implements it around an appliance.Machine.
type Unit interface {
	Status() any
	Subscribe(buf int) (<-chan appliance.Event, func())
	Do(ctx context.Context, a appliance.Action, source string) error
	Doctor(ctx context.Context) []Check
	// Sim returns the simulated board's controls, or nil on real hardware.
	Sim() Sim
}

// Provisioner is what roomctl enrol and roomctl factory-reset need; a Unit
// that is not one answers 409.
type Provisioner interface {
	// Enrol gives the unit a claim code.
	Enrol(ctx context.Context, code string) error
	// FactoryReset wipes the unit's identity and fleet state and starts
	// it again as on first boot. It returns once the reset is under way.
	FactoryReset(ctx context.Context) error
}

// Reporter is a Unit that makes its privacy report (appliance/report's
// Report); a Unit that is not one answers 409.
type Reporter interface {
	PrivacyReport(ctx context.Context) any
}

// Auditor is a Unit that keeps an audit log (provisioning/audit); a Unit
// that is not one answers 409. The log is served as it stands, and roomctl
// verifies it itself: the API hands over the signed lines, it vouches for
// nothing.
type Auditor interface {
	AuditLog() (AuditLog, error)
}

// AuditLog is the unit's audit log file: where it is, and its lines as on
// disk, each a signed record.
type AuditLog struct {
	File  string   `json:"file"`
	Lines []string `json:"lines"`
}

// Sim is the simulated board's fault and button injection.
type Sim interface {
	Press(ctx context.Context, button string, hold time.Duration) error
	SetFault(fault string, on bool) error
}

// Check is one line of `roomctl doctor`.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// ErrUnsupported is returned (as 409) for simulated-board calls on hardware.
var ErrUnsupported = errors.New("only the simulated board (roomd --sim) takes pressed buttons and injected faults")

// MaxEventStreams is how many /v1/events streams one listener serves at
// once; each holds a goroutine and a 256-event buffer until its reader goes.
const MaxEventStreams = 8

// Server serves the API on roomd's listeners: the whole API on the unix
// socket, and on loopback TCP only what a local page may do, behind the
// checks in guard.go.
type Server struct {
	unit Unit
	log  *slog.Logger

	// Limits, fields so that tests can shorten them.
	readHeaderTimeout time.Duration // a client gets this long to send its headers
	bodyTimeout       time.Duration // and this long to send its body
	idleTimeout       time.Duration // a kept-alive connection with no request is closed after this
	eventWriteTimeout time.Duration // an event stream whose reader stops reading is cut after this
	maxEventStreams   int           // per listener

	ctx    context.Context // every request's context: Shutdown ends the event streams
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	servers []*http.Server
}

// NewServer returns a Server for u; start it with Serve.
func NewServer(u Unit, log *slog.Logger) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		unit: u, log: log,
		readHeaderTimeout: 5 * time.Second,
		idleTimeout:       60 * time.Second,
		bodyTimeout:       10 * time.Second,
		eventWriteTimeout: 10 * time.Second,
		maxEventStreams:   MaxEventStreams,
		ctx:               ctx, cancel: cancel,
	}
}

// Serve serves the API on l until Shutdown. A unix socket (ListenUnix) gets
// the whole API. A TCP listener must be on loopback (ListenLoopback) and
// gets the browser-proof subset: see guard.go. There is deliberately no
// WriteTimeout or ReadTimeout: either would cut /v1/events streams.
func (s *Server) Serve(l net.Listener) error {
	var h http.Handler
	if l.Addr().Network() == "unix" {
		h = s.logRequests(requireJSON(s.routes(true), s.log, s.bodyTimeout), "unix")
	} else {
		g, err := newLoopbackGuard(l.Addr(), s.log, s.bodyTimeout)
		if err != nil {
			l.Close()
			return err
		}
		h = s.logRequests(g.wrap(requireJSON(s.routes(false), s.log, s.bodyTimeout)), "http")
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.readHeaderTimeout,
		IdleTimeout:       s.idleTimeout,
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
	return srv.Serve(l)
}

// Shutdown ends every event stream, stops the listeners and waits (until
// ctx ends) for requests under way.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	servers := s.servers
	s.mu.Unlock()
	s.cancel()
	var errs []error
	for _, srv := range servers {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unixOnly are the calls a local page never needs and must never make:
// they enrol, wipe, or press the simulated buttons (pressing PRIVACY and
// JOIN together is a factory reset). roomctl makes them on the socket.
var unixOnly = []string{"/v1/enrol", "/v1/factory-reset", "/v1/press", "/v1/fault", "/v1/privacy-report", "/v1/audit"}

// routes is the API's mux. Each listener gets its own, so the event-stream
// cap of one listener (a flood over HTTP) leaves the other's alone.
func (s *Server) routes(unixSocket bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	mux.HandleFunc("GET /v1/doctor", s.handleDoctor)
	mux.HandleFunc("GET /v1/events", s.handleEvents(make(chan struct{}, s.maxEventStreams)))
	mux.HandleFunc("POST /v1/action", s.handleAction)
	if !unixSocket {
		for _, p := range unixOnly {
			mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
				writeErr(w, http.StatusForbidden, fmt.Errorf("%s is served only on the unit's unix socket (roomctl on the unit), not on loopback HTTP", p))
			})
		}
		return mux
	}
	mux.HandleFunc("POST /v1/enrol", s.handleEnrol)
	mux.HandleFunc("POST /v1/factory-reset", s.handleFactoryReset)
	mux.HandleFunc("POST /v1/press", s.handlePress)
	mux.HandleFunc("POST /v1/fault", s.handleFault)
	mux.HandleFunc("GET /v1/privacy-report", s.handlePrivacyReport)
	mux.HandleFunc("GET /v1/audit", s.handleAudit)
	return mux
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	a, ok := s.unit.(Auditor)
	if !ok {
		writeErr(w, http.StatusConflict, errors.New("this unit keeps no audit log"))
		return
	}
	l, err := a.AuditLog()
	if err != nil {
		writeErr(w, http.StatusNotFound, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) handlePrivacyReport(w http.ResponseWriter, r *http.Request) {
	rep, ok := s.unit.(Reporter)
	if !ok {
		writeErr(w, http.StatusConflict, errors.New("this unit makes no privacy report"))
		return
	}
	writeJSON(w, http.StatusOK, rep.PrivacyReport(r.Context()))
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.unit.Status())
}

func (s *Server) handleDoctor(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.unit.Doctor(r.Context()))
}

// handleEvents streams events as NDJSON, at most cap(streams) at once.
func (s *Server) handleEvents(streams chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case streams <- struct{}{}:
			defer func() { <-streams }()
		default:
			w.Header().Set("Retry-After", "5")
			writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("too many event streams open (%d, the most this API serves at once): each `roomctl watch` holds one; close one and try again", cap(streams)))
			return
		}
		events, cancel := s.unit.Subscribe(256)
		defer cancel()
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		enc := json.NewEncoder(w)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return
				}
				// A reader that stops reading would hold its slot forever.
				_ = rc.SetWriteDeadline(time.Now().Add(s.eventWriteTimeout))
				if err := enc.Encode(ev); err != nil {
					return
				}
				if err := rc.Flush(); err != nil {
					return
				}
			case <-r.Context().Done():
				return
			}
		}
	}
}

func (s *Server) handleAction(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Action string `json:"action"`
	}
	if !s.readJSON(w, r, &req) {
		return
	}
	a, err := appliance.ParseAction(req.Action)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if err := s.unit.Do(r.Context(), a, "local-api"); err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"action": string(a)})
}

func (s *Server) handleEnrol(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Code string `json:"code"`
	}
	if !s.readJSON(w, r, &req) {
		return
	}
	p, ok := s.unit.(Provisioner)
	if !ok {
		writeErr(w, http.StatusConflict, errors.New("this unit does not enrol"))
		return
	}
	if err := p.Enrol(r.Context(), req.Code); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	// The code is a secret until it is spent: the answer does not echo it.
	writeJSON(w, http.StatusAccepted, map[string]string{"enrolment": "claim code taken"})
}

func (s *Server) handleFactoryReset(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Confirm bool `json:"confirm"`
	}
	if !s.readJSON(w, r, &req) {
		return
	}
	if !req.Confirm {
		writeErr(w, http.StatusBadRequest, errors.New("a factory reset wipes the unit's identity and fleet config: confirm it (roomctl factory-reset --yes)"))
		return
	}
	p, ok := s.unit.(Provisioner)
	if !ok {
		writeErr(w, http.StatusConflict, errors.New("this unit cannot be reset from the API"))
		return
	}
	if err := p.FactoryReset(r.Context()); err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"factory_reset": "wiping; roomd starts again as a new unit"})
}

func (s *Server) handlePress(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Button string `json:"button"`
		HoldMS int    `json:"hold_ms"`
	}
	if !s.readJSON(w, r, &req) {
		return
	}
	sim := s.unit.Sim()
	if sim == nil {
		writeErr(w, http.StatusConflict, ErrUnsupported)
		return
	}
	hold := time.Duration(req.HoldMS) * time.Millisecond
	if hold <= 0 {
		hold = 100 * time.Millisecond
	}
	if hold > time.Minute {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("hold_ms %d is longer than a minute", req.HoldMS))
		return
	}
	if err := sim.Press(r.Context(), req.Button, hold); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"button": req.Button, "hold_ms": hold.Milliseconds()})
}

func (s *Server) handleFault(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Fault string `json:"fault"`
		On    bool   `json:"on"`
	}
	if !s.readJSON(w, r, &req) {
		return
	}
	sim := s.unit.Sim()
	if sim == nil {
		writeErr(w, http.StatusConflict, ErrUnsupported)
		return
	}
	if err := sim.SetFault(req.Fault, req.On); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, req)
}

func (s *Server) logRequests(h http.Handler, transport string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.log.Debug("local api", "method", r.Method, "path", r.URL.Path, "on", transport)
		h.ServeHTTP(w, r)
	})
}

// readJSON decodes exactly one JSON value of at most 64 KiB into v. Data
// after it is refused: it is how a browser form smuggles a JSON body
// (`{"action":"join"}=`), and a body that is more than it says is not one
// to act on.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	// The body gets its own deadline: the server has no ReadTimeout (it
	// would end event streams), so a client trickling a body would
	// otherwise hold the handler for ever.
	// The deadline stays on a refused body: the server reads what is left
	// of it before it answers, and must not wait for a trickle there.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.bodyTimeout))
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		w.Header().Set("Connection", "close")
		writeErr(w, http.StatusBadRequest, fmt.Errorf("bad request body: %w", err))
		return false
	}
	if err := dec.Decode(new(json.RawMessage)); !errors.Is(err, io.EOF) {
		w.Header().Set("Connection", "close")
		writeErr(w, http.StatusBadRequest, errors.New("bad request body: data after the JSON value (send exactly one JSON object)"))
		return false
	}
	_ = rc.SetReadDeadline(time.Time{})
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
