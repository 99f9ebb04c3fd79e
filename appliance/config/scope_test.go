package config

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// schemaKeys walks Config by its toml tags: each section, and each key of a
// section that is a struct of its own fields ([network] and [pins] are
// types or maps of their own and count as one key).
func schemaKeys(t *testing.T) (sections []string, keys map[string][]string) {
	t.Helper()
	keys = map[string][]string{}
	ct := reflect.TypeOf(Config{})
	for i := range ct.NumField() {
		f := ct.Field(i)
		sec := strings.Split(f.Tag.Get("toml"), ",")[0]
		if sec == "" {
			t.Fatalf("Config.%s has no toml tag", f.Name)
		}
		sections = append(sections, sec)
		if f.Type.Kind() != reflect.Struct || f.Type.PkgPath() != "" && f.Type.PkgPath() != ct.PkgPath() {
			continue
		}
		for j := range f.Type.NumField() {
			k := strings.Split(f.Type.Field(j).Tag.Get("toml"), ",")[0]
			if k == "" {
				t.Fatalf("Config.%s.%s has no toml tag", f.Name, f.Type.Field(j).Name)
			}
			keys[sec] = append(keys[sec], k)
		}
	}
	return sections, keys
}

// Every key of the schema is either applied live or local-only: a key
// added without a scope fails here, and so does a scope for a key that is
// gone.
func TestEveryKeyHasAScope(t *testing.T) {
	sections, keys := schemaKeys(t)
	known := map[string]bool{}
	for _, sec := range sections {
		known[sec] = true
		for _, k := range keys[sec] {
			known[sec+"."+k] = true
			if s := ScopeOf(sec + "." + k); s != Live && s != LocalOnly {
				t.Errorf("%s.%s has no scope: add it to scopes (live if a change from the fleet applies without a restart, else local-only)", sec, k)
			}
		}
		if len(keys[sec]) == 0 && ScopeOf(sec) == 0 {
			t.Errorf("[%s] has no scope", sec)
		}
	}
	seen := map[string]bool{}
	for _, s := range scopes {
		if !known[s.key] {
			t.Errorf("scopes names %q, which the schema does not have", s.key)
		}
		if seen[s.key] {
			t.Errorf("scopes names %q twice", s.key)
		}
		seen[s.key] = true
	}
}

// fleetSetting is a fleet config that sets key (or the section, whole) to
// its built-in default.
func fleetSetting(t *testing.T, def *Config, sec, key string) []byte {
	t.Helper()
	var b bytes.Buffer
	if key == "" {
		b.WriteString("[" + sec + "]\n")
		return b.Bytes()
	}
	v := reflect.ValueOf(def).Elem()
	ct := v.Type()
	for i := range ct.NumField() {
		if strings.Split(ct.Field(i).Tag.Get("toml"), ",")[0] != sec {
			continue
		}
		sv := v.Field(i)
		for j := range sv.NumField() {
			if strings.Split(sv.Type().Field(j).Tag.Get("toml"), ",")[0] == key {
				m := map[string]map[string]any{sec: {key: sv.Field(j).Interface()}}
				if err := toml.NewEncoder(&b).Encode(m); err != nil {
					t.Fatal(err)
				}
				return b.Bytes()
			}
		}
	}
	t.Fatalf("no %s.%s", sec, key)
	return nil
}

// A fleet config that sets a local-only key, even to its default, is
// refused naming the key; one that sets a live key is taken.
func TestFleetMaySetLiveKeysOnly(t *testing.T) {
	def, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	sections, keys := schemaKeys(t)
	for _, sec := range sections {
		names := keys[sec]
		if len(names) == 0 || scopeIsSection(sec) {
			names = append([]string{""}, names...) // the section itself
		}
		for _, k := range names {
			full := sec
			if k != "" {
				full = sec + "." + k
			}
			shown := full
			if scopeIsSection(sec) {
				shown = "[" + sec + "]"
			}
			text := fleetSetting(t, def, sec, k)
			_, err := fleetUnit.Effective(text)
			switch ScopeOf(full) {
			case Live:
				if err != nil {
					t.Errorf("live key %s refused from the fleet (%q): %v", full, text, err)
				}
			case LocalOnly:
				if err == nil || !strings.Contains(err.Error(), shown+" can only be set in the unit's own config file") {
					t.Errorf("local-only key %s from the fleet (%q): err = %v", full, text, err)
				}
			default:
				t.Errorf("%s has no scope", full)
			}
		}
	}
}

func scopeIsSection(sec string) bool {
	for _, s := range scopes {
		if s.key == sec {
			return true
		}
	}
	return false
}

func TestLocalOnlyKeys(t *testing.T) {
	got := strings.Join(LocalOnlyKeys(), " ")
	for _, want := range []string{"fleet.renew_before", "log.format", "[api]", "fleet.device_id", "unit.network_dir"} {
		if !strings.Contains(got, want) {
			t.Errorf("LocalOnlyKeys() = %s, want %s in it", got, want)
		}
	}
}
