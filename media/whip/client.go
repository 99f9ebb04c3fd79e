package whip

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/icepolicy"
)

// Config configures a Client. Only Endpoint is required.
type Config struct {
	// Endpoint is the WHIP endpoint URL, e.g.
	// "https://livekit.example.org/whip/v1". It must be https, or http to a
	// loopback host ("localhost", 127.0.0.0/8, ::1) unless RequireTLS.
	Endpoint string

	// Token is sent as "Authorization: Bearer <Token>". It is never
	// logged and never appears in an error. It is only sent to the
	// endpoint's host name and to hosts on AllowedHosts.
	Token string

	// HTTPClient is used for all requests. If nil, a client with sane
	// timeouts is used (10 s dial and TLS handshake, 20 s response
	// headers, 30 s overall). The client is copied and its CheckRedirect
	// wrapped with this package's redirect policy (which runs first).
	HTTPClient *http.Client

	// RequireTLS refuses plain http even to loopback hosts. By default
	// plain http is allowed to loopback hosts only (for a local server or
	// tests); it is always refused to any other host.
	RequireTLS bool

	// AllowedHosts, if non-empty, is the list of host names the client may
	// talk to: exact names or "*.example.org" (any subdomain). A URL whose
	// host is not on the list (endpoint, redirect target or session
	// Location) is refused before any packet is sent: no DNS lookup, no
	// connection. Hosts on the list also receive the token on redirects.
	AllowedHosts []string

	// ICEServers are extra STUN/TURN servers, merged with those the server
	// announces in Link headers (see Client.ICEServers). They are the
	// operator's own and pass unchecked.
	ICEServers []webrtc.ICEServer

	// ICEPolicy bounds what the server may hand out: the ICE servers of its
	// Link headers and the candidates of its answers (counts, and no
	// internal addresses unless allowed). Nil is icepolicy.ForServer of the
	// endpoint: internal addresses only for an endpoint that is one.
	ICEPolicy *icepolicy.Policy

	// TrickleCandidates sends the offer and ICE-restart fragments without
	// candidate lines and delivers the candidates in a trickle PATCH right
	// after the server's answer. Needed for LiveKit (up to at least
	// v1.13.5): its ICE-restart handler crashes the whole server when the
	// stored offer's media sections end in candidate lines.
	TrickleCandidates bool

	// Logger receives debug/info/warn records. Nil means no logging. The
	// token, TURN credentials and URL query strings are never logged.
	Logger *slog.Logger
}

// Client talks WHIP (RFC 9725) to one endpoint. It is safe for concurrent
// use. Create it with New.
type Client struct {
	cfg      Config
	endpoint *url.URL
	ice      icepolicy.Policy
	http     *http.Client
	log      *slog.Logger

	mu      sync.Mutex
	learned []webrtc.ICEServer // from the latest Link headers
}

// cleanupTimeout bounds the best-effort DELETE after a failure.
const cleanupTimeout = 5 * time.Second

// maxResponseHeaders bounds the header block of a response read by the
// default transport.
const maxResponseHeaders = 64 << 10

// maxResponseBody bounds how much of a response is read (SDP answers are a
// few kB).
const maxResponseBody = 1 << 20

// New validates cfg and returns a Client. It performs no I/O. The endpoint
// is checked against the transport policy here already, so a refused host
// (ErrInsecureScheme, ErrHostNotAllowed) is reported before anything is
// sent.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil {
		// url.Parse errors quote the input, which could hold secrets.
		return nil, errors.New("whip: invalid endpoint URL")
	}
	if u.User != nil {
		return nil, errors.New("whip: endpoint URL must not contain user info; use Config.Token")
	}
	c := &Client{
		cfg:      cfg,
		endpoint: u,
		log:      newLogger(cfg.Logger, cfg.Token),
	}
	c.cfg.AllowedHosts = slices.Clone(cfg.AllowedHosts)
	c.ice = icepolicy.ForServer(cfg.Endpoint, false)
	if cfg.ICEPolicy != nil {
		c.ice = *cfg.ICEPolicy
	}
	c.cfg.ICEServers = slices.Clone(cfg.ICEServers)
	if err := c.checkURL(u); err != nil {
		return nil, scrub(err, cfg.Token)
	}
	var hc http.Client
	if cfg.HTTPClient != nil {
		hc = *cfg.HTTPClient
	} else {
		hc = http.Client{Transport: defaultTransport(), Timeout: 30 * time.Second}
	}
	hc.CheckRedirect = c.checkRedirect(hc.CheckRedirect)
	c.http = &hc
	return c, nil
}

