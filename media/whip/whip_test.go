package whip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/internal/syncbuf"
)

func TestPublishAndDelete(t *testing.T) {
	cases := []struct {
		name, location, want string // want is a path, or an absolute URL if it contains "://"
	}{
		{"absolute-path", "/whip/v1/abc", "/whip/v1/abc"},
		{"relative", "abc", "/whip/abc"},
		{"dot-relative", "./v1/xyz?x=1", "/whip/v1/xyz?x=1"},
		{"absolute-url", "SERVER/resource/42", "/resource/42"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, rc := newWHIPServer(t, whipOpts{location: tc.location, headers: http.Header{"Etag": {`"v1"`}}})
			c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
			pc, _ := newPublisherPC(t)
			s, err := c.Publish(ctxT(t, 5*time.Second), pc)
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			post, _ := rc.last(http.MethodPost)
			if post.Path != "/whip/v1" {
				t.Errorf("POST path %q", post.Path)
			}
			if got := post.Header.Get("Content-Type"); got != "application/sdp" {
				t.Errorf("Content-Type %q", got)
			}
			if got := post.Header.Get("Authorization"); got != "Bearer "+testToken {
				t.Errorf("Authorization %q", got)
			}
			if !strings.HasPrefix(post.Body, "v=0") || !strings.Contains(post.Body, "a=candidate:") {
				t.Errorf("offer body is not a gathered SDP offer: %.80q", post.Body)
			}
			want := srv.URL + tc.want
			if s.Location() != want {
				t.Errorf("Location = %q, want %q", s.Location(), want)
			}
			if s.ETag() != `"v1"` {
				t.Errorf("ETag = %q", s.ETag())
			}
			if pc.RemoteDescription() == nil {
				t.Fatal("answer not applied")
			}
			if err := s.Delete(ctxT(t, 5*time.Second)); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			del, ok := rc.last(http.MethodDelete)
			if !ok {
				t.Fatal("server saw no DELETE")
			}
			if del.Path != strings.SplitN(tc.want, "?", 2)[0] {
				t.Errorf("DELETE path %q, want %q", del.Path, tc.want)
			}
			if del.Header.Get("Authorization") != "Bearer "+testToken {
				t.Errorf("DELETE without token")
			}
			// Idempotent.
			if err := s.Delete(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := rc.count(http.MethodDelete); n != 1 {
				t.Errorf("%d DELETEs, want 1", n)
			}
		})
	}
}

func TestLinkICEServersApplied(t *testing.T) {
	srv, _ := newWHIPServer(t, whipOpts{headers: http.Header{"Link": {
		`<stun:127.0.0.1:3478>; rel="ice-server"`,
		`<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; username="user"; credential="pa;ss,word"; credential-type="password", <turns:turn.example.org:5349?transport=tcp>; rel="ice-server"; username=u2; credential=c2`,
		`<https://example.org/help>; rel="help"`,
	}}})
	extra := webrtc.ICEServer{URLs: []string{"stun:stun.example.org:3478"}}
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", ICEServers: []webrtc.ICEServer{extra}})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Delete(context.Background()) }()
	got := s.ICEServers()
	if len(got) != 3 {
		t.Fatalf("session ICE servers = %+v", got)
	}
	if got[1].Username != "user" || got[1].Credential != "pa;ss,word" || got[1].CredentialType != webrtc.ICECredentialTypePassword {
		t.Errorf("turn server parsed as %+v", got[1])
	}
	if got[2].URLs[0] != "turns:turn.example.org:5349?transport=tcp" || got[2].Username != "u2" {
		t.Errorf("turns server parsed as %+v", got[2])
	}
	if all := c.ICEServers(); len(all) != 4 || all[0].URLs[0] != extra.URLs[0] {
		t.Errorf("client ICE servers = %+v", all)
	}
	if cfg := pc.GetConfiguration(); len(cfg.ICEServers) != 3 {
		t.Errorf("pc ICE servers = %+v", cfg.ICEServers)
	}
}

