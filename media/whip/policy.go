package whip

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// errRedirect marks redirect-policy refusals (method-changing redirects,
// too many hops).
var errRedirect = errors.New("whip: redirect refused")

const maxRedirects = 5

// normHost lower-cases a host name and drops a trailing dot.
func normHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// isLoopbackHost reports whether host (as returned by url.URL.Hostname) is
// "localhost" or a loopback IP literal (127.0.0.0/8, ::1). No DNS lookup
// is done.
func isLoopbackHost(host string) bool {
	h := normHost(host)
	if h == "localhost" {
		return true
	}
	if i := strings.IndexByte(h, '%'); i >= 0 { // IPv6 zone
		h = h[:i]
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

// isUnspecifiedHost reports whether host is 0.0.0.0 or ::, which Linux
// connects to loopback.
func isUnspecifiedHost(host string) bool {
	a, err := netip.ParseAddr(normHost(host))
	return err == nil && a.Unmap().IsUnspecified()
}

// hostMatches reports whether host matches an allow-list pattern: exact
// (case-insensitive) or "*.example.org" for any subdomain of example.org
// (but not example.org itself).
func hostMatches(host, pattern string) bool {
	h, p := normHost(host), normHost(strings.TrimSpace(pattern))
	if h == "" || p == "" {
		return false
	}
	if suffix, ok := strings.CutPrefix(p, "*."); ok {
		return suffix != "" && strings.HasSuffix(h, "."+suffix) && len(h) > len(suffix)+1
	}
	return h == p
}

// onAllowList reports whether host is on the allow-list (false when the
// list is empty).
func (c *Client) onAllowList(host string) bool {
	for _, p := range c.cfg.AllowedHosts {
		if hostMatches(host, p) {
			return true
		}
	}
	return false
}

// checkURL enforces the transport policy on a URL before anything is sent
// to it: https (or http to loopback unless RequireTLS), and the allow-list.
func (c *Client) checkURL(u *url.URL) error {
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%w: URL has no host", ErrBadResponse)
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "http":
		if c.cfg.RequireTLS {
			return fmt.Errorf("%w (RequireTLS is set): host %s", ErrInsecureScheme, host)
		}
		if !isLoopbackHost(host) {
			return fmt.Errorf("%w: host %s", ErrInsecureScheme, host)
		}
	default:
		return fmt.Errorf("%w: unsupported scheme %q for host %s", ErrInsecureScheme, u.Scheme, host)
	}
	// A remote server must not aim the unit at its own loopback services
	// (a redirect or a Location to 127.0.0.1, over http or https): only an
	// endpoint that is itself on loopback may lead there.
	if (isLoopbackHost(host) || isUnspecifiedHost(host)) && c.endpoint != nil && !isLoopbackHost(c.endpoint.Hostname()) {
		return fmt.Errorf("%w: %s leads to %s", ErrLoopbackRefused, safeURL(c.endpoint), host)
	}
	if len(c.cfg.AllowedHosts) > 0 && !c.onAllowList(host) {
		return fmt.Errorf("%w: host %s", ErrHostNotAllowed, host)
	}
	return nil
}

// tokenAllowedFor reports whether the bearer token may be sent to u: only to
// the endpoint's own origin (scheme, host and port: another port on the
// same host is another service), or to a host on a non-empty allow-list
// (the operator named those hosts as the conference's own).
func (c *Client) tokenAllowedFor(u *url.URL) bool {
	if sameOrigin(u, c.endpoint) {
		return true
	}
	return len(c.cfg.AllowedHosts) > 0 && c.onAllowList(u.Hostname())
}

// sameOrigin compares scheme, host and port (an absent port is the
// scheme's default).
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && normHost(a.Hostname()) == normHost(b.Hostname()) &&
		effectivePort(a) == effectivePort(b)
}

func effectivePort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	switch strings.ToLower(u.Scheme) {
	case "https", "wss":
		return "443"
	case "http", "ws":
		return "80"
	}
	return ""
}

// checkRedirect is installed as http.Client.CheckRedirect. It applies the
// URL policy to every hop, refuses redirects that would turn the POST into
// a GET (only 307/308 keep method and body), and strips the Authorization
// header unless the token may go to the new host.
func (c *Client) checkRedirect(next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("%w: more than %d redirects", errRedirect, maxRedirects)
		}
		if err := c.checkURL(req.URL); err != nil {
			return err
		}
		if len(via) > 0 && req.Method != via[0].Method {
			return fmt.Errorf("%w: %s to %s answered with a redirect that changes the method; only 307/308 are followed",
				errRedirect, via[0].Method, safeURL(via[len(via)-1].URL))
		}
		if c.cfg.Token != "" && c.tokenAllowedFor(req.URL) {
			req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
		} else {
			req.Header.Del("Authorization")
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
}

// safeURL renders a URL for logs and errors: scheme, host and path only
// (no userinfo, query or fragment, which may carry secrets).
func safeURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	v := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	return v.String()
}

// CheckURL applies the same transport policy as a Client to a signalling
// URL of another protocol (LiveKit's WebSocket signalling): https (or http
// to loopback), and the allow-list when one is set. ws and wss count as
// http and https.
func CheckURL(raw string, allowedHosts []string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("whip: invalid URL")
	}
	switch strings.ToLower(u.Scheme) {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	}
	c := &Client{cfg: Config{AllowedHosts: allowedHosts}}
	return c.checkURL(u)
}
