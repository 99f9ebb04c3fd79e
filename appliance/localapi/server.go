// Package localapi is the unit's local control API: JSON over HTTP, served
// on a unix socket (mode 0600, for roomctl on the unit) and optionally on a
// loopback-only TCP address (for a local page). Nothing here is reachable
// from the network.
//
//	GET  /v1/status           unit status (state, gate, LED, shutter, faults)
//	GET  /v1/events           live events, one JSON object per line
//	POST /v1/action           {"action":"join"}  as a button or command would
//	GET  /v1/doctor           wiring checks
//	POST /v1/press            {"button":"join","hold_ms":100}   simulated board only
//	POST /v1/fault            {"fault":"stuck_shutter","on":true} simulated board only
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
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

// Handler returns the API's HTTP handler.
func Handler(u Unit, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, u.Status())
	})
	mux.HandleFunc("GET /v1/doctor", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, u.Doctor(r.Context()))
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		events, cancel := u.Subscribe(256)
		defer cancel()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		flusher, _ := w.(http.Flusher)
		if flusher != nil {
			flusher.Flush()
		}
		enc := json.NewEncoder(w)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return
				}
				if err := enc.Encode(ev); err != nil {
					return
				}
				if flusher != nil {
					flusher.Flush()
				}
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("POST /v1/action", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Action string `json:"action"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		a, err := appliance.ParseAction(req.Action)
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		if err := u.Do(r.Context(), a, "local-api"); err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"action": string(a)})
	})
	mux.HandleFunc("POST /v1/enrol", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Code string `json:"code"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		p, ok := u.(Provisioner)
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
	})
	mux.HandleFunc("POST /v1/factory-reset", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Confirm bool `json:"confirm"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		if !req.Confirm {
			writeErr(w, http.StatusBadRequest, errors.New("a factory reset wipes the unit's identity and fleet config: confirm it (roomctl factory-reset --yes)"))
			return
		}
		p, ok := u.(Provisioner)
		if !ok {
			writeErr(w, http.StatusConflict, errors.New("this unit cannot be reset from the API"))
			return
		}
		if err := p.FactoryReset(r.Context()); err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"factory_reset": "wiping; roomd starts again as a new unit"})
	})
	mux.HandleFunc("POST /v1/press", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Button string `json:"button"`
			HoldMS int    `json:"hold_ms"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		s := u.Sim()
		if s == nil {
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
		if err := s.Press(r.Context(), req.Button, hold); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"button": req.Button, "hold_ms": hold.Milliseconds()})
	})
	mux.HandleFunc("POST /v1/fault", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Fault string `json:"fault"`
			On    bool   `json:"on"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		s := u.Sim()
		if s == nil {
			writeErr(w, http.StatusConflict, ErrUnsupported)
			return
		}
		if err := s.SetFault(req.Fault, req.On); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, req)
	})
	return logRequests(mux, log)
}

func logRequests(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Debug("local api", "method", r.Method, "path", r.URL.Path)
		h.ServeHTTP(w, r)
	})
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("bad request body: %w", err))
		return false
	}
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

// ListenUnix listens on a unix socket that only the unit's user can use
// (mode 0600), replacing a stale socket left by a crash.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is in use: is another roomd running?", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict socket %s to mode 0600: %w", path, err)
	}
	return l, nil
}

// ListenLoopback listens on addr, which must be a loopback address: the API
// has no authentication beyond "you are on the unit".
func ListenLoopback(addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("http address %q: want ip:port such as 127.0.0.1:8787: %w", addr, err)
	}
	if !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("http address %q is not a loopback address: the local API must stay on the unit (use 127.0.0.1)", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// DefaultSocket is where roomd listens and roomctl looks when not told:
// $KONSULT_SOCKET, else /run/konsult/roomd.sock when /run/konsult exists
// (the packaged service), else a per-user directory under the temp dir.
func DefaultSocket() string {
	if s := os.Getenv("KONSULT_SOCKET"); s != "" {
		return s
	}
	if fi, err := os.Stat("/run/konsult"); err == nil && fi.IsDir() {
		return "/run/konsult/roomd.sock"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("konsult-%d", os.Getuid()), "roomd.sock")
}