// NewHTTPClient returns an HTTP client with this package's timeouts. Share
// one between the Clients of successive sessions to the same server: the
// connection (TCP, TLS) made by a Preflight or an earlier session is then
// reused, so a join costs no handshakes.
func NewHTTPClient() *http.Client {
	return &http.Client{Transport: defaultTransport(), Timeout: 30 * time.Second}
}

func defaultTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second,
		// Go's client default is 10 MB; a WHIP response has a few headers
		// (Location, ETag, a handful of Link ice-servers).
		MaxResponseHeaderBytes: maxResponseHeaders,
		IdleConnTimeout:        90 * time.Second,
		MaxIdleConns:           4,
		ForceAttemptHTTP2:      true,
	}
}

// Endpoint returns the endpoint URL without query string.
func (c *Client) Endpoint() string { return safeURL(c.endpoint) }

// ICEServers returns Config.ICEServers merged with the ICE servers learned
// from the Link headers (rel="ice-server") of the most recent Preflight or
// Publish response. Use it to build the webrtc.Configuration of a new
// PeerConnection, e.g. when publishing again after ErrICEFailed.
func (c *Client) ICEServers() []webrtc.ICEServer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return mergeICEServers(c.cfg.ICEServers, c.learned)
}

func (c *Client) learn(servers []webrtc.ICEServer) {
	if len(servers) == 0 {
		return
	}
	c.mu.Lock()
	c.learned = slices.Clone(servers)
	c.mu.Unlock()
}

// Preflight sends an OPTIONS request to the endpoint and learns any ICE
// servers it announces in Link headers, then returns ICEServers(). Servers
// are not required to answer OPTIONS with ICE servers (RFC 9725 puts them
// on the 201 response; OPTIONS is often only a CORS preflight), so any
// status other than 401/403 is not an error: the configured servers are
// returned. Transport errors (refused host, certificate, timeout) are.
func (c *Client) Preflight(ctx context.Context) ([]webrtc.ICEServer, error) {
	servers, err := c.preflight(ctx)
	return servers, scrub(err, c.cfg.Token)
}

func (c *Client) preflight(ctx context.Context) ([]webrtc.ICEServer, error) {
	resp, _, err := c.do(ctx, http.MethodOptions, c.endpoint, "", nil, nil)
	if err != nil {
		return c.ICEServers(), err
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		return c.ICEServers(), c.httpError(resp, nil)
	}
	if resp.StatusCode/100 == 2 {
		servers := c.boundICEServers(parseICEServers(resp.Header.Values("Link")))
		c.learn(servers)
		c.log.Debug("whip: preflight", "endpoint", c.Endpoint(), "status", resp.StatusCode, "ice_servers", len(servers))
	}
	return c.ICEServers(), nil
}

// Publish runs the WHIP offer/answer exchange for pc, whose tracks must
// already be added:
//
//  1. If pc has no local description yet, it creates an offer and sets it;
//     it then waits (bounded by ctx) for ICE gathering to complete, so the
//     offer carries all candidates (no trickle needed).
//  2. It POSTs the offer (application/sdp, Bearer token), following
//     307/308 redirects with method and body preserved.
//  3. On 201 Created it resolves Location against the final request URL,
//     records ETag and Accept-Patch, parses Link rel="ice-server" headers
//     and applies them to pc with SetConfiguration (effective for the
//     next ICE gathering, i.e. an ICE restart; see the package docs), then
//     sets the answer as remote description.
//
// If anything fails after the 201, the session resource is DELETEd (best
// effort, 5 s) before the error is returned. Publish does not wait for
// the connection: call Session.WaitConnected. Publish never closes pc.
func (c *Client) Publish(ctx context.Context, pc *webrtc.PeerConnection) (*Session, error) {
	s, err := c.publish(ctx, pc)
	return s, scrub(err, c.cfg.Token)
}

