package fleet

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// ParseTOML decodes TOML text into generic tables. Its error names the line,
// column and last key but never quotes the text: a config can hold secrets
// and a syntax error can sit in the middle of one.
func ParseTOML(b []byte) (map[string]any, error) {
	m := map[string]any{}
	if _, err := toml.Decode(string(b), &m); err != nil {
		return nil, fmt.Errorf("config is not valid TOML: %s", DescribeTOMLError(err))
	}
	return m, nil
}

// DescribeTOMLError describes a TOML decoding error by position and key with
// any quoted text longer than three characters cut out, so it is safe to show
// for a config that holds secrets.
func DescribeTOMLError(err error) string {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return "the document could not be decoded"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "line %d, column %d", pe.Position.Line, pe.Position.Col)
	if pe.LastKey != "" {
		fmt.Fprintf(&b, " (after key %s)", pe.LastKey)
	}
	if msg, ok := redactQuoted(pe.Message); ok {
		b.WriteString(": " + strings.TrimSuffix(msg, "."))
	} else {
		b.WriteString(": syntax error")
	}
	return b.String()
}

var quoted = regexp.MustCompile(`'[^'\n]*'|"(?:[^"\\\n]|\\.)*"`)

// redactQuoted replaces quoted segments longer than three characters with
// '…'. Short ones ("'='", "'\"'") are the syntax the message is about. It
// returns false if a stray quote is left over, because then it cannot tell
// where a quoted value ends.
func redactQuoted(msg string) (string, bool) {
	out := quoted.ReplaceAllStringFunc(msg, func(q string) string {
		if len([]rune(q))-2 <= 3 {
			return q
		}
		return q[:1] + "…" + q[len(q)-1:]
	})
	rest := quoted.ReplaceAllString(out, "")
	return out, !strings.ContainsAny(rest, `'"`)
}

// RedactValues returns msg with every string value of the TOML config cut
// out, for an error about a config (e.g. roomd's validation of a merged
// config) that may quote it. If the config is not TOML, it returns a message
// that quotes nothing, since it cannot tell the values apart.
func RedactValues(msg string, config []byte) string {
	tree, err := ParseTOML(config)
	if err != nil {
		return "the config could not be checked (message withheld: it may quote a value)"
	}
	return strings.Join(strings.Fields(redactValues(msg, tree)), " ")
}

// redactValues removes every string value of cfg from msg. A validator may
// quote a value any number of times over (%q of a %q), so beyond the raw and
// quoted forms it also removes each run of four or more characters of the
// value that quoting leaves unchanged. Values of one to three characters
// are removed only where they appear quoted: removing every "a" would
// destroy the message, and a three-letter "secret" protects nothing.
func redactValues(msg string, cfg map[string]any) string {
	var vals []string
	collectStrings(cfg, &vals)
	var forms []string
	for _, v := range vals {
		if v == "" {
			continue
		}
		msg = strings.ReplaceAll(msg, strconv.Quote(v), `"`+redacted+`"`)
		msg = strings.ReplaceAll(msg, "'"+v+"'", "'"+redacted+"'")
		if len(v) > 3 {
			forms = append(forms, v, unquote(strconv.Quote(v)), unquote(strconv.QuoteToASCII(v)))
			forms = append(forms, quoteStableRuns(v)...)
		}
	}
	// Longest first, so a value is not half-replaced by a shorter one inside it.
	sort.Slice(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	for _, f := range forms {
		msg = strings.ReplaceAll(msg, f, redacted)
	}
	return msg
}

const redacted = "[redacted]"

func unquote(q string) string { return q[1 : len(q)-1] }

// quoteStableRuns returns the runs of at least four printable ASCII
// characters in v that no quoting changes (anything but quotes and
// backslashes).
func quoteStableRuns(v string) []string {
	var runs []string
	start := -1
	flush := func(end int) {
		if start >= 0 && end-start >= 4 {
			runs = append(runs, v[start:end])
		}
		start = -1
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c > ' ' && c < 0x7f && c != '"' && c != '\\' && c != '\'' {
			if start < 0 {
				start = i
			}
			continue
		}
		flush(i)
	}
	flush(len(v))
	return runs
}

func collectStrings(v any, out *[]string) {
	switch v := v.(type) {
	case string:
		*out = append(*out, v)
	case map[string]any:
		for _, e := range v {
			collectStrings(e, out)
		}
	case []map[string]any:
		for _, e := range v {
			collectStrings(e, out)
		}
	case []any:
		for _, e := range v {
			collectStrings(e, out)
		}
	}
}
