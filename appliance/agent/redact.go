package agent

import (
	"encoding/json"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/konsult/konsult/provisioning/fleet"
)

// redactor cuts secrets out of free text the unit reports (invariant 7):
// the values of secret-looking keys and the credentials of URLs, in every
// fleet config the agent has seen. Messages are built not to quote values
// in the first place; this catches what a lower layer quotes anyway (a
// conference server's error that echoes a token, say).
type redactor struct {
	mu      sync.Mutex
	secrets map[string]bool
	sorted  []string // longest first, so a secret is not half-cut by one inside it
}

func newRedactor() *redactor { return &redactor{secrets: map[string]bool{}} }

// secretKey matches key names whose values are secrets.
func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"secret", "token", "password", "passwd", "psk", "key", "credential", "auth"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// add learns the secrets of a TOML config. A config that does not parse
// adds nothing (it is rejected before anything reports its values).
func (r *redactor) add(toml string) {
	if toml == "" {
		return
	}
	tree, err := fleet.ParseTOML([]byte(toml))
	if err != nil {
		return
	}
	r.learn(tree)
}

// addConfig learns the secrets of a config as the unit runs it (its
// local config, for Standalone): the same walk over its JSON form, whose
// key names carry the same words (APISecret, Token...).
func (r *redactor) addConfig(c any) {
	b, err := json.Marshal(c)
	if err != nil {
		return
	}
	var tree map[string]any
	if json.Unmarshal(b, &tree) == nil {
		r.learn(tree)
	}
}

func (r *redactor) learn(tree map[string]any) {
	var found []string
	walkSecrets(tree, false, &found)
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := false
	for _, s := range found {
		// Shorter values would cut ordinary words out of messages, and
		// protect nothing.
		if len(s) < 4 || r.secrets[s] {
			continue
		}
		r.secrets[s] = true
		changed = true
		if q := strconv.Quote(s); q[1:len(q)-1] != s {
			r.secrets[q[1:len(q)-1]] = true
		}
	}
	if changed {
		r.sorted = r.sorted[:0]
		for s := range r.secrets {
			r.sorted = append(r.sorted, s)
		}
		sort.Slice(r.sorted, func(i, j int) bool { return len(r.sorted[i]) > len(r.sorted[j]) })
	}
}

func walkSecrets(v any, secret bool, out *[]string) {
	switch v := v.(type) {
	case string:
		if secret {
			*out = append(*out, v)
		}
		if u, err := url.Parse(v); err == nil && u.User != nil {
			*out = append(*out, u.User.String(), u.User.Username())
			if p, ok := u.User.Password(); ok {
				*out = append(*out, p)
			}
		}
	case map[string]any:
		for k, e := range v {
			walkSecrets(e, secret || secretKey(k), out)
		}
	case []map[string]any:
		for _, e := range v {
			walkSecrets(e, secret, out)
		}
	case []any:
		for _, e := range v {
			walkSecrets(e, secret, out)
		}
	}
}

// text returns s with every known secret replaced by [redacted].
func (r *redactor) text(s string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, sec := range r.sorted {
		s = strings.ReplaceAll(s, sec, "[redacted]")
	}
	return s
}
