package whip

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/icepolicy"
)

// patchSupport records what is known about PATCH (trickle ICE / ICE
// restart) support of the session resource.
type patchSupport int

const (
	patchUnknown patchSupport = iota // no Accept-Patch: try, learn from the answer
	patchYes
	patchNo
)

// Session is a published WHIP session (the resource at Location). It is
// safe for concurrent use. Always end it with Delete.
type Session struct {
	c          *Client
	pc         *webrtc.PeerConnection
	location   *url.URL
	iceServers []webrtc.ICEServer
	cands      *icepolicy.Candidates // the server's candidates taken so far

	patchMu sync.Mutex // serializes PATCH requests: trickle waits for an ICE restart

	mu      sync.Mutex
	etag    string
	patch   patchSupport
	deleted bool
}

func (c *Client) newSession(pc *webrtc.PeerConnection, cr created) *Session {
	s := &Session{c: c, pc: pc, location: cr.location, etag: cr.etag, iceServers: cr.iceServers,
		cands: &icepolicy.Candidates{Policy: c.ice}}
	if cr.acceptPatch != nil {
		s.patch = patchNo
		if slices.Contains(cr.acceptPatch, contentTypeSDPFrag) {
			s.patch = patchYes
		}
	}
	return s
}

// Location returns the absolute URL of the session resource (the 201's
// Location resolved against the final, post-redirect, request URL).
func (s *Session) Location() string { return s.location.String() }

// ETag returns the current entity tag of the ICE session ("" if the server
// sent none). It changes after RestartICE.
func (s *Session) ETag() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etag
}

// ICEServers returns the ICE servers the server announced in Link headers
// of the 201 response (already applied to the PeerConnection).
func (s *Session) ICEServers() []webrtc.ICEServer { return slices.Clone(s.iceServers) }

// SupportsPatch reports whether the server announced (Accept-Patch) or
// showed (a successful PATCH) support for trickle ICE and ICE restarts.
// It is false while unknown.
func (s *Session) SupportsPatch() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.patch == patchYes
}

// Delete ends the session with an HTTP DELETE on its Location. It is
// idempotent: after a successful Delete (2xx, or 404/410 because the
// server already forgot the session) further calls return nil. It does not
// close the PeerConnection; the caller does that.
func (s *Session) Delete(ctx context.Context) error {
	s.mu.Lock()
	done := s.deleted
	s.mu.Unlock()
	if done {
		return nil
	}
	resp, body, err := s.c.do(ctx, http.MethodDelete, s.location, "", nil, nil)
	if err != nil {
		return scrub(err, s.c.cfg.Token)
	}
	if resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone {
		s.mu.Lock()
		s.deleted = true
		s.mu.Unlock()
		s.c.log.Info("whip: session deleted", "location", safeURL(s.location), "status", resp.StatusCode)
		return nil
	}
	return scrub(s.c.httpError(resp, body), s.c.cfg.Token)
}

// abort DELETEs the session after a failure, best effort, with a short
// timeout that survives cancellation of ctx.
func (s *Session) abort(ctx context.Context, why string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := s.Delete(ctx); err != nil {
		s.c.log.Warn("whip: cleanup DELETE failed", "location", safeURL(s.location), "why", why,
			"err", redact(err.Error(), s.c.cfg.Token))
		return
	}
	s.c.log.Info("whip: session deleted after failure", "why", why)
}

func (s *Session) checkPatch(what string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.deleted:
		return ErrSessionClosed
	case s.patch == patchNo:
		return fmt.Errorf("%w: %s (server does not accept %s PATCH)", ErrNotSupported, what, contentTypeSDPFrag)
	}
	return nil
}

func (s *Session) setPatch(p patchSupport) {
	s.mu.Lock()
	s.patch = p
	s.mu.Unlock()
}

// patchStatus interprets the status of a PATCH response.
func (s *Session) patchStatus(resp *http.Response, body []byte, what string) error {
	switch resp.StatusCode {
	case http.StatusMethodNotAllowed, http.StatusUnsupportedMediaType, http.StatusNotImplemented:
		s.setPatch(patchNo)
		s.c.log.Info("whip: server does not support PATCH", "what", what, "status", resp.StatusCode)
		return fmt.Errorf("%w: %s (server answered %d)", ErrNotSupported, what, resp.StatusCode)
	}
	return s.c.httpError(resp, body)
}

