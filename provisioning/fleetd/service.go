package fleetd

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// Service is a running fleetd.
type Service struct {
	cfg   *Config
	store *Store
	ca    *ca.CA
	// schedKey signs the units' schedules: fleetd's own key, which a
	// unit accepts for nothing else, or the fleet key (no schedule_key).
	schedKey ed25519.PrivateKey
	// fleetKey signs renewal commands; nil unless renew is on (the only
	// thing fleetd still needs the fleet key for).
	fleetKey ed25519.PrivateKey
	log      *slog.Logger
	topics   link.Topics
	// Now is the service's clock; tests move it.
	Now func() time.Time

	ledger ledgerCache

	mu        sync.Mutex
	fc        *manager.Client // nil until connected
	published map[string]string
	changed   chan struct{}
	ready     chan struct{}
	readyOnce sync.Once

	patientAddr atomic.Value // string: where the patient web listens
	bad         badSecrets   // wrong patient links per address
	asks        counter      // token requests per unit
	lkHTTP      *http.Client // to ask LiveKit who is in a room

	auditUp    chan struct{} // closed once the audit store listens
	auditReady sync.Once
}

// workers answer token requests side by side: each waits for its PUBACK,
// and one slow answer must not hold up the next unit's.
const workers = 32

// tokenAsksPerMinute bounds one unit's token requests. A unit prefetches
// one token while idle and renews it before it expires (every few
// minutes), and asks again on a JOIN or a reconnect; 20 a minute is far
// above that and far below a minting loop.
const tokenAsksPerMinute = 20

// New opens fleetd's database and CA, its schedule key if schedule_key is
// set (making the key on first start), and the fleet signing key if renew
// is on or there is no schedule key (then schedules are signed with it, as
// before schedule keys).
func New(cfg *Config, log *slog.Logger) (*Service, error) {
	c, err := ca.Open(cfg.CADir)
	if err != nil {
		return nil, err
	}
	var key ed25519.PrivateKey
	if cfg.Renew || cfg.ScheduleKey == "" {
		key, err = fleet.LoadPrivateKey(filepath.Join(cfg.CADir, "fleet.key"))
		if err != nil {
			why := "renew = true delivers renewals as commands signed with the fleet key"
			if cfg.ScheduleKey == "" {
				why = "without schedule_key fleetd signs the units' schedules with the fleet key (set schedule_key to give it its own: docs/FLEETD.md)"
			}
			return nil, fmt.Errorf("%s: %w", why, err)
		}
	}
	if cfg.Renew {
		log.Warn("fleetd: renew = true: this server holds the fleet key, which can configure every unit; run fleetctl renew --watch on the manager's machine instead to keep it off (docs/FLEETD.md)")
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Database), 0o700); err != nil {
		return nil, fmt.Errorf("database folder: %w", err)
	}
	sk := key
	if cfg.ScheduleKey == "" {
		log.Warn("fleetd: no schedule_key: schedules are signed with the fleet key, which can configure every unit; fleetd -schedule-key makes fleetd's own key and prints the two lines to set (docs/FLEETD.md)")
	} else {
		var created bool
		sk, created, err = fleet.LoadOrCreateScheduleKey(cfg.ScheduleKey)
		if err != nil {
			return nil, err
		}
		if created {
			pub := sk.Public().(ed25519.PublicKey)
			log.Warn("fleetd: made a new schedule key: units take its schedules once a fleet config authorises it",
				"key_id", fleet.KeyID(pub), "path", cfg.ScheduleKey, "config", ScheduleKeysLine(pub))
		}
	}
	st, err := OpenStore(cfg.Database)
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, store: st, ca: c, schedKey: sk, fleetKey: key, log: log, topics: link.Topics{Prefix: cfg.Broker.Prefix},
		Now: time.Now, ledger: ledgerCache{ca: c}, published: map[string]string{}, asks: counter{limit: tokenAsksPerMinute, window: time.Minute},
		lkHTTP: &http.Client{Timeout: 10 * time.Second}, changed: make(chan struct{}, 1), ready: make(chan struct{}), auditUp: make(chan struct{})}, nil
}

