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
		return nil, fmt.Errorf("config is not valid TOML: %s", DescribeTOMLErrorIn(err, b))
	}
	return m, nil
}

// DescribeTOMLError describes a TOML decoding error by position and key with
// any quoted text longer than three characters cut out, so it is safe to show
// for a config that holds secrets. Prefer DescribeTOMLErrorIn, which also
// knows the text and so can cut out shorter pieces of it.
func DescribeTOMLError(err error) string { return DescribeTOMLErrorIn(err, nil) }

// decodeErr is how the decoder reports a value that does not fit its
// destination (a type mismatch, an UnmarshalText error).
var decodeErr = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"\n]*)"\): (.*)$`)

// DescribeTOMLErrorIn describes a TOML decoding error of text by line and
// key, never by value: quoted pieces of the parser's message are cut out
// (a short one such as '=' is kept only if the offending line's value does
// not hold it), and if any word of that value is still in the message, the
// message is withheld. An unquoted secret (api_secret = s3cret) is what the
// parser quotes back in "expected value but found ..." otherwise.
func DescribeTOMLErrorIn(err error, text []byte) string {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		var b strings.Builder
		fmt.Fprintf(&b, "line %d, column %d", pe.Position.Line, pe.Position.Col)
		if k := errorKey(pe.LastKey, text, pe.Position.Line); k != "" {
			fmt.Fprintf(&b, " (key %s)", k)
		}
		val := lineValue(text, pe.Position.Line)
		if msg, ok := redactMessage(pe.Message, val, text != nil); ok {
			b.WriteString(": " + strings.TrimSuffix(msg, "."))
			if strings.HasPrefix(pe.Message, "expected value but found") {
				b.WriteString(" (a text value goes in double quotes: key = \"...\")")
			}
		} else {
			b.WriteString(": syntax error")
		}
		return b.String()
	}
	if m := decodeErr.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		msg, ok := redactMessage(m[3], lineValue(text, n), text != nil)
		if !ok {
			msg = "the value does not fit this key"
		}
		return fmt.Sprintf("line %d (key %s): %s", n, m[2], msg)
	}
	return "the document could not be decoded"
}

var bareKey = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=`)

// errorKey names the key an error is about: the parser's last key, or,
// when the error comes after the key was read (trailing text), that key
// within the parser's current table.
func errorKey(last string, text []byte, n int) string {
	if text == nil || n < 1 {
		return last
	}
	lines := strings.Split(string(text), "\n")
	if n > len(lines) {
		return last
	}
	m := bareKey.FindStringSubmatch(lines[n-1])
	if m == nil || strings.Contains("."+last+".", "."+m[1]+".") {
		return last
	}
	if last == "" {
		return m[1]
	}
	return last + "." + m[1]
}

// lineValue is what follows the first '=' on line n of text (the whole
// line if it has none): the part of the line a secret would be in.
func lineValue(text []byte, n int) string {
	if text == nil || n < 1 {
		return ""
	}
	lines := strings.Split(string(text), "\n")
	if n > len(lines) {
		return ""
	}
	l := lines[n-1]
	if _, v, ok := strings.Cut(l, "="); ok {
		return v
	}
	return l
}

var quoted = regexp.MustCompile(`'[^'\n]*'|"(?:[^"\\\n]|\\.)*"`)

// redactMessage cuts quoted segments out of a parser message. Without the
// text (known false) only pieces of up to three characters stay: they are
// the syntax the message is about ('=', '}'). With it, a quoted piece stays
// only if it is not a piece of the offending line's value val (an example
// such as "30ms", a key name). It returns false if a stray quote is left
// over (it cannot tell where a quoted value ends) or a word of val is
// still in the message.
func redactMessage(msg, val string, known bool) (string, bool) {
	words := strings.FieldsFunc(val, func(r rune) bool { return strings.ContainsRune(" \t\"'=,[]{}#", r) })
	holdsValue := func(s string) bool {
		for _, w := range words {
			if len(w) >= 3 && strings.Contains(s, w) {
				return true
			}
		}
		return false
	}
	out := quoted.ReplaceAllStringFunc(msg, func(q string) string {
		inner := unescapeQuoted(q[1 : len(q)-1])
		keep := len([]rune(inner)) <= 3
		if known {
			keep = inner != "" && !strings.Contains(val, inner) && !holdsValue(inner) && !sharesRun(inner, val)
		}
		if keep {
			return q
		}
		return q[:1] + "…" + q[len(q)-1:]
	})
	if strings.ContainsAny(quoted.ReplaceAllString(out, ""), `'"`) || holdsValue(out) {
		return "", false
	}
	return out, true
}

// sharesRun reports whether a and b have four characters in a row in
// common: the parser quotes a prefix of a bad value ("1979-05-27T").
func sharesRun(a, b string) bool {
	for i := 0; i+4 <= len(a); i++ {
		if strings.Contains(b, a[i:i+4]) {
			return true
		}
	}
	return false
}

// unescapeQuoted turns the parser's '\n' back into a newline, so a quoted
// newline is never taken for a piece of the value.
func unescapeQuoted(s string) string {
	if u, err := strconv.Unquote(`"` + s + `"`); err == nil {
		return u
	}
	return s
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