// Trickle sends one local ICE candidate to the server with a PATCH of type
// application/trickle-ice-sdpfrag (RFC 8840, RFC 9725 section 4.4.1),
// carrying If-Match with the current ETag. An empty cand.Candidate sends
// a=end-of-candidates. The candidate is placed under the first m-line
// (max-bundle) with the current local ice-ufrag/ice-pwd.
//
// Publish already sends a complete offer, so Trickle is only needed for
// candidates gathered later. If the server said (Accept-Patch) or shows
// (405, 415, 501) that it does not support it, ErrNotSupported is returned
// and no further PATCH is attempted.
func (s *Session) Trickle(ctx context.Context, cand webrtc.ICECandidateInit) error {
	return scrub(s.trickle(ctx, cand), s.c.cfg.Token)
}

func (s *Session) trickle(ctx context.Context, cand webrtc.ICECandidateInit) error {
	if err := s.checkPatch("trickle ICE"); err != nil {
		return err
	}
	var cands []string
	end := strings.TrimSpace(cand.Candidate) == ""
	if !end {
		c, ok := normCandidate(cand.Candidate)
		if !ok {
			return errors.New("whip: invalid ICE candidate")
		}
		cands = []string{c}
	}
	s.patchMu.Lock()
	defer s.patchMu.Unlock()
	return s.trickleLocked(ctx, cands, end)
}

// trickleLocked PATCHes cands (and end-of-candidates if end) with the
// current ETag; the caller holds patchMu.
func (s *Session) trickleLocked(ctx context.Context, cands []string, end bool) error {
	ld := s.pc.LocalDescription()
	if ld == nil {
		return errNoLocalDescription
	}
	frag, err := buildFrag(parseICEInfo(ld.SDP), cands, end)
	if err != nil {
		return err
	}
	hdr := http.Header{}
	if etag := s.ETag(); etag != "" {
		hdr.Set("If-Match", etag)
	}
	resp, body, err := s.c.do(ctx, http.MethodPatch, s.location, contentTypeSDPFrag, []byte(frag), hdr)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusOK {
		s.setPatch(patchYes)
		return nil
	}
	return s.patchStatus(resp, body, "trickle ICE")
}

// RestartICE performs an ICE restart (RFC 9725 section 4.4.2): it creates
// an offer with ICERestart, waits for gathering, and PATCHes the new
// ice-ufrag/ice-pwd and candidates as application/trickle-ice-sdpfrag with
// "If-Match: *" (the RFC requires the wildcard for restarts). The 200
// answer's fragment (the server's new credentials and candidates) is
// merged into the current remote description, which is set again; the
// new ETag is recorded. Media parameters are not renegotiated.
//
// ICE servers learned from Link headers are used by this new gathering.
// If the server does not support restarts, ErrNotSupported is returned;
// note that pion has already restarted its ICE agent by then, so the
// connection will not recover: Delete and Publish again.
func (s *Session) RestartICE(ctx context.Context) error {
	return scrub(s.restartICE(ctx), s.c.cfg.Token)
}

func (s *Session) restartICE(ctx context.Context) error {
	if err := s.checkPatch("ICE restart"); err != nil {
		return err
	}
	s.patchMu.Lock()
	defer s.patchMu.Unlock()
	// A restart whose PATCH failed (the network was still down) leaves its
	// offer pending: send that one again rather than a new one.
	if s.pc.SignalingState() != webrtc.SignalingStateHaveLocalOffer {
		offer, err := s.pc.CreateOffer(&webrtc.OfferOptions{ICERestart: true})
		if err != nil {
			return fmt.Errorf("whip: create ICE restart offer: %w", err)
		}
		done := webrtc.GatheringCompletePromise(s.pc)
		if err := s.pc.SetLocalDescription(offer); err != nil {
			return fmt.Errorf("whip: set ICE restart offer: %w", err)
		}
		if err := waitDone(ctx, done); err != nil {
			return err
		}
	}
	ld := s.pc.LocalDescription()
	if ld == nil {
		return errNoLocalDescription
	}
	info := parseICEInfo(ld.SDP)
	cands := info.candidates
	if s.c.cfg.TrickleCandidates {
		cands = nil
	}
	frag, err := buildFrag(info, cands, !s.c.cfg.TrickleCandidates)
	if err != nil {
		return err
	}
	hdr := http.Header{}
	hdr.Set("If-Match", "*")
	resp, body, err := s.c.do(ctx, http.MethodPatch, s.location, contentTypeSDPFrag, []byte(frag), hdr)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode/100 == 2 {
			return fmt.Errorf("%w: ICE restart answered %d without the server's new ICE credentials", ErrBadResponse, resp.StatusCode)
		}
		return s.patchStatus(resp, body, "ICE restart")
	}
	s.setPatch(patchYes)
	remote := parseICEInfo(string(body))
	if remote.ufrag == "" || remote.pwd == "" {
		return fmt.Errorf("%w: ICE restart answer lacks ice-ufrag/ice-pwd", ErrBadResponse)
	}
	var kept []string
	var why error
	for _, cand := range remote.candidates {
		if err := s.cands.Take(remote.ufrag, cand); err != nil {
			why = err
			continue
		}
		kept = append(kept, cand)
	}
	if dropped := len(remote.candidates) - len(kept); dropped > 0 {
		s.c.log.Warn("whip: remote candidates of the ICE restart answer dropped", "dropped", dropped, "why", why)
	}
	remote.candidates = kept
	rd := s.pc.RemoteDescription()
	if rd == nil {
		return errors.New("whip: peer connection has no remote description")
	}
	answer := webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: patchAnswer(rd.SDP, remote)}
	if err := s.pc.SetRemoteDescription(answer); err != nil {
		return fmt.Errorf("%w: ICE restart answer not accepted: %w", ErrBadResponse, err)
	}
	if etag := strings.TrimSpace(resp.Header.Get("ETag")); etag != "" && !strings.ContainsAny(etag, "\r\n") {
		s.mu.Lock()
		s.etag = etag
		s.mu.Unlock()
	}
	s.c.log.Info("whip: ICE restarted", "location", safeURL(s.location))
	if s.c.cfg.TrickleCandidates {
		if err := s.trickleLocked(ctx, info.candidates, true); err != nil {
			return fmt.Errorf("whip: trickle candidates after ICE restart: %w", err)
		}
	}
	return nil
}