func TestPreflight(t *testing.T) {
	t.Run("link", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodOptions {
				t.Errorf("method %s", r.Method)
			}
			w.Header().Add("Link", `<stun:127.0.0.1:19302>; rel="ice-server"`)
			w.WriteHeader(http.StatusNoContent)
		}))
		defer srv.Close()
		c := newClient(t, Config{Endpoint: srv.URL})
		servers, err := c.Preflight(ctxT(t, 2*time.Second))
		if err != nil || len(servers) != 1 || servers[0].URLs[0] != "stun:127.0.0.1:19302" {
			t.Fatalf("Preflight = %+v, %v", servers, err)
		}
	})
	t.Run("unsupported", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusMethodNotAllowed)
		}))
		defer srv.Close()
		extra := webrtc.ICEServer{URLs: []string{"stun:127.0.0.1:1"}}
		c := newClient(t, Config{Endpoint: srv.URL, ICEServers: []webrtc.ICEServer{extra}})
		servers, err := c.Preflight(ctxT(t, 2*time.Second))
		if err != nil || len(servers) != 1 {
			t.Fatalf("Preflight = %+v, %v", servers, err)
		}
	})
	t.Run("401", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusUnauthorized)
		}))
		defer srv.Close()
		c := newClient(t, Config{Endpoint: srv.URL})
		if _, err := c.Preflight(ctxT(t, 2*time.Second)); !errors.Is(err, ErrTokenRejected) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestTrickle(t *testing.T) {
	cand := webrtc.ICECandidateInit{Candidate: "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"}
	t.Run("supported", func(t *testing.T) {
		srv, rc := newWHIPServer(t, whipOpts{
			headers: http.Header{"Etag": {`"xyzzy"`}, "Accept-Patch": {"application/trickle-ice-sdpfrag"}},
			patch: func(w http.ResponseWriter, r *http.Request, body string) {
				w.WriteHeader(http.StatusNoContent)
			},
		})
		c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
		pc, _ := newPublisherPC(t)
		s, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if err != nil {
			t.Fatal(err)
		}
		if !s.SupportsPatch() {
			t.Error("Accept-Patch not honoured")
		}
		if err := s.Trickle(ctxT(t, 2*time.Second), cand); err != nil {
			t.Fatalf("Trickle: %v", err)
		}
		p, _ := rc.last(http.MethodPatch)
		if p.Path != "/whip/v1/sess-1" {
			t.Errorf("PATCH path %q", p.Path)
		}
		if got := p.Header.Get("If-Match"); got != `"xyzzy"` {
			t.Errorf("If-Match = %q", got)
		}
		if got := p.Header.Get("Content-Type"); got != "application/trickle-ice-sdpfrag" {
			t.Errorf("Content-Type = %q", got)
		}
		if p.Header.Get("Authorization") != "Bearer "+testToken {
			t.Error("PATCH without token")
		}
		local := parseICEInfo(pc.LocalDescription().SDP)
		for _, want := range []string{"a=ice-ufrag:" + local.ufrag, "a=ice-pwd:" + local.pwd, "\r\nm=video ", "a=mid:0", "a=" + cand.Candidate + "\r\n"} {
			if !strings.Contains(p.Body, want) {
				t.Errorf("fragment lacks %q:\n%s", want, p.Body)
			}
		}
		// End of candidates.
		if err := s.Trickle(ctxT(t, 2*time.Second), webrtc.ICECandidateInit{}); err != nil {
			t.Fatal(err)
		}
		if p, _ := rc.last(http.MethodPatch); !strings.Contains(p.Body, "a=end-of-candidates") || strings.Contains(p.Body, "a=candidate") {
			t.Errorf("end-of-candidates fragment:\n%s", p.Body)
		}
	})
	t.Run("405-remembered", func(t *testing.T) {
		srv, rc := newWHIPServer(t, whipOpts{})
		c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
		pc, _ := newPublisherPC(t)
		s, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			if err := s.Trickle(ctxT(t, 2*time.Second), cand); !errors.Is(err, ErrNotSupported) {
				t.Fatalf("Trickle #%d: %v, want ErrNotSupported", i, err)
			}
		}
		if err := s.RestartICE(ctxT(t, 2*time.Second)); !errors.Is(err, ErrNotSupported) {
			t.Fatalf("RestartICE: %v", err)
		}
		if n := rc.count(http.MethodPatch); n != 1 {
			t.Errorf("%d PATCH requests, want 1", n)
		}
	})
	t.Run("accept-patch-excludes", func(t *testing.T) {
		srv, rc := newWHIPServer(t, whipOpts{headers: http.Header{"Accept-Patch": {"application/json-patch+json"}}})
		c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
		pc, _ := newPublisherPC(t)
		s, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Trickle(ctxT(t, 2*time.Second), cand); !errors.Is(err, ErrNotSupported) {
			t.Fatalf("Trickle: %v", err)
		}
		if n := rc.count(http.MethodPatch); n != 0 {
			t.Errorf("%d PATCH requests, want 0", n)
		}
	})
	t.Run("after-delete", func(t *testing.T) {
		srv, _ := newWHIPServer(t, whipOpts{})
		c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
		pc, _ := newPublisherPC(t)
		s, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Delete(context.Background())
		if err := s.Trickle(ctxT(t, 2*time.Second), cand); !errors.Is(err, ErrSessionClosed) {
			t.Fatalf("Trickle after Delete: %v", err)
		}
	})
}

