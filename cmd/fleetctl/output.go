package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// table writes aligned columns: a header row, then rows.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// clock formats a time for tables, in the fleet manager's time zone; "-" for
// none.
func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// oneLine keeps a unit-supplied text to one table cell: units write their
// messages for people, but a table must not be broken by a newline or tab.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

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

func (p *progress) update(done, total int, detail string) {
	if !p.tty || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "\r\033[K%s", p.line(done, total, detail))
	p.drawn = true
}

func (p *progress) done(done, total int, detail string) {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, p.line(done, total, detail))
}