func (c *Client) publish(ctx context.Context, pc *webrtc.PeerConnection) (*Session, error) {
	if pc == nil {
		return nil, errors.New("whip: nil PeerConnection")
	}
	offer, err := localOffer(ctx, pc)
	if err != nil {
		return nil, err
	}
	c.log.Info("whip: publishing", "endpoint", c.Endpoint())
	sent := offer
	if c.cfg.TrickleCandidates {
		sent = stripCandidates(offer)
	}
	resp, body, err := c.do(ctx, http.MethodPost, c.endpoint, contentTypeSDP, []byte(sent), nil)
	if err != nil {
		return nil, err
	}
	final := c.endpoint
	if resp.Request != nil && resp.Request.URL != nil {
		final = resp.Request.URL
	}
	cr, perr := parseCreated(final, resp.Header, body)
	if resp.StatusCode != http.StatusCreated {
		herr := c.httpError(resp, body)
		if resp.StatusCode/100 == 2 && cr.location != nil {
			// A session may have been created; do not leak it.
			s := c.newSession(pc, cr)
			s.abort(ctx, "unexpected status")
		}
		return nil, herr
	}
	if cr.location == nil {
		return nil, perr
	}
	cr.iceServers = c.boundICEServers(cr.iceServers)
	s := c.newSession(pc, cr)
	c.log.Info("whip: session created", "location", safeURL(cr.location), "etag", cr.etag != "", "ice_servers", len(cr.iceServers))
	if perr != nil {
		s.abort(ctx, "bad answer")
		return nil, perr
	}
	if err := c.checkURL(cr.location); err != nil {
		// Cannot even DELETE it; report why.
		return nil, fmt.Errorf("whip: session Location refused: %w", err)
	}
	if len(cr.iceServers) > 0 {
		c.learn(cr.iceServers)
		c.applyICEServers(pc, cr.iceServers)
	}
	answer, dropped, why := s.cands.FilterSDP(cr.answer)
	if dropped > 0 {
		c.log.Warn("whip: remote candidates of the answer dropped", "dropped", dropped, "why", why)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		s.abort(ctx, "answer rejected by peer connection")
		return nil, fmt.Errorf("%w: SDP answer not accepted: %w", ErrBadResponse, err)
	}
	if c.cfg.TrickleCandidates {
		// The server can still reach us without them (our checks teach it
		// peer-reflexive candidates), so a refusal is worth a warning only.
		if err := s.trickleAll(ctx); err != nil {
			c.log.Warn("whip: could not trickle the offer's candidates", "err", redact(err.Error(), c.cfg.Token))
		}
	}
	return s, nil
}

// localOffer returns the SDP of pc's local offer, creating and setting one
// if needed, after ICE gathering completed (or ctx ended).
func localOffer(ctx context.Context, pc *webrtc.PeerConnection) (string, error) {
	switch st := pc.SignalingState(); {
	case st == webrtc.SignalingStateHaveLocalOffer:
		// The caller already set an offer; just wait for gathering.
		if err := waitDone(ctx, webrtc.GatheringCompletePromise(pc)); err != nil {
			return "", err
		}
	case st == webrtc.SignalingStateStable && pc.CurrentRemoteDescription() == nil:
		offer, err := pc.CreateOffer(nil)
		if err != nil {
			return "", fmt.Errorf("whip: create offer: %w", err)
		}
		done := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(offer); err != nil {
			return "", fmt.Errorf("whip: set local description: %w", err)
		}
		if err := waitDone(ctx, done); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("whip: peer connection already negotiated (signaling state %s); use a fresh one", st)
	}
	ld := pc.LocalDescription()
	if ld == nil || ld.SDP == "" {
		return "", errNoLocalDescription
	}
	return ld.SDP, nil
}

func waitDone(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("whip: ICE gathering did not complete: %w", ctx.Err())
	}
}

// applyICEServers adds servers to pc's configuration. pion lets
// SetConfiguration change ICEServers after creation (other fields must stay
// equal, so the current configuration is used as base); the gatherer uses
// them from the next gathering on. Entries pion rejects are skipped.
func (c *Client) applyICEServers(pc *webrtc.PeerConnection, servers []webrtc.ICEServer) {
	cfg := pc.GetConfiguration()
	current := cfg.ICEServers
	merged := mergeICEServers(current, servers)
	if len(merged) == len(current) {
		return
	}
	cfg.ICEServers = merged
	if err := pc.SetConfiguration(cfg); err == nil {
		return
	}
	// Add one by one, keeping only what pion accepts.
	accepted := slices.Clone(current)
	for _, s := range servers {
		cfg.ICEServers = mergeICEServers(accepted, []webrtc.ICEServer{s})
		if err := pc.SetConfiguration(cfg); err != nil {
			c.log.Warn("whip: ICE server from Link header rejected by peer connection", "urls", s.URLs)
			continue
		}
		accepted = cfg.ICEServers
	}
	cfg.ICEServers = accepted
	_ = pc.SetConfiguration(cfg)
}

