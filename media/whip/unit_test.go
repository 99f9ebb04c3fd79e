package whip

import (
	"strings"
	"testing"

	"github.com/pion/webrtc/v4"
)

func TestParseICEServers(t *testing.T) {
	got := parseICEServers([]string{
		`<stun:stun.example.net>; rel="ice-server"`,
		`<turn:turn.example.net?transport=udp>;rel="ice-server";username="user";credential="my\"Pass,word;x";credential-type="password" , <turns:turn.example.net:5349?transport=tcp>; REL="other ICE-SERVER"; Username=u; Credential=c`,
		`<turn:nocreds.example>; rel="ice-server"`,                                                  // TURN without credentials: skipped
		`<turn:oauth.example>; rel="ice-server"; username=a; credential=b; credential-type="oauth"`, // unsupported
		`<https://example.org/>; rel="ice-server"`,                                                  // not an ICE URI
		`<stun:dup.example>; rel="alternate"; rel="ice-server"`,                                     // first rel wins
		`garbage, <stun:after.garbage.example>; rel=ice-server`,
	})
	want := []webrtc.ICEServer{
		{URLs: []string{"stun:stun.example.net"}},
		{URLs: []string{"turn:turn.example.net?transport=udp"}, Username: "user", Credential: `my"Pass,word;x`, CredentialType: webrtc.ICECredentialTypePassword},
		{URLs: []string{"turns:turn.example.net:5349?transport=tcp"}, Username: "u", Credential: "c", CredentialType: webrtc.ICECredentialTypePassword},
		{URLs: []string{"stun:after.garbage.example"}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d servers %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if iceServerKey(got[i]) != iceServerKey(want[i]) || got[i].CredentialType != want[i].CredentialType {
			t.Errorf("server %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestHostMatches(t *testing.T) {
	cases := []struct {
		host, pattern string
		want          bool
	}{
		{"lk.example.org", "lk.example.org", true},
		{"LK.example.org.", "lk.EXAMPLE.org", true},
		{"a.b.example.org", "*.example.org", true},
		{"example.org", "*.example.org", false},
		{"badexample.org", "*.example.org", false},
		{"example.org.evil.com", "*.example.org", false},
		{"::1", "::1", true},
		{"x", "", false},
		{"x", "*.", false},
	}
	for _, c := range cases {
		if got := hostMatches(c.host, c.pattern); got != c.want {
			t.Errorf("hostMatches(%q, %q) = %v", c.host, c.pattern, got)
		}
	}
}

func TestSanitizeSnippet(t *testing.T) {
	tok := "SeCrEt"
	got := sanitizeSnippet([]byte("a\x00b\r\n\t c Se\x01CrEt \xff"+strings.Repeat("z", 500)), tok)
	if !strings.HasPrefix(got, "ab c [REDACTED] zz") || len(got) > maxBodySnippet {
		t.Errorf("got %q", got)
	}
}

func TestFragRoundTrip(t *testing.T) {
	sdp := "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n" +
		"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\na=candidate:1 1 udp 1 10.0.0.1 1 typ host\r\na=end-of-candidates\r\n" +
		"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\na=candidate:1 1 udp 1 10.0.0.1 1 typ host\r\n"
	info := parseICEInfo(sdp)
	if info.ufrag != "old" || info.pwd != "oldpwd" || info.mid != "0" || len(info.candidates) != 1 || !info.end || info.bundle != "a=group:BUNDLE 0 1" {
		t.Fatalf("info %+v", info)
	}
	frag, err := buildFrag(iceInfo{bundle: info.bundle, mline: info.mline, mid: "0", ufrag: "new", pwd: "newpwd"}, []string{"candidate:2 1 udp 2 127.0.0.1 2 typ host"}, true)
	if err != nil {
		t.Fatal(err)
	}
	out := patchAnswer(sdp, parseICEInfo(frag))
	got := parseICEInfo(out)
	if got.ufrag != "new" || got.pwd != "newpwd" || len(got.candidates) != 1 || !strings.Contains(got.candidates[0], "127.0.0.1") {
		t.Errorf("patched %+v\n%s", got, out)
	}
	if strings.Contains(out, "old") || strings.Count(out, "a=candidate") != 1 || !strings.Contains(out, "m=video") {
		t.Errorf("patched SDP:\n%s", out)
	}
	if _, err := buildFrag(iceInfo{}, nil, true); err == nil {
		t.Error("frag without ICE info accepted")
	}
	if _, ok := normCandidate("1 1 udp 2 127.0.0.1 2 typ host\r\na=evil"); ok {
		t.Error("candidate with line break accepted")
	}
}
