package localapi

import (
	"log/slog"
	"net"
	"net/http"
	"time"
)

// LoopbackGuard wraps next in the loopback listener's checks (guard.go:
// Host a loopback name with the listener's port, else 421; Origin the
// listener's own origin and Sec-Fetch-Site same-origin or none, else 403),
// for another server on the unit's loopback: the screen page's. addr is
// the listener's address; a non-loopback one is an error.
func LoopbackGuard(addr net.Addr, log *slog.Logger, next http.Handler) (http.Handler, error) {
	g, err := newLoopbackGuard(addr, log, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return g.wrap(next), nil
}

// RequireJSON refuses (415) a request other than GET, HEAD or OPTIONS whose
// body is not application/json: what a page on another site can send
// without a CORS preflight.
func RequireJSON(next http.Handler, log *slog.Logger) http.Handler {
	return requireJSON(next, log, 10*time.Second)
}
