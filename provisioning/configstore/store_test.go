package configstore

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func state(room string, versions map[string]uint64) State {
	return State{
		Config:    "[conference]\nroom = \"" + room + "\"\napi_secret = \"s3cret\"\n",
		Envelopes: map[string][]byte{"device:room-12": []byte(`{"payload":"` + room + `"}`)},
		Versions:  versions,
	}
}

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func reopen(t *testing.T, s *Store) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return open(t, s.dir)
}

func TestApplyConfirmRollback(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "fleet"))
	if cur := s.Current(); cur.Config != "" || s.Generation() != 0 {
		t.Fatalf("fresh store: %+v", cur)
	}
	if _, ok := s.LastKnownGood(); ok {
		t.Fatal("fresh store has a last known good")
	}
	if err := s.Rollback("test"); !errors.Is(err, ErrNoLastKnownGood) {
		t.Fatalf("rollback on a fresh store: %v", err)
	}

	a := state("a", map[string]uint64{"device:room-12": 1})
	b := state("b", map[string]uint64{"device:room-12": 2})
	c := state("c", map[string]uint64{"device:room-12": 3, "group:clinic": 5})

	if err := s.Apply(a); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Pending(); !ok {
		t.Fatal("applied config is not pending confirmation")
	}
	if err := s.Confirm(); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(b); err != nil {
		t.Fatal(err)
	}
	if lkg, _ := s.LastKnownGood(); !reflect.DeepEqual(lkg, a) {
		t.Fatalf("last known good after applying b = %+v, want a", lkg)
	}
	// c arrives before b was confirmed: b never proved itself, so a stays the
	// one to return to.
	if err := s.Apply(c); err != nil {
		t.Fatal(err)
	}
	if lkg, _ := s.LastKnownGood(); !reflect.DeepEqual(lkg, a) {
		t.Fatalf("last known good after applying c over unconfirmed b = %+v, want a", lkg)
	}

	s = reopen(t, s)
	if !reflect.DeepEqual(s.Current(), c) {
		t.Fatalf("after reopen current = %+v, want c", s.Current())
	}
	if err := s.Rollback("broker unreachable with the new config"); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	cur := s.Current()
	if cur.Config != a.Config || !reflect.DeepEqual(cur.Envelopes, a.Envelopes) {
		t.Fatalf("after rollback current = %+v, want a's config", cur)
	}
	// c's versions stay burnt, so its retained envelope is not applied again.
	if want := map[string]uint64{"device:room-12": 3, "group:clinic": 5}; !reflect.DeepEqual(cur.Versions, want) {
		t.Fatalf("versions after rollback = %v, want %v", cur.Versions, want)
	}
	if _, ok := s.Pending(); ok {
		t.Fatal("pending after rollback")
	}
	rb, ok := s.LastRollback()
	if !ok || rb.Reason != "broker unreachable with the new config" || rb.Versions["group:clinic"] != 5 || rb.ToGeneration != rb.FromGeneration+1 {
		t.Fatalf("rollback record = %+v, %v", rb, ok)
	}
	if err := s.ClearRollback(); err != nil {
		t.Fatal(err)
	}
	if _, ok := reopen(t, s).LastRollback(); ok {
		t.Fatal("cleared rollback came back after reopen")
	}
}

func TestApplyRefusesVersionGoingDown(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.Apply(state("a", map[string]uint64{"device:room-12": 4})); err != nil {
		t.Fatal(err)
	}
	err := s.Apply(state("b", map[string]uint64{"device:room-12": 3}))
	if err == nil || !strings.Contains(err.Error(), "device:room-12") {
		t.Fatalf("got %v", err)
	}
	if s.Current().Versions["device:room-12"] != 4 {
		t.Fatal("a refused apply changed the store")
	}
}

func TestStartupReportsPendingBoots(t *testing.T) {
	s := open(t, t.TempDir())
	if st := s.Startup(); st.Pending != nil || st.Generation != 0 {
		t.Fatalf("fresh startup %+v", st)
	}
	if err := s.Apply(state("a", nil)); err != nil {
		t.Fatal(err)
	}
	for boot := 1; boot <= 3; boot++ {
		s = reopen(t, s)
		st := s.Startup()
		if st.Pending == nil || st.Pending.Boots != boot || st.Generation != 1 {
			t.Fatalf("boot %d: startup %+v", boot, st)
		}
	}
	if err := s.Confirm(); err != nil {
		t.Fatal(err)
	}
	if st := reopen(t, s).Startup(); st.Pending != nil {
		t.Fatalf("confirmed config still pending at startup: %+v", st.Pending)
	}
}

func TestNoncesPersist(t *testing.T) {
	s := open(t, t.TempDir())
	exp := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := s.SaveNonces(map[string]time.Time{"00112233445566778899aabbccddeeff": exp}); err != nil {
		t.Fatal(err)
	}
	got := reopen(t, s).Nonces()
	if len(got) != 1 || !got["00112233445566778899aabbccddeeff"].Equal(exp) {
		t.Fatalf("nonces after reopen: %v", got)
	}
}

func TestPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir)
	if err := s.Apply(state("a", nil)); err != nil {
		t.Fatal(err)
	}
	checkModes(t, dir)
}

func checkModes(t *testing.T, dir string) {
	t.Helper()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("store dir mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
}

func TestTornWriteIsDiscarded(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	a := state("a", map[string]uint64{"device:room-12": 1})
	if err := s.Apply(a); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// A crash halfway through writing the next state leaves its temp file.
	if err := os.WriteFile(filepath.Join(dir, "state.tmp-123456"), []byte("konsult-fleet-state 1 sha256=00\n{\"format\":1,\"curr"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	if st := s.Startup(); st.TornWrites != 1 || st.Generation != 1 {
		t.Fatalf("startup %+v", st)
	}
	if !reflect.DeepEqual(s.Current(), a) {
		t.Fatalf("current %+v, want the state before the torn write", s.Current())
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "state.tmp-*")); len(m) != 0 {
		t.Fatalf("torn write left in place: %v", m)
	}
}

func TestCorruptStateIsRefused(t *testing.T) {
	for name, damage := range map[string]func([]byte) []byte{
		"flipped byte": func(b []byte) []byte { b[len(b)-5] ^= 0x01; return b },
		"truncated":    func(b []byte) []byte { return b[:len(b)/2] },
		"no header":    func(b []byte) []byte { _, body, _ := strings.Cut(string(b), "\n"); return []byte(body) },
		"empty":        func([]byte) []byte { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			if err := s.Apply(state("a", nil)); err != nil {
				t.Fatal(err)
			}
			s.Close()
			path := filepath.Join(dir, "state")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = Open(dir)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "move it aside") {
				t.Fatalf("got %v", err)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error quotes the config: %v", err)
			}
		})
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "second roomd") {
		t.Fatalf("second Open: %v", err)
	}
	s.Close()
	open(t, dir)
}

func TestCurrentIsACopy(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.Apply(state("a", map[string]uint64{"device:room-12": 1})); err != nil {
		t.Fatal(err)
	}
	cur := s.Current()
	cur.Versions["device:room-12"] = 99
	cur.Envelopes["device:room-12"][0] = 'X'
	if got := s.Current(); got.Versions["device:room-12"] != 1 || got.Envelopes["device:room-12"][0] == 'X' {
		t.Fatal("changing what Current returned changed the store")
	}
}
