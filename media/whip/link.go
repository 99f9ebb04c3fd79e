package whip

import (
	"strings"

	"github.com/pion/stun/v4"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/icepolicy"
)

// link is one RFC 8288 link-value: a target and its parameters (names
// lower-cased; only the first occurrence of a parameter is kept, as RFC 8288
// section 3.3 requires for rel).
type link struct {
	target string
	params map[string]string
}

func isOWS(b byte) bool { return b == ' ' || b == '\t' }

// parseLinks parses one Link header field value, which may hold several
// comma-separated link-values. It is lenient (unquoted parameter values may
// contain any character but ';' ',' and whitespace) and never panics;
// malformed link-values are skipped.
func parseLinks(s string) []link {
	var links []link
	n := len(s)
	i := 0
	for i < n {
		for i < n && (isOWS(s[i]) || s[i] == ',') {
			i++
		}
		if i >= n {
			break
		}
		if s[i] != '<' {
			i = skipValue(s, i)
			continue
		}
		end := strings.IndexByte(s[i+1:], '>')
		if end < 0 {
			break
		}
		l := link{target: strings.TrimSpace(s[i+1 : i+1+end]), params: map[string]string{}}
		i += end + 2
		for {
			for i < n && isOWS(s[i]) {
				i++
			}
			if i >= n || s[i] == ',' {
				break
			}
			if s[i] != ';' { // junk after the target or a parameter
				i = skipValue(s, i)
				break
			}
			i++
			for i < n && isOWS(s[i]) {
				i++
			}
			start := i
			for i < n && isTokenChar(s[i]) {
				i++
			}
			name := strings.ToLower(s[start:i])
			for i < n && isOWS(s[i]) {
				i++
			}
			val := ""
			if i < n && s[i] == '=' {
				i++
				for i < n && isOWS(s[i]) {
					i++
				}
				if i < n && s[i] == '"' {
					val, i = readQuoted(s, i)
				} else {
					start := i
					for i < n && s[i] != ';' && s[i] != ',' && !isOWS(s[i]) {
						i++
					}
					val = s[start:i]
				}
			}
			if name == "" {
				continue // e.g. ";;" or ";=x": nothing to record, progress was made
			}
			if _, dup := l.params[name]; !dup {
				l.params[name] = val
			}
		}
		links = append(links, l)
	}
	return links
}

// skipValue advances past the current link-value to the next top-level
// comma (outside quotes and angle brackets). It always makes progress.
func skipValue(s string, i int) int {
	inQuote, inAngle := false, false
	for i++; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"' && !inAngle:
			inQuote = !inQuote
		case c == '<' && !inQuote:
			inAngle = true
		case c == '>' && !inQuote:
			inAngle = false
		case c == ',' && !inQuote && !inAngle:
			return i
		}
	}
	return len(s)
}

// readQuoted reads an RFC 9110 quoted-string starting at s[i] == '"' and
// returns its unescaped content and the index after the closing quote (or
// the end of s if unterminated).
func readQuoted(s string, i int) (string, int) {
	var b strings.Builder
	for i++; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		case '"':
			return b.String(), i + 1
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String(), len(s)
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// hasRel reports whether the space-separated relation list contains want
// (case-insensitive).
func hasRel(rels, want string) bool {
	for _, r := range strings.Fields(rels) {
		if strings.EqualFold(r, want) {
			return true
		}
	}
	return false
}

// parseICEServers extracts the ICE servers from Link header field values
// (RFC 9725 section 4.6): every link with rel="ice-server" whose target is
// a valid stun:, stuns:, turn: or turns: URI. Attributes username,
// credential and credential-type (only "password", the default, is
// supported) are mapped to webrtc.ICEServer. Entries pion would reject
// (unparsable URI, TURN without credentials, unknown credential-type) are
// skipped so the result can always be passed to webrtc.Configuration.
//
// Only the first icepolicy.MaxLinkHeaderBytes of Link values are read, and
// parsing stops once more entries than a policy could keep were found: the
// rest is a server's noise, not ICE servers.
func parseICEServers(values []string) []webrtc.ICEServer {
	var out []webrtc.ICEServer
	budget := icepolicy.MaxLinkHeaderBytes
	for _, v := range values {
		if budget <= 0 || len(out) >= 4*icepolicy.MaxURLs {
			break
		}
		if len(v) > budget {
			v = v[:budget]
		}
		budget -= len(v)
		for _, l := range parseLinks(v) {
			if !hasRel(l.params["rel"], "ice-server") {
				continue
			}
			if srv, ok := linkToICEServer(l); ok {
				out = append(out, srv)
			}
		}
	}
	return out
}

func linkToICEServer(l link) (webrtc.ICEServer, bool) {
	if l.target == "" || strings.ContainsFunc(l.target, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return webrtc.ICEServer{}, false
	}
	u, err := stun.ParseURI(l.target)
	if err != nil {
		return webrtc.ICEServer{}, false
	}
	if ct, ok := l.params["credential-type"]; ok && !strings.EqualFold(ct, "password") {
		return webrtc.ICEServer{}, false
	}
	srv := webrtc.ICEServer{URLs: []string{l.target}}
	user, hasUser := l.params["username"]
	cred, hasCred := l.params["credential"]
	if u.Scheme == stun.SchemeTypeTURN || u.Scheme == stun.SchemeTypeTURNS {
		if user == "" || !hasCred {
			return webrtc.ICEServer{}, false
		}
	}
	if hasUser || hasCred {
		srv.Username = user
		srv.Credential = cred
		srv.CredentialType = webrtc.ICECredentialTypePassword
	}
	return srv, true
}

// iceServerKey identifies an ICE server entry for de-duplication.
func iceServerKey(s webrtc.ICEServer) string {
	cred, _ := s.Credential.(string)
	return strings.Join(s.URLs, "\x00") + "\x01" + s.Username + "\x01" + cred
}

// mergeICEServers concatenates lists, dropping exact duplicates.
func mergeICEServers(lists ...[]webrtc.ICEServer) []webrtc.ICEServer {
	seen := map[string]bool{}
	var out []webrtc.ICEServer
	for _, l := range lists {
		for _, s := range l {
			k := iceServerKey(s)
			if seen[k] {
				continue
			}
			seen[k] = true
			out = append(out, s)
		}
	}
	return out
}
