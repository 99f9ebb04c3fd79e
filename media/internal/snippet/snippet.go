// Package snippet turns what a remote server sent (an error body, a
// header) into text that is safe to put in a log line or a fault reason:
// printable, one line, short, and without the secrets the unit sent.
package snippet

import (
	"strings"
	"unicode/utf8"
)

// Redacted replaces a secret in a snippet.
const Redacted = "[REDACTED]"

// maxScan bounds the work on a huge body: only its start is ever shown.
const maxScan = 64 << 10

// Clean keeps at most max bytes of printable text from b: invalid UTF-8 and
// control characters (terminal escapes, C1 controls, NUL) dropped,
// whitespace collapsed to single spaces, so a server cannot forge log lines
// or colour a terminal. Every secret is removed after cleaning (so control
// characters cannot split one) and before truncation (so no prefix of one
// survives).
func Clean(b []byte, max int, secrets ...string) string {
	if len(b) > maxScan {
		b = b[:maxScan]
	}
	var sb strings.Builder
	space := false
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == utf8.RuneError && size <= 1:
			continue
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			space = sb.Len() > 0
			continue
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			continue
		}
		if space {
			sb.WriteByte(' ')
			space = false
		}
		sb.WriteRune(r)
	}
	s := sb.String()
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, Redacted)
		}
	}
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