// boundICEServers applies the ICE policy to servers announced in Link
// headers: at most icepolicy.MaxServers entries and MaxURLs URLs, none at a
// refused address.
func (c *Client) boundICEServers(servers []webrtc.ICEServer) []webrtc.ICEServer {
	kept, dropped := c.ice.Servers(servers)
	if dropped > 0 {
		c.log.Warn("whip: ICE servers of the Link headers dropped by the ICE policy", "kept", len(kept), "dropped_urls", dropped)
	}
	return kept
}

// created is the useful content of a 201 response.
type created struct {
	location    *url.URL
	etag        string
	answer      string
	iceServers  []webrtc.ICEServer
	acceptPatch []string // media types, lower-case, nil if header absent
}

// parseCreated extracts Location (resolved against base, the final request
// URL), ETag, Accept-Patch, Link ice-servers and the SDP answer. It
// returns what it could parse plus an error if the response is unusable.
// cr.location is set whenever a Location was present, so the caller can
// DELETE the resource even if the rest is bad.
func parseCreated(base *url.URL, h http.Header, body []byte) (created, error) {
	var cr created
	loc := strings.TrimSpace(h.Get("Location"))
	if loc == "" {
		return cr, fmt.Errorf("%w: 201 without Location header", ErrBadResponse)
	}
	ref, err := url.Parse(loc)
	if err != nil || strings.ContainsAny(loc, "\r\n\x00") {
		return cr, fmt.Errorf("%w: invalid Location header", ErrBadResponse)
	}
	cr.location = base.ResolveReference(ref)
	cr.location.Fragment, cr.location.RawFragment = "", ""
	cr.etag = strings.TrimSpace(h.Get("ETag"))
	if strings.ContainsAny(cr.etag, "\r\n\x00") {
		cr.etag = ""
	}
	if vals := h.Values("Accept-Patch"); len(vals) > 0 {
		cr.acceptPatch = []string{}
		for _, v := range vals {
			for _, mt := range strings.Split(v, ",") {
				if mt, _, err := mime.ParseMediaType(strings.TrimSpace(mt)); err == nil {
					cr.acceptPatch = append(cr.acceptPatch, mt)
				}
			}
		}
	}
	cr.iceServers = parseICEServers(h.Values("Link"))
	if ct := h.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != contentTypeSDP {
			return cr, fmt.Errorf("%w: answer has Content-Type %q, want %s", ErrBadResponse, sanitizeSnippet([]byte(ct), ""), contentTypeSDP)
		}
	}
	answer := string(body)
	if !strings.HasPrefix(strings.TrimLeft(answer, " \t\r\n"), "v=0") {
		return cr, fmt.Errorf("%w: response body is not an SDP answer", ErrBadResponse)
	}
	cr.answer = answer
	return cr, nil
}

// do sends one request. It enforces the URL policy, adds the token only
// where allowed, reads (bounded) the body, and classifies transport
// errors. Status codes are left to the caller.
func (c *Client) do(ctx context.Context, method string, u *url.URL, contentType string, body []byte, hdr http.Header) (*http.Response, []byte, error) {
	if err := c.checkURL(u); err != nil {
		return nil, nil, err
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body) // sets GetBody: 307/308 can replay the body
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, nil, fmt.Errorf("whip: build %s request: invalid URL", method)
	}
	if body != nil && req.GetBody == nil {
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.cfg.Token != "" && c.tokenAllowedFor(u) {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		err = classifyTransportErr(ctx, method, u.Hostname(), err)
		c.log.Warn("whip: request failed", "method", method, "url", safeURL(u), "err", redact(err.Error(), c.cfg.Token))
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		err = classifyTransportErr(ctx, method, u.Hostname(), err)
		return nil, nil, err
	}
	c.log.Debug("whip: response", "method", method, "url", safeURL(resp.Request.URL), "status", resp.StatusCode)
	return resp, data, nil
}

// httpError builds the typed error for an unexpected status.
func (c *Client) httpError(resp *http.Response, body []byte) error {
	reason, kind := statusKind(resp.StatusCode)
	u := resp.Request.URL
	e := &HTTPError{
		Method:     resp.Request.Method,
		URL:        redact(safeURL(u), c.cfg.Token),
		Status:     resp.StatusCode,
		Reason:     reason,
		Body:       sanitizeSnippet(body, c.cfg.Token),
		RetryAfter: sanitizeSnippet([]byte(resp.Header.Get("Retry-After")), c.cfg.Token),
		kind:       kind,
	}
	if resp.StatusCode/100 == 2 {
		e.Reason = "expected 201 Created"
	}
	c.log.Warn("whip: server refused", "method", e.Method, "url", e.URL, "status", e.Status, "reason", e.Reason)
	return e
}