func TestRestartICEPatch(t *testing.T) {
	const newUfrag, newPwd = "NeWuFrAg", "NeWpAsSwOrDnEwPaSsWoRd12"
	srv, rc := newWHIPServer(t, whipOpts{
		headers: http.Header{"Etag": {`"e1"`}, "Accept-Patch": {"application/trickle-ice-sdpfrag"}},
		patch: func(w http.ResponseWriter, r *http.Request, body string) {
			if r.Header.Get("If-Match") != "*" {
				w.WriteHeader(http.StatusPreconditionFailed)
				return
			}
			w.Header().Set("ETag", `"e2"`)
			w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
			w.WriteHeader(http.StatusOK)
			fmt.Fprintf(w, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\na=end-of-candidates\r\n", newUfrag, newPwd)
		},
	})
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	oldUfrag := parseICEInfo(pc.LocalDescription().SDP).ufrag
	if err := s.RestartICE(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("RestartICE: %v", err)
	}
	p, _ := rc.last(http.MethodPatch)
	if p.Header.Get("Content-Type") != "application/trickle-ice-sdpfrag" {
		t.Errorf("Content-Type %q", p.Header.Get("Content-Type"))
	}
	sent := parseICEInfo(p.Body)
	if sent.ufrag == "" || sent.ufrag == oldUfrag || len(sent.candidates) == 0 || !sent.end {
		t.Errorf("restart fragment (old ufrag %q):\n%s", oldUfrag, p.Body)
	}
	if s.ETag() != `"e2"` {
		t.Errorf("ETag after restart = %q", s.ETag())
	}
	rd := parseICEInfo(pc.RemoteDescription().SDP)
	if rd.ufrag != newUfrag || rd.pwd != newPwd || len(rd.candidates) != 1 {
		t.Errorf("remote description not updated: %+v", rd)
	}
	// Trickle now carries the new ETag.
	if err := s.Trickle(ctxT(t, 2*time.Second), webrtc.ICECandidateInit{}); err == nil {
		t.Error("server answers 412 to non-* If-Match in this test; want an error")
	} else if p, _ := rc.last(http.MethodPatch); p.Header.Get("If-Match") != `"e2"` {
		t.Errorf("trickle If-Match = %q", p.Header.Get("If-Match"))
	}
}

// TestDeleteAfterFailures: every failure after a 201 must DELETE the session.
func TestDeleteAfterFailures(t *testing.T) {
	cases := []struct {
		name   string
		ctype  string
		body   string
		status int
		want   error
	}{
		{"garbage-body", "application/sdp", "this is not SDP", 201, ErrBadResponse},
		{"empty-body", "application/sdp", "", 201, ErrBadResponse},
		{"wrong-content-type", "text/html", "<html>oops</html>", 201, ErrBadResponse},
		{"sdp-rejected-by-pion", "application/sdp", "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n", 201, ErrBadResponse},
		{"200-instead-of-201", "application/sdp", "v=0\r\n", 200, ErrBadResponse},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := &recorder{h: func(w http.ResponseWriter, r *http.Request, body string) {
				if r.Method == http.MethodPost {
					w.Header().Set("Location", "/whip/v1/doomed")
					w.Header().Set("Content-Type", tc.ctype)
					w.WriteHeader(tc.status)
					_, _ = io.WriteString(w, tc.body)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}}
			srv := httptest.NewServer(rc)
			defer srv.Close()
			c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
			pc, _ := newPublisherPC(t)
			s, err := c.Publish(ctxT(t, 5*time.Second), pc)
			if !errors.Is(err, tc.want) || s != nil {
				t.Fatalf("Publish = %v, %v; want %v", s, err, tc.want)
			}
			d, ok := rc.last(http.MethodDelete)
			if !ok || d.Path != "/whip/v1/doomed" {
				t.Fatalf("no DELETE of the session after failure (requests %+v)", rc.all())
			}
		})
	}
	t.Run("no-location", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusCreated)
		}))
		defer srv.Close()
		c := newClient(t, Config{Endpoint: srv.URL})
		pc, _ := newPublisherPC(t)
		if _, err := c.Publish(ctxT(t, 5*time.Second), pc); !errors.Is(err, ErrBadResponse) {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestWaitConnectedFailureDeletes: the server answers but never connects;
// WaitConnected must report ErrICEFailed and DELETE the session.
func TestWaitConnectedFailureDeletes(t *testing.T) {
	rc := &recorder{}
	rc.h = func(w http.ResponseWriter, r *http.Request, body string) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusOK)
			return
		}
		spc, ans := answerer(t, body)
		_ = spc.Close() // the server's side goes away: ICE will never connect
		w.Header().Set("Location", "/whip/v1/dead")
		w.Header().Set("Content-Type", "application/sdp")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, ans)
	}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	err = s.WaitConnected(ctxT(t, 400*time.Millisecond))
	if !errors.Is(err, ErrICEFailed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitConnected = %v, want ErrICEFailed + deadline", err)
	}
	if d, ok := rc.last(http.MethodDelete); !ok || d.Path != "/whip/v1/dead" {
		t.Fatal("no DELETE after connection failure")
	}
}

