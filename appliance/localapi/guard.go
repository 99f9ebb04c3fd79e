package localapi

import (
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The loopback listener is reachable by every browser on the machine: any
// web site can make it send requests there. These checks refuse every
// request that a page from anywhere but the unit's own origin can make.
//
//   - Host must be a loopback name with the listener's port (421 otherwise).
//     A DNS-rebinding page (evil.example rebound to 127.0.0.1) is
//     same-origin with the API as far as the browser knows, and can read
//     the answers; only the Host it sends gives it away.
//   - Origin, when sent, must be the API's own origin, and a
//     Sec-Fetch-Site, when sent, must say same-origin or none (403). A
//     browser sends Origin with every cross-origin POST, including forms
//     and no-cors fetches; Sec-Fetch-Site also marks cross-site GETs (an
//     <img> holding /v1/events open). curl and roomctl send neither.
//   - The calls in unixOnly are not served here at all (403).
//
// requireJSON and readJSON (415, 400) hold on both listeners.
type loopbackGuard struct {
	hosts   map[string]bool
	origins map[string]bool
	want    string // for error messages
	log     *slog.Logger
	timeout time.Duration
}

func newLoopbackGuard(addr net.Addr, log *slog.Logger, bodyTimeout time.Duration) (*loopbackGuard, error) {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || !tcp.IP.IsLoopback() {
		return nil, fmt.Errorf("local API: %s is not a loopback TCP address: only a unix socket or loopback TCP may serve it", addr)
	}
	port := strconv.Itoa(tcp.Port)
	g := &loopbackGuard{hosts: map[string]bool{}, origins: map[string]bool{}, log: log, timeout: bodyTimeout}
	names := []string{"127.0.0.1", "localhost", "[::1]"}
	// Also the address it listens on, when that is another loopback one.
	own := tcp.IP.String()
	if tcp.IP.To4() == nil {
		own = "[" + own + "]"
	}
	if !slices.Contains(names, own) {
		names = append(names, own)
	}
	for _, n := range names {
		g.hosts[n+":"+port] = true
		g.origins["http://"+n+":"+port] = true
		if port == "80" { // a browser leaves out the default port
			g.hosts[n] = true
			g.origins["http://"+n] = true
		}
	}
	g.want = "127.0.0.1:" + port + ", localhost:" + port + " or [::1]:" + port
	return g, nil
}

func (g *loopbackGuard) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.hosts[strings.ToLower(r.Host)] {
			g.refuse(w, r, http.StatusMisdirectedRequest,
				fmt.Errorf("this API answers only to Host %s, not %q: a page on another name (DNS rebinding) may not use it", g.want, clip(r.Host)))
			return
		}
		if origins := r.Header.Values("Origin"); len(origins) > 0 {
			if len(origins) != 1 || !g.origins[strings.ToLower(origins[0])] {
				g.refuse(w, r, http.StatusForbidden,
					fmt.Errorf("request from origin %q refused: a web page from another site may not use the unit's API", clip(strings.Join(origins, ","))))
				return
			}
		}
		if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
			g.refuse(w, r, http.StatusForbidden,
				fmt.Errorf("%s request refused (Sec-Fetch-Site): a web page from another site may not use the unit's API", clip(site)))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (g *loopbackGuard) refuse(w http.ResponseWriter, r *http.Request, code int, err error) {
	g.log.Info("local api: refused a request from a browser or another site", "status", code, "method", r.Method, "path", r.URL.Path, "reason", err.Error())
	refuse(w, code, err, g.timeout)
}

// refuse answers a request that is not served, and closes its connection
// after: the server reads the unread body before it answers, and a client
// trickling it must not hold the connection there.
func refuse(w http.ResponseWriter, code int, err error, bodyTimeout time.Duration) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	w.Header().Set("Connection", "close")
	writeErr(w, code, err)
}

// requireJSON refuses a state-changing request whose Content-Type is not
// application/json (optionally with charset=utf-8, as many clients add).
// The content types a page may send cross-site without a CORS preflight
// (text/plain, form encodings) are exactly what this refuses.
func requireJSON(next http.Handler, log *slog.Logger, bodyTimeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		if err := checkJSONType(r.Header.Values("Content-Type")); err != nil {
			log.Info("local api: refused a request body that is not JSON", "method", r.Method, "path", r.URL.Path, "reason", err.Error())
			refuse(w, http.StatusUnsupportedMediaType, err, bodyTimeout)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func checkJSONType(values []string) error {
	if len(values) != 1 {
		return fmt.Errorf("send the body with one Content-Type: application/json header (got %d)", len(values))
	}
	mt, params, err := mime.ParseMediaType(values[0])
	if err == nil && mt == "application/json" {
		cs, hasCS := params["charset"]
		if len(params) == 0 || len(params) == 1 && hasCS && strings.EqualFold(cs, "utf-8") {
			return nil
		}
	}
	return fmt.Errorf("content type %q refused: send Content-Type: application/json", clip(values[0]))
}

// clip keeps what a stranger sent short in answers and logs.
func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}
