package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// table writes aligned columns: a header row, then rows. Every cell is
// cleaned (clean): cells hold what units and enrolment requests wrote.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	cells := make([]string, 0, len(header))
	for _, r := range rows {
		cells = cells[:0]
		for _, c := range r {
			cells = append(cells, clean(c))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// writeJSON writes v as indented JSON and a newline, with every character
// a terminal could act on escaped (safeJSON).
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", safeJSON(b))
	return err
}

// maxCell bounds one table cell or printed field, in runes: a unit's
// 1 MiB "model" must not scroll the fleet manager's screen away.
const maxCell = 500

// clean makes text that a unit or an enrolment request supplied (ids,
// model, version, messages, event data) safe to print on the fleet
// manager's terminal, on one line: control characters (C0, DEL, C1, and so
// every ESC sequence, whose ESC is dropped and whose rest is then plain
// text), bidirectional overrides and isolates, and line or paragraph
// separators are removed or become a space; invalid UTF-8 becomes U+FFFD;
// runs of spaces collapse; it is cut at maxCell runes.
func clean(s string) string {
	var b strings.Builder
	n := 0
	space := false
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		switch {
		case r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f' || r == '\u2028' || r == '\u2029' || r == '\u0085' || unicode.IsSpace(r):
			space = b.Len() > 0
			continue
		case unsafeRune(r):
			continue
		}
		if space {
			b.WriteByte(' ')
			n++
			space = false
		}
		if n == maxCell {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// unsafeRune is a character a terminal may act on instead of showing:
// controls (C0, DEL, C1) and the bidirectional formatting characters that
// reorder what follows them (Trojan Source).
func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f:
		return true
	case r == '\u061c', r == '\u200e', r == '\u200f', r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}

// safeJSON escapes, as \uXXXX, every character of encoded JSON that
// encoding/json leaves raw but a terminal may act on (DEL, C1 controls,
// bidi formatting), so the JSON still decodes to exactly what the unit sent
// but prints harmlessly. encoding/json already escapes C0 controls.
func safeJSON(b []byte) []byte {
	if !bytes.ContainsFunc(b, func(r rune) bool { return r >= 0x7f && unsafeRune(r) }) {
		return b
	}
	var out bytes.Buffer
	for _, r := range string(b) {
		if r >= 0x7f && unsafeRune(r) {
			fmt.Fprintf(&out, "\\u%04x", r)
			continue
		}
		out.WriteRune(r)
	}
	return out.Bytes()
}

// clock formats a time for tables, in the fleet manager's time zone; "-" for
// none.
func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// oneLine keeps a unit-supplied text to one line (clean).
func oneLine(s string) string { return clean(s) }

// isTerminal says whether w is a terminal, where a progress bar may redraw
// itself; anywhere else (a pipe, a log file, a test) it would be noise.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress draws "[#####.....] 412/1000 answered (3 rejected) 2.1s" on a
// terminal, redrawn in place at most every 100 ms. Off a terminal it stays
// silent until done, which prints one summary line.
type progress struct {
	w     io.Writer
	tty   bool
	start time.Time
	last  time.Time
	drawn bool
}

func newProgress(w io.Writer, start time.Time) *progress {
	return &progress{w: w, tty: isTerminal(w), start: start}
}

const barWidth = 30

func (p *progress) line(done, total int, detail string) string {
	filled := 0
	if total > 0 {
		filled = done * barWidth / total
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", barWidth-filled)
	s := fmt.Sprintf("[%s] %d/%d %s", bar, done, total, time.Since(p.start).Round(100*time.Millisecond))
	if detail != "" {
		s += " " + detail
	}
	return s
}

func (p *progress) Update(done, total int, detail string) {
	if !p.tty || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "\r\033[K%s", p.line(done, total, detail))
	p.drawn = true
}

func (p *progress) Done(done, total int, detail string) {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, p.line(done, total, detail))
}
