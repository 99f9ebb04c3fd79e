package whip

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/internal/syncbuf"
)

// testToken is distinctive so that leaks are easy to find.
const testToken = "tok-SECRET-7f3a9c1e-DO-NOT-LEAK"

// loopbackAPI returns a pion API that only gathers UDP4 loopback host
// candidates: fast, deterministic, no traffic leaves the machine.
func loopbackAPI(t testing.TB) *webrtc.API {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(m))
}

// newPublisherPC builds a client PeerConnection with one VP8 track.
func newPublisherPC(t testing.TB) (*webrtc.PeerConnection, *webrtc.TrackLocalStaticSample) {
	t.Helper()
	pc, err := loopbackAPI(t).NewPeerConnection(webrtc.Configuration{BundlePolicy: webrtc.BundlePolicyMaxBundle})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	track, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "room-unit")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.AddTrack(track); err != nil {
		t.Fatal(err)
	}
	return pc, track
}

// answerer is a pion PeerConnection playing the WHIP server's side.
func answerer(t testing.TB, offer string) (*webrtc.PeerConnection, string) {
	t.Helper()
	pc, err := loopbackAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		t.Errorf("server: set offer: %v", err)
		return pc, ""
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		t.Errorf("server: create answer: %v", err)
		return pc, ""
	}
	done := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); err != nil {
		t.Errorf("server: set answer: %v", err)
		return pc, ""
	}
	<-done
	return pc, pc.LocalDescription().SDP
}

// recorded is one request seen by a test server.
type recorded struct {
	Method string
	Path   string
	Header http.Header
	Body   string
	Host   string
}

// recorder wraps a handler and records every request.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
	h    func(w http.ResponseWriter, r *http.Request, body string)
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, recorded{r.Method, r.URL.Path, r.Header.Clone(), string(b), r.Host})
	rc.mu.Unlock()
	rc.h(w, r, string(b))
}

func (rc *recorder) all() []recorded {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]recorded(nil), rc.reqs...)
}

func (rc *recorder) count(method string) int {
	n := 0
	for _, r := range rc.all() {
		if r.Method == method {
			n++
		}
	}
	return n
}

func (rc *recorder) last(method string) (recorded, bool) {
	all := rc.all()
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Method == method {
			return all[i], true
		}
	}
	return recorded{}, false
}

// whipHandler answers POST with a real pion answer plus the given headers,
// DELETE with 200, and PATCH with patch (405 if nil).
type whipOpts struct {
	location string
	headers  http.Header
	patch    func(w http.ResponseWriter, r *http.Request, body string)
	// answer, if set, rewrites the SDP answer before it is sent.
	answer func(string) string
}

func newWHIPServer(t testing.TB, o whipOpts) (*httptest.Server, *recorder) {
	t.Helper()
	rc := newWHIPHandler(t, o)
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return srv, rc
}

// newWHIPHandler is the handler of newWHIPServer. A location starting with
// "SERVER" gets "http://<request host>" substituted.
func newWHIPHandler(t testing.TB, o whipOpts) *recorder {
	t.Helper()
	rc := &recorder{}
	rc.h = func(w http.ResponseWriter, r *http.Request, body string) {
		switch r.Method {
		case http.MethodPost:
			_, ans := answerer(t, body)
			if o.answer != nil {
				ans = o.answer(ans)
			}
			for k, v := range o.headers {
				w.Header()[k] = v
			}
			loc := o.location
			if loc == "" {
				loc = "/whip/v1/sess-1"
			}
			loc = strings.Replace(loc, "SERVER", "http://"+r.Host, 1)
			w.Header().Set("Location", loc)
			w.Header().Set("Content-Type", "application/sdp")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, ans)
		case http.MethodDelete:
			w.WriteHeader(http.StatusOK)
		case http.MethodPatch:
			if o.patch == nil {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			o.patch(w, r, body)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	}
	return rc
}

func newClient(t testing.TB, cfg Config) *Client {
	t.Helper()
	if cfg.Token == "" {
		cfg.Token = testToken
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func debugLogger(buf *syncbuf.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// noDialTransport fails the test if any connection is attempted.
func noDialTransport(t testing.TB) *http.Transport {
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			t.Errorf("unexpected dial to %s", addr)
			return nil, io.ErrUnexpectedEOF
		},
	}
}

// onlyDialTransport allows dialing only the given host:port addresses.
func onlyDialTransport(t testing.TB, allowed ...string) *http.Transport {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			for _, a := range allowed {
				if a == addr {
					return d.DialContext(ctx, network, addr)
				}
			}
			t.Errorf("unexpected dial to %s", addr)
			return nil, io.ErrUnexpectedEOF
		},
	}
}

func hostPort(u string) string {
	return strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://")
}
