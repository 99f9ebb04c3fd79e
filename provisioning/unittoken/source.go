// Package unittoken is a fleet unit's conference token cache: it asks the
// fleet service (fleetd) for a token over the unit's link, signed with the
// unit's key, opens the sealed answer, and keeps a fresh one ready so that
// JOIN never waits for the fleet: the token is fetched while the unit is
// idle and renewed before it expires, and a join takes it from the cache.
package unittoken

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

// Source fetches and caches tokens for one unit.
type Source struct {
	// Key is the unit's identity key (its certificate's); Device its id.
	Key    crypto.Signer
	Device string
	// Publish sends a signed request (link.PublishTokenRequest).
	Publish func([]byte) error
	// Want names what JOIN would enter now: a consultation id of the
	// unit's schedule, fleet.StandingMeeting, or "" for nothing.
	Want func() string
	// Refresh is how long before expiry a token is renewed (default 3 min).
	Refresh time.Duration
	// Now is the clock (time.Now by default).
	Now func() time.Time
	Log *slog.Logger

	mu      sync.Mutex
	waiting map[string]chan fleet.TokenResponse // by nonce
	cached  map[string]fleet.TokenGrant         // by consultation
	kick    chan struct{}
}

// minLeft is the least validity a cached token must have to be handed to
// a join: enough to finish the signalling handshake.
const minLeft = 30 * time.Second

// answerTimeout bounds the wait for fleetd's answer.
var answerTimeout = 5 * time.Second

func (s *Source) init() {
	if s.waiting == nil {
		s.waiting = map[string]chan fleet.TokenResponse{}
		s.cached = map[string]fleet.TokenGrant{}
		s.kick = make(chan struct{}, 1)
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	if s.Refresh == 0 {
		s.Refresh = 3 * time.Minute
	}
	if s.Log == nil {
		s.Log = slog.Default()
	}
}

// OnToken is the link's hook for the unit's token topic.
func (s *Source) OnToken(payload []byte) {
	r, err := fleet.ParseTokenResponse(payload)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.init()
	ch := s.waiting[r.Nonce]
	delete(s.waiting, r.Nonce)
	s.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// Fetch asks fleetd for a token for consultation now, bypassing the cache
// (but filling it).
func (s *Source) Fetch(ctx context.Context, consultation string) (fleet.TokenGrant, error) {
	s.mu.Lock()
	s.init()
	nonce := fleet.NewNonce()
	ch := make(chan fleet.TokenResponse, 1)
	s.waiting[nonce] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waiting, nonce)
		s.mu.Unlock()
	}()
	req, err := fleet.SignTokenRequest(s.Key, fleet.TokenRequest{Device: s.Device, Consultation: consultation, Nonce: nonce, At: s.Now().UTC()})
	if err != nil {
		return fleet.TokenGrant{}, err
	}
	if err := s.Publish(req); err != nil {
		return fleet.TokenGrant{}, fmt.Errorf("ask fleetd for a token: %w", err)
	}
	t := time.NewTimer(answerTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		g, err := fleet.OpenTokenGrant(s.Key, s.Device, r)
		if err != nil {
			return g, err
		}
		s.mu.Lock()
		if old, ok := s.cached[consultation]; ok {
			clear(old.E2EEKey)
		}
		s.cached[consultation] = g
		s.mu.Unlock()
		g.E2EEKey = bytes.Clone(g.E2EEKey)
		return g, nil
	case <-t.C:
		return fleet.TokenGrant{}, fmt.Errorf("fleetd did not answer the token request within %s", answerTimeout)
	case <-ctx.Done():
		return fleet.TokenGrant{}, ctx.Err()
	}
}

// Cached returns a token for consultation that is valid for at least
// minLeft, if the cache has one.
func (s *Source) Cached(consultation string) (fleet.TokenGrant, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	g, ok := s.cached[consultation]
	return g, ok && g.Expires.Sub(s.Now()) > minLeft
}

// ErrNothingDue is a join with nothing to enter: no consultation due and no
// standing meeting.
var ErrNothingDue = errors.New("no consultation now")

// Token is the LiveKit connector's TokenSource: the cached token for what
// JOIN enters now, fetched only if the cache has none (the prefetch missed,
// e.g. the consultation became due a moment ago).
func (s *Source) Token(ctx context.Context) (string, error) {
	g, err := s.Grant(ctx)
	return g.Token, err
}

// Grant is the whole grant for what JOIN enters now (the token and, for an
// end-to-end encrypted consultation, its key material, which stays in
// memory only), from the cache or fetched as Token does.
func (s *Source) Grant(ctx context.Context) (fleet.TokenGrant, error) {
	want := s.Want()
	if want == "" {
		return fleet.TokenGrant{}, ErrNothingDue
	}
	if g, ok := s.Cached(want); ok {
		g.E2EEKey = bytes.Clone(g.E2EEKey) // the cache may wipe its own
		return g, nil
	}
	return s.Fetch(ctx, want)
}

// forget drops, and wipes the key material of, every cached grant but
// keep's, and keep's too once it has expired: a consultation's K stays in
// memory while JOIN could still enter it (a rejoin after a drop needs it)
// and not after. Go gives no guarantee that no copy is left elsewhere; this
// removes the one the unit keeps on purpose.
func (s *Source) forget(keep string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	now := s.Now()
	n := 0
	for id, g := range s.cached {
		if id != keep || !now.Before(g.Expires) {
			clear(g.E2EEKey)
			delete(s.cached, id)
			n++
		}
	}
	return n
}

// Kick makes Run look at Want again now (the schedule changed).
func (s *Source) Kick() {
	s.mu.Lock()
	s.init()
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run keeps a token for Want ready until ctx ends: fetched when Want
// changes, renewed Refresh before it expires, retried every few seconds
// while fleetd or the broker is unreachable.
func (s *Source) Run(ctx context.Context) {
	s.mu.Lock()
	s.init()
	s.mu.Unlock()
	for {
		wait := time.Minute
		want := s.Want()
		s.forget(want)
		if want != "" {
			g, ok := s.Cached(want)
			if !ok || g.Expires.Sub(s.Now()) < s.Refresh {
				if _, err := s.Fetch(ctx, want); err != nil {
					if ctx.Err() != nil {
						return
					}
					s.Log.Debug("conference token prefetch failed; retrying", "err", err)
					wait = 5 * time.Second
					if errors.Is(err, fleet.ErrTokenRefused) {
						wait = time.Minute // fleetd said no: asking again at once changes nothing
					}
				}
			}
			if g, ok := s.Cached(want); ok {
				if d := g.Expires.Sub(s.Now()) - s.Refresh; d < wait {
					wait = max(d, time.Second)
				}
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.kick:
		case <-t.C:
		}
		t.Stop()
	}
}
