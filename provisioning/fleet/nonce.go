package fleet

import (
	"maps"
	"sync"
	"time"
)

// MaxNonces bounds the replay guard. Commands live at most
// MaxCommandLifetime, so reaching it means over 4096 commands within an hour,
// which no fleet manager sends: the guard then refuses commands (too_many)
// rather than forget a nonce that could be replayed.
const MaxNonces = 4096

// NonceStore is the command replay guard. It remembers each accepted nonce
// until its command's expiry plus skew, after which the command is refused
// as expired anyway and the nonce can be forgotten.
type NonceStore struct {
	mu   sync.Mutex
	seen map[string]time.Time // nonce -> when it may be forgotten
	save func(map[string]time.Time) error
	skew time.Duration
}

// NewNonceStore returns a guard that starts from seen (nonce -> forget-after
// time, as given to save before; nil for none) and calls save with the whole
// set after each change, before a command is accepted, so a restart does not
// forget a nonce. save may be nil (tests, or a unit without storage).
func NewNonceStore(seen map[string]time.Time, save func(map[string]time.Time) error) *NonceStore {
	s := &NonceStore{seen: maps.Clone(seen), save: save, skew: DefaultSkew}
	if s.seen == nil {
		s.seen = map[string]time.Time{}
	}
	return s
}

// Record accepts nonce for a command expiring at expires, or refuses it as
// expired, replayed, too_many, or internal (the set could not be saved; the
// command must not run, since a restart would forget its nonce).
func (s *NonceStore) Record(nonce string, expires, now time.Time) error {
	if s == nil {
		return newError(ReasonInternal, "the unit has no replay guard: this is a bug in roomd; commands are refused until it is fixed")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	forget := expires.Add(s.skew)
	if now.After(forget) {
		return newError(ReasonExpired, "expired at %s: sign the command again", expires.UTC().Format(time.RFC3339))
	}
	pruned := s.prune(now)
	if _, ok := s.seen[nonce]; ok {
		return newError(ReasonReplayed, "nonce %s was already used: this is a replay of an earlier command; sign a new one", nonce)
	}
	if len(s.seen) >= MaxNonces {
		if pruned {
			_ = s.persist() // best effort: the refusal below does not depend on it
		}
		return newError(ReasonTooMany, "the unit has accepted %d commands that have not expired yet: wait until some expire (at most %s) before sending more",
			len(s.seen), MaxCommandLifetime)
	}
	s.seen[nonce] = forget
	if err := s.persist(); err != nil {
		delete(s.seen, nonce)
		return newError(ReasonInternal, "could not save the replay guard (%v): check the unit's storage; the command was not run", err)
	}
	return nil
}

// Len is the number of nonces remembered.
func (s *NonceStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func (s *NonceStore) prune(now time.Time) bool {
	n := len(s.seen)
	for k, t := range s.seen {
		if now.After(t) {
			delete(s.seen, k)
		}
	}
	return len(s.seen) != n
}

func (s *NonceStore) persist() error {
	if s.save == nil {
		return nil
	}
	return s.save(maps.Clone(s.seen))
}
