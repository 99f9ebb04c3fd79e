package whip

import (
	"errors"
	"strings"
)

// Content types used on the wire.
const (
	contentTypeSDP     = "application/sdp"
	contentTypeSDPFrag = "application/trickle-ice-sdpfrag"
)

func sdpLines(s string) []string {
	lines := strings.Split(s, "\n")
	out := lines[:0]
	for _, l := range lines {
		l = strings.TrimRight(l, "\r")
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// iceInfo is the ICE part of an SDP (or SDP fragment) needed for WHIP PATCH
// requests: RFC 8840 fragments carry only the first (offerer-tagged)
// m-section of the bundle group.
type iceInfo struct {
	bundle     string // "a=group:BUNDLE ..." line, if any
	mline      string // first "m=" line
	mid        string // a=mid of the first m-section
	ufrag, pwd string
	candidates []string // "candidate:..." attribute values (no "a=")
	end        bool     // a=end-of-candidates seen
}

// parseICEInfo extracts ICE data from an SDP or an SDP fragment. Only the
// session level and the first m-section are inspected (max-bundle).
func parseICEInfo(sdp string) iceInfo {
	var info iceInfo
	section := 0 // 0: session level, 1: first m-section, 2: later
	for _, l := range sdpLines(sdp) {
		if strings.HasPrefix(l, "m=") {
			section++
			if section == 1 {
				info.mline = l
			}
			continue
		}
		if section > 1 {
			continue
		}
		switch {
		case strings.HasPrefix(l, "a=group:BUNDLE"):
			info.bundle = l
		case strings.HasPrefix(l, "a=mid:") && section == 1:
			info.mid = strings.TrimPrefix(l, "a=mid:")
		case strings.HasPrefix(l, "a=ice-ufrag:"):
			if info.ufrag == "" || section == 1 {
				info.ufrag = strings.TrimPrefix(l, "a=ice-ufrag:")
			}
		case strings.HasPrefix(l, "a=ice-pwd:"):
			if info.pwd == "" || section == 1 {
				info.pwd = strings.TrimPrefix(l, "a=ice-pwd:")
			}
		case strings.HasPrefix(l, "a=candidate:"):
			info.candidates = append(info.candidates, strings.TrimPrefix(l, "a="))
		case l == "a=end-of-candidates":
			info.end = true
		}
	}
	return info
}

var errNoLocalDescription = errors.New("whip: peer connection has no usable local description (ufrag, pwd, m-line)")

// buildFrag renders an application/trickle-ice-sdpfrag body (RFC 8840,
// RFC 9725 section 4.4) for the local description info with the given
// candidates.
func buildFrag(info iceInfo, candidates []string, end bool) (string, error) {
	if info.ufrag == "" || info.pwd == "" || info.mline == "" {
		return "", errNoLocalDescription
	}
	var b strings.Builder
	line := func(s string) { b.WriteString(s); b.WriteString("\r\n") }
	// ICE credentials go inside the media section, as in RFC 9725's
	// examples: LiveKit only takes them from there (session-level ones
	// are silently ignored, so its ICE restart would keep the old ones).
	if info.bundle != "" {
		line(info.bundle)
	}
	line(info.mline)
	if info.mid != "" {
		line("a=mid:" + info.mid)
	}
	line("a=ice-ufrag:" + info.ufrag)
	line("a=ice-pwd:" + info.pwd)
	for _, c := range candidates {
		line("a=" + c)
	}
	if end {
		line("a=end-of-candidates")
	}
	return b.String(), nil
}

// normCandidate turns a candidate as given by pion ("candidate:...") or
// bare ("1 1 udp ...") into the "candidate:..." attribute value; it
// rejects line breaks so the fragment cannot be corrupted.
func normCandidate(c string) (string, bool) {
	c = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(c), "a="))
	if c == "" || strings.ContainsAny(c, "\r\n") {
		return "", false
	}
	if !strings.HasPrefix(c, "candidate:") {
		c = "candidate:" + c
	}
	return c, true
}

// patchAnswer rewrites the remote (answer) SDP after an ICE restart with
// the server's new credentials and candidates from its PATCH response,
// keeping every non-ICE line as negotiated (RFC 9725 section 4.4.2). The
// new candidates go into the first m-section.
func patchAnswer(sdp string, frag iceInfo) string {
	var out []string
	section := 0
	inserted := false
	insert := func() {
		if inserted {
			return
		}
		inserted = true
		for _, c := range frag.candidates {
			out = append(out, "a="+c)
		}
		if frag.end {
			out = append(out, "a=end-of-candidates")
		}
	}
	for _, l := range sdpLines(sdp) {
		if strings.HasPrefix(l, "m=") {
			if section == 1 {
				insert()
			}
			section++
		}
		switch {
		case strings.HasPrefix(l, "a=ice-ufrag:"):
			l = "a=ice-ufrag:" + frag.ufrag
		case strings.HasPrefix(l, "a=ice-pwd:"):
			l = "a=ice-pwd:" + frag.pwd
		case strings.HasPrefix(l, "a=candidate:"), l == "a=end-of-candidates":
			continue
		}
		out = append(out, l)
	}
	if section >= 1 {
		insert()
	}
	return strings.Join(out, "\r\n") + "\r\n"
}

// stripCandidates removes candidate and end-of-candidates lines from an SDP.
func stripCandidates(sdp string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(sdp, "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "a=candidate:") || l == "a=end-of-candidates" {
			continue
		}
		b.WriteString(line)
	}
	return b.String()
}
