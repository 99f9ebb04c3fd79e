package whip

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/konsult/konsult/media/internal/snippet"
)

// Sentinel errors. Every error returned by this package that has an
// actionable cause wraps exactly one of them, so callers can branch with
// errors.Is and show a person what to do. None of them, and no error
// returned by this package, ever contains the bearer token.
var (
	// ErrTokenRejected: the server answered 401. The token is expired,
	// signed with the wrong key, or not a token for this server.
	ErrTokenRejected = errors.New("whip: token rejected by server (expired or wrong key)")
	// ErrForbidden: the server answered 403. The token is valid but does
	// not grant publishing in this room.
	ErrForbidden = errors.New("whip: not allowed to publish in this room")
	// ErrNotFound: the server answered 404 (or 410). The endpoint URL or
	// the room is unknown, or the session is already gone.
	ErrNotFound = errors.New("whip: endpoint or room not found")
	// ErrBusy: the server answered 409 or 429. It is busy, the stream is
	// already being published, or the client is rate-limited; retry later
	// (see HTTPError.RetryAfter).
	ErrBusy = errors.New("whip: server busy or rate-limited; retry later")
	// ErrOfferRejected: the server answered 400, 406, 415 or 422. It could
	// not accept the SDP offer (codecs, format).
	ErrOfferRejected = errors.New("whip: server rejected the offer")
	// ErrServer: the server answered 5xx.
	ErrServer = errors.New("whip: server error")
	// ErrBadResponse: the server's answer could not be used (no Location,
	// empty or invalid SDP answer, unexpected status).
	ErrBadResponse = errors.New("whip: unusable response from server")
	// ErrNoAnswer: the request timed out (context deadline or HTTP client
	// timeout) before the server answered.
	ErrNoAnswer = errors.New("whip: no answer from server in time")
	// ErrUnreachable: the server could not be reached (DNS failure,
	// connection refused, network down, connection reset).
	ErrUnreachable = errors.New("whip: server unreachable")
	// ErrCertificate: the server's TLS certificate did not verify. The
	// error text names the host.
	ErrCertificate = errors.New("whip: TLS certificate check failed")
	// ErrInsecureScheme: refused to talk plain http to a host that is not
	// loopback (or any plain http with Config.RequireTLS), or the URL
	// scheme is neither http nor https. Nothing was sent.
	ErrInsecureScheme = errors.New("whip: refused: plain http is only allowed to loopback hosts")
	// ErrHostNotAllowed: the host is not on Config.AllowedHosts. Nothing
	// was sent to it (no DNS lookup, no connection).
	ErrHostNotAllowed = errors.New("whip: refused: host is not on the allow-list")
	// ErrLoopbackRefused: a redirect or session Location of a server that
	// is not on loopback pointed at a loopback host (the unit's own
	// services). Nothing was sent to it.
	ErrLoopbackRefused = errors.New("whip: refused: only a loopback endpoint may lead to a loopback host")
	// ErrICEFailed: ICE connectivity checks failed (no network path
	// between the unit and the media server: firewall, NAT, missing TURN).
	ErrICEFailed = errors.New("whip: ICE connection failed")
	// ErrDTLSFailed: ICE connected but the DTLS handshake failed.
	ErrDTLSFailed = errors.New("whip: DTLS handshake failed")
	// ErrNotSupported: the server does not support the requested
	// operation (trickle ICE or ICE restart via PATCH).
	ErrNotSupported = errors.New("whip: not supported by server")
	// ErrSessionClosed: the session has already been deleted.
	ErrSessionClosed = errors.New("whip: session already deleted")
)

// HTTPError is returned when the server answers with a status that is not
// the expected one. It unwraps to the matching sentinel (ErrTokenRejected,
// ErrForbidden, ...) so errors.Is works; use errors.As to get the details.
type HTTPError struct {
	Method     string // HTTP method of the failed request
	URL        string // request URL without query, fragment and userinfo
	Status     int    // HTTP status code
	Reason     string // what the status means for the user
	Body       string // sanitized start of the response body (≤ 200 bytes)
	RetryAfter string // Retry-After header, if any

	kind error
}

