package fleetd

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/link"
)

// fleetctl's consult verbs reach fleetd on a Unix socket on the same
// server: the kernel checks who may connect (the socket's mode and group),
// so there is no password, certificate or port to manage, and the verbs
// work while the broker is down. The broker would need another ACL and a
// request/response protocol for what is a local admin call.

// maxBody bounds a request body (an .ics file of a clinic's bookings).
const maxBody = 4 << 20

// AddRequest books a consultation.
type AddRequest struct {
	Unit  string    `json:"unit"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Added is a booked consultation and its patient link, shown once.
type Added struct {
	Consultation
	PatientLink string `json:"patient_link"`
}

// ImportResult counts what an .ics import did.
type ImportResult struct {
	Added     []Added  `json:"added"`
	Moved     int      `json:"moved"`
	Cancelled int      `json:"cancelled"`
	Unchanged int      `json:"unchanged"`
	Skipped   []string `json:"skipped,omitempty"` // why, per event (no names)
}

func listenSocket(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("socket folder: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path) // a previous fleetd's
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return ln, nil
}

// Handler is fleetd's API for fleetctl.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/consultations", s.apiAdd)
	mux.HandleFunc("GET /v1/consultations", s.apiList)
	mux.HandleFunc("DELETE /v1/consultations/{id}", s.apiCancel)
	mux.HandleFunc("POST /v1/import", s.apiImport)
	return mux
}

func (s *Service) serveAPI(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("fleetd socket: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// Add books a consultation and tells the schedule publisher.
func (s *Service) Add(ctx context.Context, r AddRequest) (Added, error) {
	if err := link.ValidName(r.Unit); err != nil {
		return Added{}, fmt.Errorf("unit: %w", err)
	}
	if d := r.End.Sub(r.Start); d <= 0 || d > 12*time.Hour {
		return Added{}, errors.New("a consultation lasts more than nothing and at most 12 hours")
	}
	c, secret, err := s.store.AddConsultation(ctx, r.Unit, r.Start, r.End, "", s.Now())
	if err != nil {
		return Added{}, err
	}
	s.Changed()
	return Added{Consultation: c, PatientLink: s.patientLink(c.ID, secret, c.e2eeKey)}, nil
}

// patientLink is patient_url#ID.SECRET.K: the fragment, which a browser
// never sends to a server, carries the secret (exchanged for a token) and
// the end-to-end key material K (base64url, no padding).
func (s *Service) patientLink(id, secret string, k []byte) string {
	base := s.cfg.PatientURL
	if base == "" {
		base = "https://fleetd.invalid/join"
	}
	l := strings.TrimRight(base, "#") + "#" + id + "." + secret
	if len(k) > 0 {
		l += "." + base64.RawURLEncoding.EncodeToString(k)
	}
	return l
}

func (s *Service) apiAdd(w http.ResponseWriter, r *http.Request) {
	var req AddRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(&req); err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("request: %w", err))
		return
	}
	a, err := s.Add(r.Context(), req)
	if err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusCreated, a)
}

func (s *Service) apiList(w http.ResponseWriter, r *http.Request) {
	since := s.Now().Add(-time.Hour)
	if r.URL.Query().Get("all") != "" {
		since = time.Time{}
	}
	cs, err := s.store.List(r.Context(), r.URL.Query().Get("unit"), since, r.URL.Query().Get("all") != "")
	if err != nil {
		apiError(w, http.StatusInternalServerError, err)
		return
	}
	if cs == nil {
		cs = []Consultation{}
	}
	writeJSON(w, http.StatusOK, cs)
}

func (s *Service) apiCancel(w http.ResponseWriter, r *http.Request) {
	c, err := s.store.Cancel(r.Context(), r.PathValue("id"), s.Now())
	if errors.Is(err, ErrNotFound) {
		apiError(w, http.StatusNotFound, err)
		return
	}
	if err != nil {
		apiError(w, http.StatusInternalServerError, err)
		return
	}
	s.Changed()
	writeJSON(w, http.StatusOK, c)
}

func (s *Service) apiImport(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		apiError(w, http.StatusBadRequest, fmt.Errorf("calendar: over %d bytes or unreadable", maxBody))
		return
	}
	res, err := s.Import(r.Context(), bytes.NewReader(body), r.URL.Query().Get("unit"))
	if err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// Client is fleetctl's side of the socket.
type Client struct {
	hc *http.Client
}

// DefaultSocket is where the packaged fleetd listens.
const DefaultSocket = "/run/konsult-fleetd/fleetd.sock"

// NewClient talks to the fleetd listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *Client) do(ctx context.Context, method, path, ctype string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://fleetd"+path, body)
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("fleetd: %w (is fleetd running, and may this user use its socket?)", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("fleetd: %s", e.Error)
		}
		return fmt.Errorf("fleetd: %s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("fleetd: answer: %w", err)
		}
	}
	return nil
}

// Add books a consultation.
func (c *Client) Add(ctx context.Context, r AddRequest) (Added, error) {
	b, _ := json.Marshal(r)
	var a Added
	err := c.do(ctx, http.MethodPost, "/v1/consultations", "application/json", bytes.NewReader(b), &a)
	return a, err
}

// List lists consultations (cancelled and past ones too with all).
func (c *Client) List(ctx context.Context, unit string, all bool) ([]Consultation, error) {
	q := "?unit=" + unit
	if all {
		q += "&all=1"
	}
	var cs []Consultation
	err := c.do(ctx, http.MethodGet, "/v1/consultations"+q, "", nil, &cs)
	return cs, err
}

// Cancel cancels a consultation.
func (c *Client) Cancel(ctx context.Context, id string) (Consultation, error) {
	var out Consultation
	err := c.do(ctx, http.MethodDelete, "/v1/consultations/"+id, "", nil, &out)
	return out, err
}

// Import imports an iCalendar file; unit, if set, is every event's unit.
func (c *Client) Import(ctx context.Context, ics io.Reader, unit string) (ImportResult, error) {
	var res ImportResult
	err := c.do(ctx, http.MethodPost, "/v1/import?unit="+unit, "text/calendar", ics, &res)
	return res, err
}
