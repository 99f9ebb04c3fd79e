package whip

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/pion/stun/v4"
	"github.com/pion/webrtc/v4"
)

var (
	fuzzPCOnce sync.Once
	fuzzPC     *webrtc.PeerConnection
)

// FuzzParseLink: the Link parser never panics, and whatever it returns is
// accepted by pion (it can always go into a webrtc.Configuration).
func FuzzParseLink(f *testing.F) {
	seeds := []string{
		`<stun:stun.example.net>; rel="ice-server"`,
		`<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; credential="myPassword"; credential-type="password"`,
		`<turns:turn.example.net?transport=tcp>; rel="ice-server"; username=u; credential=c, <stun:127.0.0.1:3478>; rel=ice-server`,
		`<turn:t.example>; rel="ice-server"; credential-type="oauth"; username="a"; credential="b"`,
		`<https://example.org/>; rel="help", <stun:x>; rel="foo ice-server"`,
		`<turn:t.example>; rel="ice-server"; username="a\"b"; credential="c,d;e"`,
		`<stun:a>;rel="ice-server";rel="other"`,
		`<`, `<>`, `;;;,,,`, `"unterminated`, `<stun:a`, `<stun:a>; rel`, `<stun:a>;=x;rel="ice-server"`,
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		servers := parseICEServers([]string{v, v})
		for _, s := range servers {
			if len(s.URLs) != 1 {
				t.Fatalf("server with %d URLs", len(s.URLs))
			}
			u, err := stun.ParseURI(s.URLs[0])
			if err != nil {
				t.Fatalf("invalid URI %q returned: %v", s.URLs[0], err)
			}
			if (u.Scheme == stun.SchemeTypeTURN || u.Scheme == stun.SchemeTypeTURNS) && (s.Username == "" || s.Credential == nil) {
				t.Fatalf("TURN without credentials: %+v", s)
			}
		}
		if len(servers) == 0 {
			return
		}
		fuzzPCOnce.Do(func() {
			var err error
			fuzzPC, err = webrtc.NewPeerConnection(webrtc.Configuration{})
			if err != nil {
				panic(err)
			}
		})
		cfg := fuzzPC.GetConfiguration()
		cfg.ICEServers = servers
		if err := fuzzPC.SetConfiguration(cfg); err != nil {
			t.Fatalf("pion rejects parsed servers %+v: %v", servers, err)
		}
	})
}

// FuzzParseAnswer: 201 response handling (Location, ETag, Accept-Patch,
// Link, Content-Type, body) never panics; on success the Location is
// absolute and the answer is SDP; the error snippet stays bounded and
// token-free.
func FuzzParseAnswer(f *testing.F) {
	f.Add("/whip/v1/abc", `"xyzzy"`, "application/trickle-ice-sdpfrag", `<stun:s>; rel="ice-server"`, "application/sdp", "v=0\r\n")
	f.Add("https://other.example/res/1", "", "", "", "", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n")
	f.Add("res?x=1#frag", "W/\"1\"", "application/json, text/plain;q=1", "", "text/html", "<html>")
	f.Add("", "", "", "", "application/sdp", "")
	f.Add("%zz", "\r\n", ",,", "<", "application/sdp; charset=utf-8", "  v=0")
	f.Add("//evil.example/x", "e", "application/trickle-ice-sdpfrag;x=y", "", "application/sdp", "v=0")
	base, _ := url.Parse("https://lk.example.org/whip/v1")
	const token = "fuzz-token-0123456789"
	f.Fuzz(func(t *testing.T, loc, etag, acceptPatch, link, ctype, body string) {
		h := http.Header{}
		for k, v := range map[string]string{"Location": loc, "Etag": etag, "Accept-Patch": acceptPatch, "Link": link, "Content-Type": ctype} {
			if v != "" {
				h.Set(k, v)
			}
		}
		cr, err := parseCreated(base, h, []byte(body))
		if cr.location != nil && !cr.location.IsAbs() {
			t.Fatalf("relative Location %q", cr.location)
		}
		if err == nil {
			if cr.location == nil || !strings.HasPrefix(strings.TrimLeft(cr.answer, " \t\r\n"), "v=0") {
				t.Fatalf("accepted without Location/SDP: %+v", cr)
			}
		}
		if strings.ContainsAny(cr.etag, "\r\n") {
			t.Fatalf("ETag with line break %q", cr.etag)
		}
		snip := sanitizeSnippet([]byte(body+token+body), token)
		if len(snip) > maxBodySnippet || !utf8.ValidString(snip) || strings.Contains(snip, token) {
			t.Fatalf("bad snippet %q", snip)
		}
		// The fragment tools must not panic on arbitrary input either.
		info := parseICEInfo(body)
		_ = patchAnswer(body, info)
		_, _ = buildFrag(info, info.candidates, true)
	})
}