func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "whip: %s %s: %d %s", e.Method, e.URL, e.Status, http.StatusText(e.Status))
	if e.Reason != "" {
		b.WriteString(": ")
		b.WriteString(e.Reason)
	}
	if e.RetryAfter != "" {
		b.WriteString(" (retry after ")
		b.WriteString(e.RetryAfter)
		b.WriteString(")")
	}
	if e.Body != "" {
		fmt.Fprintf(&b, ": server said %q", e.Body)
	}
	return b.String()
}

// Unwrap returns the sentinel error for the status (may be nil).
func (e *HTTPError) Unwrap() error { return e.kind }

// statusKind maps an unexpected HTTP status to a sentinel and a reason.
func statusKind(status int) (reason string, kind error) {
	switch {
	case status == http.StatusUnauthorized:
		return "token rejected (expired or wrong key)", ErrTokenRejected
	case status == http.StatusForbidden:
		return "not allowed to publish in this room", ErrForbidden
	case status == http.StatusNotFound || status == http.StatusGone:
		return "room or endpoint unknown", ErrNotFound
	case status == http.StatusConflict:
		return "busy: conflicting session", ErrBusy
	case status == http.StatusTooManyRequests:
		return "rate-limited", ErrBusy
	case status == http.StatusBadRequest || status == http.StatusNotAcceptable ||
		status == http.StatusUnsupportedMediaType || status == http.StatusUnprocessableEntity:
		return "request rejected by server", ErrOfferRejected
	case status == http.StatusPreconditionFailed:
		return "ETag mismatch: the ICE session changed", nil
	case status == http.StatusMethodNotAllowed || status == http.StatusNotImplemented:
		return "operation not supported by server", ErrNotSupported
	case status >= 500:
		return "server error", ErrServer
	default:
		return "unexpected status", ErrBadResponse
	}
}

// maxBodySnippet bounds HTTPError.Body.
const maxBodySnippet = 200

// sanitizeSnippet keeps at most maxBodySnippet bytes of printable text:
// invalid UTF-8 and control characters dropped, whitespace collapsed. The
// token is removed after cleaning (so control characters cannot split it)
// and before truncation (so no prefix of it survives).
func sanitizeSnippet(body []byte, token string) string {
	return snippet.Clean(body, maxBodySnippet, token)
}

const redacted = "[REDACTED]"

// redact removes every occurrence of token from s.
func redact(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, redacted)
}

// redactedError hides the token in the message of a wrapped error while
// keeping errors.Is/As working.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// scrub is the last line of defence: any error leaving the package goes
// through it, so the token can never appear in Error().
func scrub(err error, token string) error {
	if err == nil || token == "" {
		return err
	}
	msg := err.Error()
	if !strings.Contains(msg, token) {
		return err
	}
	return &redactedError{msg: redact(msg, token), err: err}
}

// classifyTransportErr turns an error from http.Client.Do into an
// actionable error naming the host. The *url.Error wrapper (whose text
// contains the full URL, possibly with a query string) is dropped.
func classifyTransportErr(ctx context.Context, method, host string, err error) error {
	inner := err
	var ue *url.Error
	if errors.As(err, &ue) {
		inner = ue.Err
	}
	// Policy refusals from CheckRedirect are already complete errors.
	if errors.Is(inner, ErrInsecureScheme) || errors.Is(inner, ErrHostNotAllowed) ||
		errors.Is(inner, ErrLoopbackRefused) || errors.Is(inner, errRedirect) {
		return inner
	}
	var (
		cve  *tls.CertificateVerificationError
		uae  x509.UnknownAuthorityError
		he   x509.HostnameError
		cie  x509.CertificateInvalidError
		rcae *tls.RecordHeaderError
	)
	switch {
	case errors.As(inner, &cve), errors.As(inner, &uae), errors.As(inner, &he), errors.As(inner, &cie):
		return fmt.Errorf("%w for host %s: %w", ErrCertificate, host, inner)
	case errors.As(inner, &rcae):
		return fmt.Errorf("%w: host %s does not speak TLS: %w", ErrCertificate, host, inner)
	case errors.Is(inner, context.Canceled) && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("whip: %s to %s canceled: %w", method, host, context.Canceled)
	case errors.Is(inner, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) || isTimeout(inner):
		return fmt.Errorf("%w: %s did not answer %s in time: %w", ErrNoAnswer, host, method, context.DeadlineExceeded)
	default:
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, host, inner)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