func TestRedirect307(t *testing.T) {
	inner := newWHIPHandler(t, whipOpts{location: "res/7"})
	front := &recorder{h: func(w http.ResponseWriter, r *http.Request, body string) {
		if r.URL.Path == "/whip/v1" {
			http.Redirect(w, r, "/ingest/v2/whip", http.StatusTemporaryRedirect)
			return
		}
		r.Body = io.NopCloser(strings.NewReader(body))
		inner.ServeHTTP(w, r)
	}}
	srv := httptest.NewServer(front)
	defer srv.Close()
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	reqs := front.all()
	if len(reqs) != 2 || reqs[1].Method != http.MethodPost || reqs[1].Path != "/ingest/v2/whip" {
		t.Fatalf("requests %+v", reqs)
	}
	if reqs[1].Body != reqs[0].Body || !strings.HasPrefix(reqs[1].Body, "v=0") {
		t.Error("body not preserved across 307")
	}
	if reqs[1].Header.Get("Authorization") != "Bearer "+testToken {
		t.Error("token dropped on same-host redirect")
	}
	if want := srv.URL + "/ingest/v2/res/7"; s.Location() != want {
		t.Errorf("Location %q, want %q (resolved against final URL)", s.Location(), want)
	}
}

func TestRedirectCrossHostToken(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowlist=%v", allow), func(t *testing.T) {
			target, trc := newWHIPServer(t, whipOpts{})
			// Same machine, different host name: "localhost" vs "127.0.0.1".
			targetURL := strings.Replace(target.URL, "127.0.0.1", "localhost", 1)
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, targetURL+"/whip/v1", http.StatusPermanentRedirect)
			}))
			defer front.Close()
			cfg := Config{Endpoint: front.URL + "/whip/v1"}
			if allow {
				cfg.AllowedHosts = []string{"127.0.0.1", "localhost"}
			}
			c := newClient(t, cfg)
			pc, _ := newPublisherPC(t)
			s, err := c.Publish(ctxT(t, 5*time.Second), pc)
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			p, _ := trc.last(http.MethodPost)
			gotToken := p.Header.Get("Authorization") != ""
			if gotToken != allow {
				t.Errorf("token forwarded to other host = %v, want %v", gotToken, allow)
			}
			if !strings.HasPrefix(s.Location(), targetURL) {
				t.Errorf("Location %q", s.Location())
			}
			_ = s.Delete(ctxT(t, 2*time.Second))
			if d, _ := trc.last(http.MethodDelete); (d.Header.Get("Authorization") != "") != allow {
				t.Errorf("DELETE token presence wrong")
			}
		})
	}
}

