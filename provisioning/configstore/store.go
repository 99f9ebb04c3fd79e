// Package configstore keeps the unit's fleet config on disk so that it
// survives power loss and kill -9 at any instant: the applied effective
// config with the signed envelopes it came from and the version applied per
// target, the last known good state, a pending-confirmation marker, the last
// rollback not yet reported, and the command replay guard's nonces.
//
// Layout of the directory (0700; files 0600, configs hold secrets):
//
//	lock             flock(2)ed while a Store is open: one roomd per store
//	state            the whole state; replaced atomically, never edited
//	state.tmp-*      a write in progress; one found at Open is a torn write
//	                 from a crash and is deleted unread
//
// state is one line "konsult-fleet-state 1 sha256=<hex of the body>"
// followed by the body, a JSON document (see the file type). Every write goes
// to a temp file in the same directory, is fsynced, renamed over state, and
// the directory is fsynced: a reader sees the complete old or the complete
// new state, never a mix, and the checksum catches a file damaged some other
// way.
package configstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// State is one applied fleet config.
type State struct {
	// Config is the effective config (TOML) the unit runs with; "" means no
	// fleet config (the unit runs on its local file).
	Config string `json:"config"`
	// Envelopes are the signed envelopes Config was merged from, as received,
	// by target key ("device:<id>", "group:<name>").
	Envelopes map[string][]byte `json:"envelopes,omitempty"`
	// Versions are the versions applied per target key. They only go up.
	Versions map[string]uint64 `json:"versions,omitempty"`
}

func (s State) clone() State {
	out := State{Config: s.Config, Versions: maps.Clone(s.Versions)}
	if s.Envelopes != nil {
		out.Envelopes = make(map[string][]byte, len(s.Envelopes))
		for k, v := range s.Envelopes {
			out.Envelopes[k] = bytes.Clone(v)
		}
	}
	return out
}

// Pending marks a config that was applied but not yet confirmed (the unit has
// not shown it can reach its broker with it).
type Pending struct {
	Since time.Time `json:"since"`
	// Boots counts how often roomd has started (Open) while this config was
	// pending. A config that crashes roomd is never confirmed; the caller
	// rolls back once Boots passes its limit.
	Boots int `json:"boots"`
}

// RollbackRecord is the last rollback, kept until reported.
type RollbackRecord struct {
	At             time.Time `json:"at"`
	Reason         string    `json:"reason"`
	FromGeneration uint64    `json:"from_generation"`
	ToGeneration   uint64    `json:"to_generation"`
	// Versions are the versions of the config that was rolled back, which
	// the fleet must exceed to try again.
	Versions map[string]uint64 `json:"versions,omitempty"`
}

// Startup is what Open found: whether the unit came up on the old or the new
// config after a crash.
//
//   - Pending set: the unit is on a new config it never confirmed (it
//     crashed or restarted after Apply and before Confirm). Confirm once the
//     broker is reached with it, or Rollback.
//   - TornWrites > 0: a write was interrupted; the store is on the state from
//     before that write (the temp file was discarded).
//   - otherwise: on the last confirmed config (or none, Generation 0).
type Startup struct {
	Generation uint64
	Pending    *Pending
	TornWrites int
}

const (
	stateName   = "state"
	tempPattern = "state.tmp-*"
	lockName    = "lock"
	header      = "konsult-fleet-state"
	format      = 1
)

// ErrCorrupt means the state file fails its checksum or does not parse.
var ErrCorrupt = errors.New("fleet config store is corrupt")

// ErrNoLastKnownGood means there is nothing to roll back to: no config was
// ever applied.
var ErrNoLastKnownGood = errors.New("no last known good config to roll back to")

// file is the state file's body.
type file struct {
	Format        int                  `json:"format"`
	Generation    uint64               `json:"generation"` // +1 per Apply and Rollback
	Current       State                `json:"current"`
	LastKnownGood *State               `json:"last_known_good,omitempty"` // nil: nothing applied yet
	Pending       *Pending             `json:"pending,omitempty"`
	Rollback      *RollbackRecord      `json:"rollback,omitempty"`
	Nonces        map[string]time.Time `json:"nonces,omitempty"`
}