// trickleAll sends every candidate of the local description, and
// end-of-candidates, in one PATCH.
func (s *Session) trickleAll(ctx context.Context) error {
	if err := s.checkPatch("trickle ICE"); err != nil {
		return err
	}
	s.patchMu.Lock()
	defer s.patchMu.Unlock()
	ld := s.pc.LocalDescription()
	if ld == nil {
		return errNoLocalDescription
	}
	return s.trickleLocked(ctx, parseICEInfo(ld.SDP).candidates, true)
}

// pollInterval is how often WaitConnected samples the connection state.
// Polling (instead of OnConnectionStateChange) leaves the caller's pion
// callbacks untouched.
const pollInterval = 20 * time.Millisecond

// WaitConnected waits until the PeerConnection is Connected (ICE and DTLS
// up). If it fails, is closed, or ctx ends first, the session is DELETEd
// (best effort) and the error says why: ErrICEFailed (no network path;
// ICE state failed or never connected) or ErrDTLSFailed (ICE connected but
// the DTLS transport failed or never completed). A ctx deadline is also
// reported (errors.Is(err, context.DeadlineExceeded)).
func (s *Session) WaitConnected(ctx context.Context) error {
	return scrub(s.waitConnected(ctx), s.c.cfg.Token)
}

func (s *Session) waitConnected(ctx context.Context) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		switch s.pc.ConnectionState() {
		case webrtc.PeerConnectionStateConnected:
			s.c.log.Info("whip: connected", "location", safeURL(s.location))
			return nil
		case webrtc.PeerConnectionStateFailed:
			err := s.failure(nil)
			s.abort(ctx, err.Error())
			return err
		case webrtc.PeerConnectionStateClosed:
			err := fmt.Errorf("whip: peer connection closed before connecting: %w", webrtc.ErrConnectionClosed)
			s.abort(ctx, "peer connection closed")
			return err
		}
		select {
		case <-ctx.Done():
			err := s.failure(ctx.Err())
			s.abort(ctx, err.Error())
			return err
		case <-t.C:
		}
	}
}

// failure tells ICE and DTLS failures apart from the ICE connection state
// and the DTLS transport state.
func (s *Session) failure(cause error) error {
	ice := s.pc.ICEConnectionState()
	dtls := webrtc.DTLSTransportStateNew
	if sctp := s.pc.SCTP(); sctp != nil && sctp.Transport() != nil {
		dtls = sctp.Transport().State()
	}
	iceUp := ice == webrtc.ICEConnectionStateConnected || ice == webrtc.ICEConnectionStateCompleted
	kind := ErrICEFailed
	if ice != webrtc.ICEConnectionStateFailed && (dtls == webrtc.DTLSTransportStateFailed || iceUp) {
		kind = ErrDTLSFailed
	}
	s.c.log.Warn("whip: connection failed", "ice_state", ice.String(), "dtls_state", dtls.String())
	if cause != nil {
		return fmt.Errorf("%w (ICE %s, DTLS %s): %w", kind, ice, dtls, cause)
	}
	return fmt.Errorf("%w (ICE %s, DTLS %s)", kind, ice, dtls)
}