func TestRedirectRefusals(t *testing.T) {
	t.Run("302-changes-method", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/whip" {
				http.Redirect(w, r, "/elsewhere", http.StatusFound)
				return
			}
			t.Errorf("followed 302 with %s", r.Method)
		}))
		defer srv.Close()
		c := newClient(t, Config{Endpoint: srv.URL + "/whip"})
		pc, _ := newPublisherPC(t)
		_, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if err == nil || !strings.Contains(err.Error(), "307/308") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("to-plain-http-non-loopback", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://example.invalid/whip", http.StatusTemporaryRedirect)
		}))
		defer srv.Close()
		c := newClient(t, Config{Endpoint: srv.URL, HTTPClient: &http.Client{Transport: onlyDialTransport(t, hostPort(srv.URL))}})
		pc, _ := newPublisherPC(t)
		_, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if !errors.Is(err, ErrInsecureScheme) || !strings.Contains(err.Error(), "example.invalid") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("to-host-not-allowed", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://evil.example.net/whip", http.StatusTemporaryRedirect)
		}))
		defer srv.Close()
		c := newClient(t, Config{Endpoint: srv.URL, AllowedHosts: []string{"127.0.0.1"},
			HTTPClient: &http.Client{Transport: onlyDialTransport(t, hostPort(srv.URL))}})
		pc, _ := newPublisherPC(t)
		_, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if !errors.Is(err, ErrHostNotAllowed) || !strings.Contains(err.Error(), "evil.example.net") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestStatusMapping(t *testing.T) {
	cases := []struct {
		status int
		want   error
	}{
		{401, ErrTokenRejected},
		{403, ErrForbidden},
		{404, ErrNotFound},
		{409, ErrBusy},
		{429, ErrBusy},
		{400, ErrOfferRejected},
		{415, ErrOfferRejected},
		{500, ErrServer},
		{503, ErrServer},
		{302, ErrBadResponse}, // redirect without Location is returned as-is
		{204, ErrBadResponse},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			long := strings.Repeat("é", 300) + "\x00\x1b[31m"
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.status == 429 {
					w.Header().Set("Retry-After", "30")
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, "  detail:\n "+long)
			}))
			defer srv.Close()
			c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1?room=x"})
			pc, _ := newPublisherPC(t)
			_, err := c.Publish(ctxT(t, 5*time.Second), pc)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			var he *HTTPError
			if !errors.As(err, &he) {
				t.Fatalf("not an *HTTPError: %T", err)
			}
			if he.Status != tc.status || he.Method != http.MethodPost || he.Reason == "" {
				t.Errorf("HTTPError = %+v", he)
			}
			if strings.Contains(he.URL, "room=x") {
				t.Errorf("URL keeps the query: %q", he.URL)
			}
			if tc.status != 204 && tc.status != 302 {
				if len(he.Body) > maxBodySnippet || !strings.HasPrefix(he.Body, "detail: é") || strings.ContainsAny(he.Body, "\x00\x1b\n") {
					t.Errorf("body snippet %q (%d bytes)", he.Body, len(he.Body))
				}
			}
			if tc.status == 429 && he.RetryAfter != "30" {
				t.Errorf("RetryAfter %q", he.RetryAfter)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	c := newClient(t, Config{Endpoint: srv.URL})
	pc, _ := newPublisherPC(t)
	// Gather first so the deadline hits the HTTP exchange.
	if _, err := localOffer(ctxT(t, 5*time.Second), pc); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.Publish(ctxT(t, 300*time.Millisecond), pc)
	if !errors.Is(err, ErrNoAnswer) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("error does not name the host: %v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Error("timeout not honoured")
	}
}

func TestUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	c := newClient(t, Config{Endpoint: url})
	pc, _ := newPublisherPC(t)
	if _, err := c.Publish(ctxT(t, 5*time.Second), pc); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v", err)
	}
}

func TestTransportPolicy(t *testing.T) {
	cases := []struct {
		endpoint string
		cfg      Config
		want     error
	}{
		{"http://example.invalid/whip", Config{}, ErrInsecureScheme},
		{"http://10.0.0.1/whip", Config{}, ErrInsecureScheme},
		{"http://127.0.0.1.example.invalid/whip", Config{}, ErrInsecureScheme},
		{"ftp://127.0.0.1/whip", Config{}, ErrInsecureScheme},
		{"http://127.0.0.1:8080/whip", Config{RequireTLS: true}, ErrInsecureScheme},
		{"https://example.invalid/whip", Config{AllowedHosts: []string{"*.example.org", "lk.example.com"}}, ErrHostNotAllowed},
		{"https://example.org/whip", Config{AllowedHosts: []string{"*.example.org"}}, ErrHostNotAllowed},
		{"https://evilexample.org/whip", Config{AllowedHosts: []string{"*.example.org"}}, ErrHostNotAllowed},
		{"http://127.0.0.1:7880/whip/v1", Config{}, nil},
		{"http://127.8.9.10/whip/v1", Config{}, nil},
		{"http://[::1]:7880/whip/v1", Config{}, nil},
		{"http://LOCALHOST./whip/v1", Config{}, nil},
		{"https://lk.example.org/whip/v1", Config{AllowedHosts: []string{"*.example.org"}}, nil},
		{"https://LK.Example.COM/whip/v1", Config{AllowedHosts: []string{"lk.example.com"}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.endpoint, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Endpoint = tc.endpoint
			cfg.Token = testToken
			cfg.HTTPClient = &http.Client{Transport: noDialTransport(t)}
			_, err := New(cfg)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("New(%s) = %v, want %v", tc.endpoint, err, tc.want)
			}
		})
	}
}

// TestLocationPolicy: a Location on a host outside the allow-list is never
// contacted.
func TestLocationPolicy(t *testing.T) {
	srv, rc := newWHIPServer(t, whipOpts{location: "https://evil.example.net/res/1"})
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", AllowedHosts: []string{"127.0.0.1"},
		HTTPClient: &http.Client{Transport: onlyDialTransport(t, hostPort(srv.URL))}})
	pc, _ := newPublisherPC(t)
	_, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if !errors.Is(err, ErrHostNotAllowed) {
		t.Fatalf("err = %v", err)
	}
	if rc.count(http.MethodPost) != 1 {
		t.Error("POST not seen")
	}
}

