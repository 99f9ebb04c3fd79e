package whip

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/media/icepolicy"
)

// Tests of a hostile or broken WHIP server (issue 16, items 3, 6, 7, 8).

// linkFlood is n distinct TURN Link header values (distinct ports, so no
// de-duplication hides them).
func linkFlood(n int, host string) []string {
	v := make([]string, n)
	for i := range v {
		v[i] = fmt.Sprintf(`<turn:%s:%d?transport=udp>; rel="ice-server"; username="u"; credential="c"`, host, 10000+i%50000)
	}
	return v
}

// TestHostileLinkFloodBounded: a server announcing 30,000 TURN servers and
// then taking an ICE restart made pion open a socket and goroutines per
// URL (measured before the fix: ~64,000 goroutines, 870 MB heap). The unit
// must take at most icepolicy.MaxURLs of them, and its goroutines and heap
// must stay flat.
func TestHostileLinkFloodBounded(t *testing.T) {
	const n = 30000
	srv, _ := newWHIPServer(t, whipOpts{
		headers: http.Header{"Link": linkFlood(n, "127.0.0.1"), "Accept-Patch": {"application/trickle-ice-sdpfrag"}},
		patch: func(w http.ResponseWriter, r *http.Request, body string) {
			w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
			w.WriteHeader(http.StatusOK)
			fmt.Fprint(w, "a=ice-ufrag:NeWuFrAg\r\na=ice-pwd:NeWpAsSwOrDnEwPaSsWoRd12\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=end-of-candidates\r\n")
		},
	})
	// Go's own client (10 MB header limit), as a caller-supplied one may be.
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", HTTPClient: &http.Client{Timeout: 30 * time.Second}})
	pc, _ := newPublisherPC(t)
	runtime.GC()
	g0 := runtime.NumGoroutine()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)

	s, err := c.Publish(ctxT(t, 20*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Delete(context.Background()) }()
	// The new servers are used by the next gathering: force it.
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.RestartICE(rctx); err != nil {
		t.Logf("RestartICE: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	g1 := runtime.NumGoroutine()
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	urls := 0
	for _, srv := range pc.GetConfiguration().ICEServers {
		urls += len(srv.URLs)
	}
	t.Logf("%d Link entries: %d URLs applied, goroutines %d -> %d, heap in use %.1f -> %.1f MB",
		n, urls, g0, g1, float64(m0.HeapInuse)/1e6, float64(m1.HeapInuse)/1e6)
	if urls > icepolicy.MaxURLs {
		t.Errorf("%d ICE server URLs from Link headers applied, want at most %d", urls, icepolicy.MaxURLs)
	}
	if g1-g0 > 400 {
		t.Errorf("goroutines grew by %d after the restart, want a bounded few hundred", g1-g0)
	}
}

// TestHostileLinkHeaderTooBig: the package's own transport refuses a
// response whose header block is megabytes of Link headers instead of
// reading 10 MB of it.
func TestHostileLinkHeaderTooBig(t *testing.T) {
	srv, _ := newWHIPServer(t, whipOpts{headers: http.Header{"Link": linkFlood(30000, "127.0.0.1")}})
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", HTTPClient: NewHTTPClient()})
	pc, _ := newPublisherPC(t)
	if _, err := c.Publish(ctxT(t, 10*time.Second), pc); err == nil {
		t.Fatal("a 2 MB header block was taken; want the response refused")
	}
}

// TestHostileLinkInternalTURNRefused: TURN and STUN URLs naming internal
// hosts are refused unless the policy allows them.
func TestHostileLinkInternalTURNRefused(t *testing.T) {
	internal := []string{"127.0.0.1", "10.0.0.5", "172.16.1.1", "192.168.1.1", "169.254.169.254", "[fd00::1]", "[::1]", "[fe80::1]", "0.0.0.0", "224.0.0.1", "localhost", "[::ffff:10.0.0.1]"}
	var links []string
	for _, h := range internal {
		links = append(links, fmt.Sprintf(`<turns:%s:5349?transport=tcp>; rel="ice-server"; username="u"; credential="c"`, h))
		links = append(links, fmt.Sprintf(`<stun:%s:3478>; rel="ice-server"`, h))
	}
	links = append(links, `<turns:turn.example.org:443?transport=tcp>; rel="ice-server"; username="u"; credential="c"`)
	srv, _ := newWHIPServer(t, whipOpts{headers: http.Header{"Link": links}})
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", ICEPolicy: &icepolicy.Policy{}})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Delete(context.Background()) }()
	var got []string
	for _, srv := range pc.GetConfiguration().ICEServers {
		got = append(got, srv.URLs...)
	}
	if len(got) != 1 || got[0] != "turns:turn.example.org:443?transport=tcp" {
		t.Errorf("ICE servers applied: %q, want only the public one", got)
	}
}

// stunSinks opens n UDP sockets on loopback and records which of them
// receive anything (the unit's connectivity checks).
type stunSinks struct {
	conns []*net.UDPConn
	mu    sync.Mutex
	hit   map[int]int
}

func newSTUNSinks(t *testing.T, n int) *stunSinks {
	t.Helper()
	s := &stunSinks{hit: map[int]int{}}
	for i := 0; i < n; i++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		s.conns = append(s.conns, c)
		go func(i int) {
			buf := make([]byte, 1500)
			for {
				if _, _, err := c.ReadFromUDP(buf); err != nil {
					return
				}
				s.mu.Lock()
				s.hit[i]++
				s.mu.Unlock()
			}
		}(i)
	}
	return s
}

// candidates renders one host candidate line per sink.
func (s *stunSinks) candidates() string {
	var b strings.Builder
	for i, c := range s.conns {
		fmt.Fprintf(&b, "a=candidate:%d 1 udp 2130706431 127.0.0.1 %d typ host\r\n", 100+i, c.LocalAddr().(*net.UDPAddr).Port)
	}
	return b.String()
}

func (s *stunSinks) reached() (addrs, packets int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.hit {
		packets += n
	}
	return len(s.hit), packets
}

// withCandidates replaces the answer's own candidates by cands (so ICE
// never connects and keeps checking every pair).
func withCandidates(sdp, cands string) string {
	var out []string
	done := false
	for _, l := range sdpLines(sdp) {
		if strings.HasPrefix(l, "a=candidate:") {
			continue
		}
		out = append(out, l)
		if !done && strings.HasPrefix(l, "a=ice-pwd:") {
			out = append(out, strings.TrimSuffix(cands, "\r\n"))
			done = true
		}
	}
	return strings.Join(out, "\r\n") + "\r\n"
}

// TestHostileAnswerCandidatesBounded: the server's answer (or its ICE
// restart answer) names 40 addresses; before the fix the unit sent
// connectivity checks to every one of them, a scanner for whoever runs the
// server. At most icepolicy.MaxCandidates may be reached.
func TestHostileAnswerCandidatesBounded(t *testing.T) {
	for _, via := range []string{"answer", "restart"} {
		t.Run(via, func(t *testing.T) {
			sinks := newSTUNSinks(t, 40)
			o := whipOpts{headers: http.Header{"Accept-Patch": {"application/trickle-ice-sdpfrag"}}}
			if via == "answer" {
				o.answer = func(a string) string { return withCandidates(a, sinks.candidates()) }
			} else {
				o.answer = func(a string) string { return withCandidates(a, "") }
				o.patch = func(w http.ResponseWriter, r *http.Request, body string) {
					w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
					w.WriteHeader(http.StatusOK)
					fmt.Fprintf(w, "a=ice-ufrag:NeWuFrAg\r\na=ice-pwd:NeWpAsSwOrDnEwPaSsWoRd12\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n%sa=end-of-candidates\r\n", sinks.candidates())
				}
			}
			srv, _ := newWHIPServer(t, o)
			c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
			pc, _ := newPublisherPC(t)
			s, err := c.Publish(ctxT(t, 5*time.Second), pc)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Delete(context.Background()) }()
			if via == "restart" {
				if err := s.RestartICE(ctxT(t, 5*time.Second)); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(3 * time.Second)
			addrs, packets := sinks.reached()
			t.Logf("40 candidates via %s: %d addresses reached, %d packets", via, addrs, packets)
			if addrs == 0 {
				t.Fatal("no candidate was checked at all: the test does not see the unit's checks")
			}
			if addrs > icepolicy.MaxCandidates {
				t.Errorf("connectivity checks went to %d server-named addresses, want at most %d", addrs, icepolicy.MaxCandidates)
			}
		})
	}
}

// TestHostileAnswerInternalCandidatesRefused: with the strict policy (a
// server that is not on the local network), candidates at loopback
// addresses get no connectivity check at all.
func TestHostileAnswerInternalCandidatesRefused(t *testing.T) {
	sinks := newSTUNSinks(t, 4)
	srv, _ := newWHIPServer(t, whipOpts{answer: func(a string) string { return withCandidates(a, sinks.candidates()) }})
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", ICEPolicy: &icepolicy.Policy{}})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Delete(context.Background()) }()
	time.Sleep(2 * time.Second)
	if addrs, packets := sinks.reached(); addrs != 0 {
		t.Errorf("%d packets to %d loopback addresses the server named, want none", packets, addrs)
	}
}

// remoteTLSEndpoint serves h over TLS as "https://example.com" (the name
// httptest's certificate carries); every other address is dialled for real,
// so a redirect to loopback reaches loopback unless the client refuses it.
func remoteTLSEndpoint(t *testing.T, h http.Handler) *http.Client {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	base := srv.Client().Transport.(*http.Transport)
	var d net.Dialer
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: base.TLSClientConfig.RootCAs},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == "example.com:443" {
				addr = srv.Listener.Addr().String()
			}
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestHostileRedirectToLoopback: a remote server redirected (307) or
// pointed its session Location at a plain-http service on the unit's
// loopback; the unit sent POST/DELETE there. Only a loopback endpoint may
// lead to loopback.
func TestHostileRedirectToLoopback(t *testing.T) {
	local, lrc := newWHIPServer(t, whipOpts{}) // "a LiveKit on the unit"
	for _, how := range []string{"307", "location"} {
		t.Run(how, func(t *testing.T) {
			inner := newWHIPHandler(t, whipOpts{location: local.URL + "/whip/v1/victim"})
			hc := remoteTLSEndpoint(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if how == "307" {
					http.Redirect(w, r, local.URL+"/whip/v1", http.StatusTemporaryRedirect)
					return
				}
				inner.ServeHTTP(w, r)
			}))
			c := newClient(t, Config{Endpoint: "https://example.com/whip", HTTPClient: hc})
			pc, _ := newPublisherPC(t)
			s, err := c.Publish(ctxT(t, 5*time.Second), pc)
			if err == nil {
				_ = s.Delete(ctxT(t, 2*time.Second))
			}
			if n := len(lrc.all()); n != 0 {
				t.Fatalf("the remote server steered %d requests to the unit's loopback (%+v)", n, lrc.all()[0].Method)
			}
			if !errors.Is(err, ErrLoopbackRefused) {
				t.Errorf("err = %v, want ErrLoopbackRefused", err)
			}
		})
	}
}

// TestHostileRedirectOtherPortNoToken: the token is scoped to the
// endpoint's origin; a redirect to another port of the same host (another
// service) must not receive it.
func TestHostileRedirectOtherPortNoToken(t *testing.T) {
	other, orc := newWHIPServer(t, whipOpts{})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/whip/v1", http.StatusTemporaryRedirect)
	}))
	defer front.Close()
	c := newClient(t, Config{Endpoint: front.URL + "/whip/v1"})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Delete(ctxT(t, 2*time.Second))
	for _, r := range orc.all() {
		if r.Header.Get("Authorization") != "" {
			t.Errorf("%s to another port of the same host carried the Bearer token", r.Method)
		}
	}
}