// ScheduleKey is the public half of the key fleetd signs schedules with:
// its schedule_key, or the fleet key without one.
func (s *Service) ScheduleKey() ed25519.PublicKey { return s.schedKey.Public().(ed25519.PublicKey) }

// ScheduleKeysLine is the line of a fleet config's [fleet] table that
// authorises pub on the units.
func ScheduleKeysLine(pub ed25519.PublicKey) string {
	return fmt.Sprintf("schedule_keys = [%q]", fleet.ScheduleKeyLine(pub))
}

// Store is the service's database.
func (s *Service) Store() *Store { return s.store }

// Ready is closed once the service is connected and subscribed.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Close closes the database.
func (s *Service) Close() error { return s.store.Close() }

// Changed tells the schedule publisher the consultations changed.
func (s *Service) Changed() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Run serves until ctx ends: the broker connection (token requests,
// schedules, renewals) and, if configured, fleetctl's socket.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go s.purgeLoop(ctx)
	if s.cfg.PatientWeb.Listen != "" {
		ln, err := net.Listen("tcp", s.cfg.PatientWeb.Listen)
		if err != nil {
			return fmt.Errorf("[patient_web] listen: %w", err)
		}
		s.patientAddr.Store(ln.Addr().String())
		go func() {
			if err := s.ServePatient(ctx, ln); err != nil {
				errc <- err
			}
		}()
	}
	go func() {
		if err := s.runAudit(ctx); err != nil {
			errc <- err
		}
	}()
	if s.cfg.Socket != "" {
		ln, err := listenSocket(s.cfg.Socket, os.FileMode(s.cfg.SocketMode))
		if err != nil {
			return err
		}
		go func() { errc <- s.serveAPI(ctx, ln) }()
	}
	filters := []string{s.topics.AllDevices(link.TokenRequest)}
	if s.cfg.Renew {
		filters = append(filters, s.topics.AllDevices(link.DeviceReported))
	}
	fc, err := manager.Dial(ctx, s.cfg.manager(), s.log, filters...)
	if err != nil {
		return err
	}
	defer fc.Close()
	s.mu.Lock()
	s.fc = fc
	s.mu.Unlock()
	s.readyOnce.Do(func() { close(s.ready) })
	s.log.Info("fleetd: connected", "broker", s.cfg.Broker.URL)

	jobs := make(chan manager.Msg, 256)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range jobs {
				s.answer(ctx, fc, m)
			}
		}()
	}
	defer wg.Wait()
	defer close(jobs)
	go s.publishLoop(ctx, fc)
	ren := newRenewer(s)
	for {
		m, err := fc.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case err := <-errc:
			return err
		default:
		}
		switch m.Kind {
		case link.TokenRequest:
			if m.Retained {
				continue // a stale request nobody waits for
			}
			// Waiting here leaves a burst (every unit prefetching after
			// fleetd restarts) in the client's bounded queue instead of
			// dropping requests the units would only send again.
			select {
			case jobs <- m:
			case <-ctx.Done():
				return nil
			}
		case link.DeviceReported:
			ren.handle(ctx, fc, m)
		}
	}
}