func TestTLS(t *testing.T) {
	tlsSrv := httptest.NewTLSServer(newWHIPHandler(t, whipOpts{}))
	defer tlsSrv.Close()
	t.Run("untrusted", func(t *testing.T) {
		c := newClient(t, Config{Endpoint: tlsSrv.URL + "/whip/v1"})
		pc, _ := newPublisherPC(t)
		_, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if !errors.Is(err, ErrCertificate) || !strings.Contains(err.Error(), "127.0.0.1") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("trusted", func(t *testing.T) {
		c := newClient(t, Config{Endpoint: tlsSrv.URL + "/whip/v1", HTTPClient: tlsSrv.Client()})
		pc, _ := newPublisherPC(t)
		s, err := c.Publish(ctxT(t, 5*time.Second), pc)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(s.Location(), "https://127.0.0.1") {
			t.Errorf("Location %q", s.Location())
		}
		if err := s.Delete(ctxT(t, 2*time.Second)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTokenNeverLeaks drives many failure paths with a server that echoes
// the token everywhere it can, and checks every error and log line.
func TestTokenNeverLeaks(t *testing.T) {
	var logs syncbuf.Buffer
	logger := debugLogger(&logs)
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	echo := func(status int) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			auth := r.Header.Get("Authorization")
			w.Header().Set("Retry-After", auth)
			w.Header().Set("Content-Type", "application/sdp")
			if status == http.StatusCreated {
				w.Header().Set("Location", "/res/"+strings.TrimPrefix(auth, "Bearer "))
				w.Header().Set("ETag", auth)
			}
			w.WriteHeader(status)
			_, _ = io.WriteString(w, "you sent "+auth)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	for _, st := range []int{201, 400, 401, 403, 404, 409, 429, 500, 502} {
		srv := echo(st)
		c := newClient(t, Config{Endpoint: srv.URL + "/whip?access_token=" + testToken, Logger: logger})
		pc, _ := newPublisherPC(t)
		_, err := c.Publish(ctxT(t, 5*time.Second), pc)
		check(err)
		_, err = c.Preflight(ctxT(t, 2*time.Second))
		check(err)
	}
	// Timeout.
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // lets the server notice the client hanging up
		<-r.Context().Done()
	}))
	defer slow.Close()
	c := newClient(t, Config{Endpoint: slow.URL + "/" + testToken, Logger: logger})
	pc, _ := newPublisherPC(t)
	if _, err := localOffer(ctxT(t, 5*time.Second), pc); err != nil {
		t.Fatal(err)
	}
	_, err := c.Publish(ctxT(t, 200*time.Millisecond), pc)
	check(err)
	// Certificate.
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	defer tlsSrv.Close()
	c = newClient(t, Config{Endpoint: tlsSrv.URL + "/" + testToken, Logger: logger})
	pc, _ = newPublisherPC(t)
	_, err = c.Publish(ctxT(t, 5*time.Second), pc)
	check(err)
	// Policy refusals.
	_, err = New(Config{Endpoint: "http://example.invalid/" + testToken, Token: testToken, Logger: logger})
	check(err)
	_, err = New(Config{Endpoint: "https://" + testToken + ".example.invalid/", Token: testToken, AllowedHosts: []string{"x.org"}, Logger: logger})
	check(err)
	_, err = New(Config{Endpoint: "http://[" + testToken, Token: testToken})
	check(err)
	// Trickle 405 with the token in the body.
	srv, _ := newWHIPServer(t, whipOpts{})
	c = newClient(t, Config{Endpoint: srv.URL + "/whip/v1", Logger: logger})
	pc, _ = newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	check(s.Trickle(ctxT(t, 2*time.Second), webrtc.ICECandidateInit{Candidate: "candidate:" + testToken}))
	check(s.WaitConnected(ctxT(t, 50*time.Millisecond)))

	if len(errs) < 15 {
		t.Fatalf("only %d errors collected", len(errs))
	}
	for _, err := range errs {
		if strings.Contains(err.Error(), testToken) {
			t.Errorf("token in error: %v", err)
		}
		var he *HTTPError
		if errors.As(err, &he) && (strings.Contains(he.Body, testToken) || strings.Contains(he.RetryAfter, testToken) || strings.Contains(he.URL, testToken)) {
			t.Errorf("token in HTTPError fields: %+v", he)
		}
	}
	if out := logs.String(); strings.Contains(out, testToken) {
		t.Errorf("token in logs:\n%s", out)
	} else if !strings.Contains(out, "whip:") {
		t.Error("logger captured nothing")
	}
}

// TrickleCandidates: the offer and the restart fragment carry no candidate
// lines (so a server that stores them cannot trip over them); the
// candidates arrive in trickle PATCHes with the current ETag right after.
// A restart whose PATCH failed is sent again with the same credentials.
func TestTrickleCandidatesMode(t *testing.T) {
	const newUfrag, newPwd = "NeWuFrAg", "NeWpAsSwOrDnEwPaSsWoRd12"
	var failNext bool
	srv, rc := newWHIPServer(t, whipOpts{
		headers: http.Header{"Etag": {`"e1"`}},
		patch: func(w http.ResponseWriter, r *http.Request, body string) {
			switch r.Header.Get("If-Match") {
			case "*":
				if failNext {
					failNext = false
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				w.Header().Set("ETag", `"e2"`)
				w.WriteHeader(http.StatusOK)
				fmt.Fprintf(w, "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:%s\r\na=ice-pwd:%s\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n", newUfrag, newPwd)
			case `"e1"`, `"e2"`:
				w.WriteHeader(http.StatusNoContent)
			default:
				w.WriteHeader(http.StatusPreconditionFailed)
			}
		},
	})
	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", TrickleCandidates: true})
	pc, _ := newPublisherPC(t)
	s, err := c.Publish(ctxT(t, 5*time.Second), pc)
	if err != nil {
		t.Fatal(err)
	}
	post, _ := rc.last(http.MethodPost)
	if strings.Contains(post.Body, "a=candidate") || strings.Contains(post.Body, "a=end-of-candidates") {
		t.Fatalf("offer carries candidate lines:\n%s", post.Body)
	}
	p, ok := rc.last(http.MethodPatch)
	if !ok || p.Header.Get("If-Match") != `"e1"` || len(parseICEInfo(p.Body).candidates) == 0 || !parseICEInfo(p.Body).end {
		t.Fatalf("no trickle of the offer's candidates after the answer: %+v", p)
	}
	local := parseICEInfo(pc.LocalDescription().SDP)
	if got := parseICEInfo(p.Body); got.ufrag != local.ufrag || got.pwd != local.pwd {
		t.Errorf("trickle fragment credentials %q/%q, want the offer's %q", got.ufrag, got.pwd, local.ufrag)
	}

	failNext = true
	if err := s.RestartICE(ctxT(t, 5*time.Second)); err == nil {
		t.Fatal("restart answered 503 but RestartICE succeeded")
	}
	first, _ := rc.last(http.MethodPatch)
	if err := s.RestartICE(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("second RestartICE: %v", err)
	}
	all := rc.all()
	var restart, after recorded
	for i, r := range all {
		if r.Method == http.MethodPatch && r.Header.Get("If-Match") == "*" {
			restart = r
			if i+1 < len(all) {
				after = all[i+1]
			}
		}
	}
	ri := parseICEInfo(restart.Body)
	if len(ri.candidates) != 0 || ri.end {
		t.Errorf("restart fragment carries candidates:\n%s", restart.Body)
	}
	if ri.ufrag != parseICEInfo(first.Body).ufrag {
		t.Errorf("the retried restart changed credentials (%q then %q): it should resend the pending offer", parseICEInfo(first.Body).ufrag, ri.ufrag)
	}
	if ri.ufrag == local.ufrag {
		t.Error("restart kept the old ufrag")
	}
	if after.Method != http.MethodPatch || after.Header.Get("If-Match") != `"e2"` || len(parseICEInfo(after.Body).candidates) == 0 {
		t.Errorf("no trickle with the new ETag after the restart: %+v", after)
	}
	// Credentials inside the media section (RFC 9725's layout; LiveKit reads only those).
	if i, j := strings.Index(restart.Body, "m="), strings.Index(restart.Body, "a=ice-ufrag"); i < 0 || j < i {
		t.Errorf("ice-ufrag is not inside the media section:\n%s", restart.Body)
	}
}

// A Preflight made before the press opens the connection the session then
// uses: with a shared NewHTTPClient, warm-up and publish cost one
// connection (one TCP and TLS handshake), not one each.
func TestSharedClientReusesWarmConnection(t *testing.T) {
	rc := newWHIPHandler(t, whipOpts{})
	srv := httptest.NewUnstartedServer(rc)
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	hc := NewHTTPClient()
	warm := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", HTTPClient: hc})
	if _, err := warm.Preflight(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	join := newClient(t, Config{Endpoint: srv.URL + "/whip/v1", HTTPClient: hc, Token: "another-token-123"})
	pc, _ := newPublisherPC(t)
	if _, err := join.Publish(ctxT(t, 5*time.Second), pc); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("warm-up and publish opened %d connections, want 1", n)
	}
}