func (f file) clone() file {
	out := f
	out.Current = f.Current.clone()
	if f.LastKnownGood != nil {
		l := f.LastKnownGood.clone()
		out.LastKnownGood = &l
	}
	if f.Pending != nil {
		p := *f.Pending
		out.Pending = &p
	}
	if f.Rollback != nil {
		r := *f.Rollback
		r.Versions = maps.Clone(f.Rollback.Versions)
		out.Rollback = &r
	}
	out.Nonces = maps.Clone(f.Nonces)
	return out
}

// Store is an open store directory. Its methods are safe for concurrent use.
type Store struct {
	dir  string
	lock *os.File
	now  func() time.Time

	mu      sync.Mutex
	f       file
	startup Startup
}

// Open opens (creating if needed) the store in dir, takes its lock, discards
// torn writes, and counts a boot on a pending config. A corrupt state file is
// an error wrapping ErrCorrupt; nothing is overwritten.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open config store: %w", err)
	}
	// MkdirAll keeps an existing directory's mode; configs hold secrets.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open config store: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open config store: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open config store %s: locked by another process (is a second roomd running?): %w", dir, err)
	}
	s := &Store{dir: dir, lock: lock, now: time.Now}
	if err := s.load(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) load() error {
	temps, err := filepath.Glob(filepath.Join(s.dir, tempPattern))
	if err != nil {
		return fmt.Errorf("open config store: %w", err)
	}
	for _, t := range temps {
		if err := os.Remove(t); err != nil {
			return fmt.Errorf("open config store: discard torn write: %w", err)
		}
	}
	s.startup.TornWrites = len(temps)

	path := filepath.Join(s.dir, stateName)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		s.f = file{Format: format}
		return nil
	case err != nil:
		return fmt.Errorf("open config store: %w", err)
	}
	f, err := decode(b)
	if err != nil {
		return fmt.Errorf("open config store: %s: %w: %v; move it aside and restart: the unit then runs on its local config until the fleet's retained config arrives again", path, ErrCorrupt, err)
	}
	s.f = f
	if s.f.Pending != nil {
		next := s.f.clone()
		next.Pending.Boots++
		if err := s.commit(next); err != nil {
			return fmt.Errorf("open config store: count boot on pending config: %w", err)
		}
	}
	s.startup.Generation = s.f.Generation
	if s.f.Pending != nil {
		p := *s.f.Pending
		s.startup.Pending = &p
	}
	return nil
}

func encode(f file) ([]byte, error) {
	body, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	out := fmt.Appendf(nil, "%s %d sha256=%s\n", header, format, hex.EncodeToString(sum[:]))
	return append(out, body...), nil
}

func decode(b []byte) (file, error) {
	first, body, ok := bytes.Cut(b, []byte("\n"))
	if !ok {
		return file{}, errors.New("no header line")
	}
	fields := strings.Fields(string(first))
	if len(fields) != 3 || fields[0] != header || !strings.HasPrefix(fields[2], "sha256=") {
		return file{}, errors.New("bad header line")
	}
	if fields[1] != fmt.Sprint(format) {
		return file{}, fmt.Errorf("format %s, this roomd reads %d (written by a newer roomd?)", fields[1], format)
	}
	sum := sha256.Sum256(body)
	if strings.TrimPrefix(fields[2], "sha256=") != hex.EncodeToString(sum[:]) {
		return file{}, errors.New("checksum mismatch")
	}
	var f file
	if err := json.Unmarshal(body, &f); err != nil {
		return file{}, fmt.Errorf("body: %w", err)
	}
	if f.Format != format {
		return file{}, fmt.Errorf("body format %d, want %d", f.Format, format)
	}
	return f, nil
}

// commit writes next durably and makes it the in-memory state. Callers hold
// s.mu (or own s exclusively, in Open).
func (s *Store) commit(next file) error {
	b, err := encode(next)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, tempPattern) // mode 0600
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	tmpName := tmp.Name()
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmpName, filepath.Join(s.dir, stateName))
	}
	if err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("write state: %w", err)
	}
	// The rename is done: the new state is what a reader sees from now on,
	// so memory follows it even if the directory sync below fails.
	s.f = next
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("write state: sync directory: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close releases the store's lock.
func (s *Store) Close() error {
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close() // closing the descriptor drops the flock
	s.lock = nil
	return err
}

// Startup reports what Open found; see Startup.
func (s *Store) Startup() Startup {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.startup
	if out.Pending != nil {
		p := *out.Pending
		out.Pending = &p
	}
	return out
}

// Current returns the applied state (a copy).
func (s *Store) Current() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Current.clone()
}

