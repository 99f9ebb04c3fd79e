package snippet

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClean(t *testing.T) {
	tok := "eyJtoken"
	got := Clean([]byte("ab\x1b[31m\r\nc  ey\x00Jtoken\xff\xc2\x85zz"), 200, tok)
	if got != "ab[31m c "+Redacted+"zz" {
		t.Fatalf("got %q", got)
	}
	long := Clean([]byte(strings.Repeat("é", 500)), 201)
	if len(long) > 201 || !utf8.ValidString(long) {
		t.Fatalf("truncated to %d bytes, valid %v", len(long), utf8.ValidString(long))
	}
}