// answer answers one token request on the unit's token topic.
func (s *Service) answer(ctx context.Context, fc *manager.Client, m manager.Msg) {
	resp, err := s.Issue(ctx, m.Unit, m.Payload)
	if resp == nil {
		s.log.Warn("fleetd: unreadable token request dropped", "unit", m.Unit, "err", err)
		return
	}
	if err != nil {
		s.log.Warn("fleetd: token refused", "unit", m.Unit, "err", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := fc.Publish(pctx, s.topics.Token(m.Unit), false, resp); err != nil {
		s.log.Warn("fleetd: token answer not delivered", "unit", m.Unit, "err", err)
	}
}

// Issue answers the token request payload that arrived on unit's topic:
// the response to publish (sealed grant or refusal), and why it refused.
// A nil response means the request could not be read or verified at all,
// so there is nobody to answer.
func (s *Service) Issue(ctx context.Context, unit string, payload []byte) ([]byte, error) {
	now := s.Now()
	req, pub, err := fleet.ParseTokenRequest(payload, unit, now)
	if err != nil {
		return nil, err
	}
	if err := s.ledger.check(unit, pub); err != nil {
		return fleet.RefuseToken(req.Nonce, err.Error()), err
	}
	// Counted only once the request is the unit's own: nobody else can
	// spend a unit's allowance. A unit asks a few times an hour (prefetch,
	// renewal, a join); a stolen card minting tokens in a loop is stopped.
	if s.asks.blocked(unit, now) {
		return fleet.RefuseToken(req.Nonce, ErrTooManyAsks.Error()), ErrTooManyAsks
	}
	s.asks.add(unit, now)
	room, err := s.roomFor(ctx, unit, req.Consultation, now)
	if err != nil {
		return fleet.RefuseToken(req.Nonce, err.Error()), err
	}
	var k []byte
	if req.Consultation != fleet.StandingMeeting {
		if k, err = s.store.E2EEKey(ctx, req.Consultation); err != nil {
			return fleet.RefuseToken(req.Nonce, "fleetd cannot read the consultation"), err
		}
	}
	tok, exp, err := joinToken(s.cfg.LiveKit.APIKey, s.cfg.LiveKit.APISecret, unit, room, now, s.cfg.LiveKit.TokenTTL.Duration)
	if err != nil {
		return fleet.RefuseToken(req.Nonce, "fleetd cannot mint tokens"), err
	}
	resp, err := fleet.SealTokenGrant(pub, unit, req.Nonce, fleet.TokenGrant{Token: tok, Room: room, Consultation: req.Consultation, Expires: exp, E2EEKey: k})
	if err != nil {
		return fleet.RefuseToken(req.Nonce, "fleetd cannot seal the token"), err
	}
	if err := s.store.RecordToken(ctx, unit, req.Consultation, room, now, exp); err != nil {
		s.log.Warn("fleetd: token not logged", "unit", unit, "err", err)
	}
	return resp, nil
}

// Refusal reasons a unit may see (in clear on its token topic).
var (
	ErrNoStanding = errors.New("no standing meeting for this unit")
	ErrNotDue     = errors.New("that consultation is not due now")
	ErrNotYours   = errors.New("no such consultation for this unit")
	// ErrTooManyAsks: more than tokenAsksPerMinute requests in a minute.
	ErrTooManyAsks = fmt.Errorf("more than %d token requests in a minute: wait a minute", tokenAsksPerMinute)
)

// roomFor is the room a unit may enter for consultation id at now.
func (s *Service) roomFor(ctx context.Context, unit, id string, now time.Time) (string, error) {
	if id == fleet.StandingMeeting {
		if r := s.cfg.Units[unit].StandingRoom; r != "" {
			return r, nil
		}
		return "", ErrNoStanding
	}
	c, err := s.store.Consultation(ctx, id)
	if errors.Is(err, ErrNotFound) || err == nil && c.Unit != unit {
		return "", ErrNotYours
	}
	if err != nil {
		return "", err
	}
	if c.CancelledAt != nil {
		return "", fmt.Errorf("%w: it was cancelled", ErrNotDue)
	}
	lead, skew := s.cfg.Consultations.Lead.Duration, s.cfg.Consultations.Skew.Duration
	if now.Before(c.Start.Add(-lead-skew)) || now.After(c.End.Add(skew)) {
		return "", ErrNotDue
	}
	return c.Room, nil
}

// purgeLoop deletes consultations' key material once their window (and
// the units' clock skew) is over, and what is past [retention], every
// republish interval.
func (s *Service) purgeLoop(ctx context.Context) {
	t := time.NewTicker(republish)
	defer t.Stop()
	for {
		if _, err := s.store.PurgeKeys(ctx, s.Now().Add(-s.cfg.Consultations.Skew.Duration)); err != nil && ctx.Err() == nil {
			s.log.Warn("fleetd: consultation keys not purged; trying again", "err", err)
		}
		if n, err := s.store.PruneAudit(ctx, s.Now().Add(-s.cfg.Retention.Audit.Duration)); err != nil && ctx.Err() == nil {
			s.log.Warn("fleetd: audit records not pruned; trying again", "err", err)
		} else if n > 0 {
			s.log.Info("fleetd: audit records past retention deleted", "records", n, "retention", s.cfg.Retention.Audit.Duration.String())
		}
		if _, err := s.store.PruneRecords(ctx, s.Now().Add(-s.cfg.Retention.Records.Duration)); err != nil && ctx.Err() == nil {
			s.log.Warn("fleetd: token and join log not pruned; trying again", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ledgerCache reads the CA's ledger again only when the file changed:
// fleetctl revoke writes it, and the next request must see that.
type ledgerCache struct {
	ca *ca.CA

	mu    sync.Mutex
	mtime time.Time
	size  int64
	l     *ca.Ledger
}

func (lc *ledgerCache) get() (*ca.Ledger, error) {
	fi, err := os.Stat(filepath.Join(lc.ca.Dir, ca.LedgerFile))
	if err != nil {
		return nil, fmt.Errorf("the CA's ledger: %w", err)
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.l != nil && fi.ModTime().Equal(lc.mtime) && fi.Size() == lc.size {
		return lc.l, nil
	}
	l, err := lc.ca.Ledger()
	if err != nil {
		return nil, fmt.Errorf("the CA's ledger: %w", err)
	}
	lc.l, lc.mtime, lc.size = l, fi.ModTime(), fi.Size()
	return l, nil
}

// check says whether pub is a key the fleet CA issued unit a client
// certificate for that is neither revoked nor expired, and the unit is not
// revoked.
func (lc *ledgerCache) check(unit string, pub any) error {
	l, err := lc.get()
	if err != nil {
		return errors.New("fleetd cannot read its CA ledger")
	}
	if l.Revoked(unit) {
		return errors.New("this unit is revoked")
	}
	kh, err := ca.KeyHash(pub)
	if err != nil {
		return errors.New("unknown unit")
	}
	now := time.Now()
	for _, is := range l.Issued {
		if is.Name == unit && is.KeyHash == kh && is.RevokedAt == nil && now.Before(is.NotAfter) &&
			is.Kind != ca.KindAdmin && is.Kind != ca.KindServer && is.Kind != ca.KindEnrol {
			return nil
		}
	}
	return errors.New("unknown unit: the fleet CA issued no valid certificate to this key")
}

// PatientAddr is where the patient web listens ("" if it does not).
func (s *Service) PatientAddr() string {
	a, _ := s.patientAddr.Load().(string)
	return a
}

// CADir is the fleet CA folder fleetd uses.
func (s *Service) CADir() string { return s.cfg.CADir }

// WriteScheduleKeySteps (fleetd -schedule-key) makes fleetd's schedule key if it has none and prints
// the two steps that move a fleet onto it, in the order that loses no
// schedule: the units first (they take the fleet key's schedules
// meanwhile), then fleetd.
func WriteScheduleKeySteps(cfg *Config, stdout io.Writer) error {
	path := cfg.ScheduleKey
	if path == "" {
		path = cfg.DefaultScheduleKey()
	}
	priv, _, err := fleet.LoadOrCreateScheduleKey(path)
	if err != nil {
		return err
	}
	pub := priv.Public().(ed25519.PublicKey)
	fmt.Fprintf(stdout, "# fleetd's schedule key %s, kept in %s\n", fleet.KeyID(pub), path)
	fmt.Fprintf(stdout, "# 1. add this line to the [fleet] table of the units' fleet config, and push it:\n%s\n", ScheduleKeysLine(pub))
	if cfg.ScheduleKey == "" {
		fmt.Fprintf(stdout, "# 2. then set this at the top of fleetd.toml and restart fleetd:\nschedule_key = %q\n", path)
	} else {
		fmt.Fprintf(stdout, "# fleetd.toml's schedule_key names it: fleetd signs schedules with it\n")
	}
	return nil
}