// LastKnownGood returns the state a Rollback returns to, and false if no
// config was ever applied.
func (s *Store) LastKnownGood() (State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f.LastKnownGood == nil {
		return State{}, false
	}
	return s.f.LastKnownGood.clone(), true
}

// Pending returns the pending-confirmation marker, and false if the current
// config is confirmed.
func (s *Store) Pending() (Pending, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f.Pending == nil {
		return Pending{}, false
	}
	return *s.f.Pending, true
}

// Generation counts Applies and Rollbacks since the store was created.
func (s *Store) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Generation
}

// Apply makes next the current state, pending confirmation. The previous
// current state becomes the last known good only if it was confirmed: while
// a config is pending, the last known good stays the last confirmed one, so
// two bad configs in a row cannot make each other "good". next's version
// for every target must be at least the current one (versions only go up).
func (s *Store) Apply(next State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.f.Current.Versions {
		if next.Versions[k] < v {
			return fmt.Errorf("apply config: version for %s would go down from %d to %d: versions only go up", k, v, next.Versions[k])
		}
	}
	f := s.f.clone()
	if f.Pending == nil {
		lkg := f.Current
		f.LastKnownGood = &lkg
	}
	f.Current = next.clone()
	f.Pending = &Pending{Since: s.now().UTC()}
	f.Generation++
	if err := s.commit(f); err != nil {
		return fmt.Errorf("apply config: %w", err)
	}
	return nil
}

// Confirm marks the current config good: the unit reached its broker with
// it. It is a no-op when nothing is pending.
func (s *Store) Confirm() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f.Pending == nil {
		return nil
	}
	f := s.f.clone()
	f.Pending = nil
	if err := s.commit(f); err != nil {
		return fmt.Errorf("confirm config: %w", err)
	}
	return nil
}

// Rollback makes the last known good state current again and records why,
// for LastRollback. reason is reported to the fleet: it must not contain a
// secret.
//
// The rolled-back config's versions stay applied (each target keeps the
// higher of the two versions): its envelope is still retained on the broker
// and would otherwise be applied again at every reconnect. The fleet retries
// by publishing a higher version.
func (s *Store) Rollback(reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f.LastKnownGood == nil {
		return fmt.Errorf("roll back config: %w", ErrNoLastKnownGood)
	}
	f := s.f.clone()
	bad := f.Current
	good := f.LastKnownGood.clone()
	for k, v := range bad.Versions {
		if v > good.Versions[k] {
			if good.Versions == nil {
				good.Versions = map[string]uint64{}
			}
			good.Versions[k] = v
		}
	}
	f.Current = good
	f.Pending = nil
	f.Generation++
	f.Rollback = &RollbackRecord{
		At:             s.now().UTC(),
		Reason:         reason,
		FromGeneration: s.f.Generation,
		ToGeneration:   f.Generation,
		Versions:       maps.Clone(bad.Versions),
	}
	if err := s.commit(f); err != nil {
		return fmt.Errorf("roll back config: %w", err)
	}
	return nil
}

// LastRollback returns the last rollback not yet cleared by ClearRollback.
func (s *Store) LastRollback() (RollbackRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f.Rollback == nil {
		return RollbackRecord{}, false
	}
	r := *s.f.Rollback
	r.Versions = maps.Clone(r.Versions)
	return r, true
}

// ClearRollback forgets the last rollback once it has been reported.
func (s *Store) ClearRollback() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f.Rollback == nil {
		return nil
	}
	f := s.f.clone()
	f.Rollback = nil
	if err := s.commit(f); err != nil {
		return fmt.Errorf("clear rollback: %w", err)
	}
	return nil
}

// Nonces returns the replay guard's nonces (nonce -> forget-after time).
func (s *Store) Nonces() map[string]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.f.Nonces)
}

// SaveNonces durably replaces the replay guard's nonces. It fits
// fleet.NewNonceStore(store.Nonces(), store.SaveNonces).
func (s *Store) SaveNonces(n map[string]time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.f.clone()
	f.Nonces = maps.Clone(n)
	if err := s.commit(f); err != nil {
		return fmt.Errorf("save nonces: %w", err)
	}
	return nil
}
