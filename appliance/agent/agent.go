package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/configstore"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Appliance is what the agent needs of the unit: *appliance.Machine, or
// appliance/unit's Appliance, which follows the machine across re-opens.
type Appliance interface {
	Do(ctx context.Context, a appliance.Action, source string) error
	Identify(ctx context.Context, d time.Duration) error
	Subscribe(buf int) (<-chan appliance.Event, func())
	Status() appliance.Status
}

// Connection is how the unit reaches its fleet under one config.
type Connection struct {
	// Link is the MQTT link. Its DeviceID and Groups are the unit's
	// identity for targeting and merging; StoreDir defaults to
	// <StateDir>/link.
	Link link.Options
	// ConfirmTimeout is how long a newly applied config has to reach the
	// broker before the unit rolls it back (DefaultConfirmTimeout if 0).
	ConfirmTimeout time.Duration
}

// DefaultConfirmTimeout is Connection.ConfirmTimeout's default.
const DefaultConfirmTimeout = 60 * time.Second

// MaxPendingBoots is how often roomd may start on a config it never
// confirmed before the agent rolls it back at startup: a config that
// crashes roomd before it reaches the broker must not keep the unit in a
// crash loop.
const MaxPendingBoots = 3

// Options configures an Agent.
type Options struct {
	// StateDir holds the config store (<StateDir>/config) and, unless the
	// link says otherwise, the link's outgoing queue (<StateDir>/link).
	StateDir string
	// Keys are the pinned fleet public keys.
	Keys []ed25519.PublicKey
	// Connection is how to reach the fleet with no fleet config applied.
	Connection Connection
	// ConnectionFor, if set, derives the connection from an effective fleet
	// config (TOML; empty for none), so a config can move the unit to
	// another broker. It must keep the DeviceID and Groups.
	ConnectionFor func(effective []byte) (Connection, error)
	// Validate checks an effective fleet config (the merge of every stored
	// target's config with the new one) the way roomd will read it. Its
	// error may quote values; the agent cuts them out before reporting.
	Validate func(effective []byte) error
	// Apply makes the unit run on an effective fleet config (empty: none,
	// the local config only). It is called from New for the stored config
	// and then for each change; the agent has already waited for a call to
	// end unless the config was urgent. An error rolls the config back.
	Apply func(effective []byte) error
	// Unit, if set, is what Validate and Apply go through: a config is
	// read and checked once by the Unit and handed to it as a config, and
	// the connection under it is Connection with the config's [fleet]
	// settings (connectionUnder). Validate, Apply and ConnectionFor are
	// then unused.
	Unit Unit
	// DemoBroker is the broker when a config names none (roomd --sim's
	// embedded demo); empty: such a config is refused, as a fleet config
	// cannot switch the fleet off.
	DemoBroker string
	// Appliance carries out join, leave and identify and is the source of
	// the unit's events. Nil: a unit without one (a benchmark); those
	// commands then fail and configs never wait for a call.
	Appliance Appliance
	// Reboot restarts roomd (the reboot command), after the agent has
	// reported the command done. Nil: the command fails.
	Reboot func()
	// Version is roomd's software version, for status and events.
	Version string
	// Doctor runs the unit's self-check for the doctor command. Nil: the
	// command fails.
	Doctor func(context.Context) []fleet.DoctorCheck
	// Identity, if set, is the unit's own certificate (enrolment): it is
	// reported, renewed through the certificate command, and nil for a
	// unit provisioned with certificate files by hand.
	Identity Identity
	// Audit, if set, is the unit's audit log: the agent records what it
	// decides and what the appliance and identity report, and ships the
	// records to the fleet (audit.go).
	Audit *audit.Log
	// PrivacyReport makes the unit's privacy report for the
	// privacy-report command (nil: the command fails).
	PrivacyReport func(context.Context) any
	// CallE2EE says whether a call just joined is end-to-end encrypted:
	// "true", "false" or "unknown" (nil: unknown), for the audit log.
	CallE2EE func() string
	// Update, if set, is the unit's update folder and reboot policy for
	// the update command (update.go); nil: the command fails.
	Update *UpdateOptions
	Logger *slog.Logger
}

// Identity is the unit's enrolled identity as the agent sees it.
type Identity interface {
	// Report is the identity part of the reported document, with a
	// renewal request when the certificate is due for one.
	Report() *fleet.IdentityReport
	// InstallCertificate checks a renewed certificate (this unit, this
	// key, the pinned CA, valid now) and installs it for the next connect.
	InstallCertificate(certPEM string) error
}

// Agent is the unit's side of the fleet. Create with New, then Run.
type Agent struct {
	opts     Options
	log      *slog.Logger
	id       fleet.Identity
	store    *configstore.Store
	verifier *fleet.Verifier
	nonces   *fleet.NonceStore
	redact   *redactor

	// Owned by the goroutine running Run (and New before it).
	link        *link.Link
	conn        Connection
	startup     fleet.Started
	deferred    []byte // an effective config stored but waiting for the call to end
	deferredFor fleet.ConfigApplied
	confirm     *time.Timer // running while a config awaits confirmation
	updSeen     string      // konsult-update's state as last reported (update.go)

	mu            sync.Mutex // guards what Reported and Connected read
	lastRejection *fleet.Rejection
	lastRollback  *fleet.Rollback
	up            bool
	isDeferred    bool
	upd           updateRecord

	refresh chan struct{} // RefreshReported asks Run to publish

	aud       auditState // owned by Run
	rec       recorder   // writes the audit log (recorder.go)
	auditSent uint64     // guarded by mu: aud.sent for Reported
}

// New opens the config store and brings the unit up on the config it
// holds, through Options.Apply. If roomd came up on a config it never
// confirmed more than MaxPendingBoots times, or Apply fails with the stored
// config, the agent rolls back to the last known good first. Nothing
// touches the network until Run.
func New(opts Options) (*Agent, error) {
	if opts.Unit != nil {
		opts.withUnit()
	}
	if opts.Apply == nil {
		return nil, errors.New("fleet agent: no Apply callback: roomd must say how to run a config")
	}
	if opts.StateDir == "" {
		return nil, errors.New("fleet agent: no state directory: set fleet.state_dir")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	id := fleet.Identity{Device: opts.Connection.Link.DeviceID, Groups: slices.Clone(opts.Connection.Link.Groups)}
	v, err := fleet.NewVerifier(id, opts.Keys...)
	if err != nil {
		return nil, fmt.Errorf("fleet agent: %w", err)
	}
	store, err := configstore.Open(filepath.Join(opts.StateDir, "config"))
	if err != nil {
		return nil, fmt.Errorf("fleet agent: %w", err)
	}
	a := &Agent{
		opts:     opts,
		log:      opts.Logger.With("component", "fleet"),
		id:       id,
		store:    store,
		verifier: v,
		nonces:   fleet.NewNonceStore(store.Nonces(), store.SaveNonces),
		redact:   newRedactor(),
		refresh:  make(chan struct{}, 1),
	}
	a.rec = recorder{log: opts.Audit, logger: a.log, callE2EE: opts.CallE2EE}
	if err := a.boot(); err != nil {
		store.Close()
		return nil, err
	}
	a.loadAudit()
	a.auditSent = a.aud.sent
	a.loadUpdate()
	return a, nil
}

// boot applies the stored config, rolling back where it must.
func (a *Agent) boot() error {
	su := a.store.Startup()
	a.startup = fleet.Started{Pending: su.Pending != nil, Version: a.opts.Version}
	a.redact.add(a.store.Current().Config)
	if lkg, ok := a.store.LastKnownGood(); ok {
		a.redact.add(lkg.Config)
	}
	if su.TornWrites > 0 {
		a.log.Warn("config store: discarded an interrupted write from before a crash; running on the state before it", "torn_writes", su.TornWrites)
	}
	if su.Pending != nil && su.Pending.Boots > MaxPendingBoots {
		reason := fmt.Sprintf("roomd started %d times on this config without reaching the broker with it", su.Pending.Boots)
		if err := a.store.Rollback(reason); err != nil {
			return fmt.Errorf("fleet agent: %w", err)
		}
		a.startup.RolledBack = true
		a.log.Warn("rolled back to the last known good config at startup", "reason", reason)
	}
	cur := a.store.Current()
	conn, err := a.connectionFor([]byte(cur.Config))
	if err == nil {
		err = a.opts.Apply([]byte(cur.Config))
	}
	if err != nil {
		if _, pending := a.store.Pending(); !pending && cur.Config == "" {
			return fmt.Errorf("fleet agent: the unit cannot run on its local config: %s", a.redact.text(err.Error()))
		}
		reason := "roomd could not run the stored config: " + a.redact.text(err.Error())
		a.log.Error("stored fleet config does not run; rolling back", "err", a.redact.text(err.Error()))
		if rerr := a.store.Rollback(reason); rerr != nil {
			return fmt.Errorf("fleet agent: %s; and rolling back failed: %w", reason, rerr)
		}
		a.startup.RolledBack = true
		cur = a.store.Current()
		if conn, err = a.connectionFor([]byte(cur.Config)); err == nil {
			err = a.opts.Apply([]byte(cur.Config))
		}
		if err != nil {
			return fmt.Errorf("fleet agent: the last known good config does not run either: %s: fix the unit's local config", a.redact.text(err.Error()))
		}
	}
	a.conn = conn
	a.startup.Generation = a.store.Generation()
	a.startup.Versions = cur.Versions
	if r, ok := a.store.LastRollback(); ok {
		a.setRollback(r)
	}
	return nil
}

// connectionFor is the connection under an effective config, checked to
// keep the unit's identity.
func (a *Agent) connectionFor(effective []byte) (Connection, error) {
	c := a.opts.Connection
	if a.opts.ConnectionFor != nil {
		var err error
		if c, err = a.opts.ConnectionFor(effective); err != nil {
			return c, fmt.Errorf("fleet connection: %w", err)
		}
	}
	if c.Link.DeviceID != a.id.Device || !slices.Equal(c.Link.Groups, a.id.Groups) {
		return c, errors.New("fleet connection: a config cannot change the unit's device id or groups: set them in the unit's local config")
	}
	if c.Link.StoreDir == "" {
		c.Link.StoreDir = filepath.Join(a.opts.StateDir, "link")
	}
	if c.Link.Logger == nil {
		c.Link.Logger = a.opts.Logger
	}
	if c.ConfirmTimeout <= 0 {
		c.ConfirmTimeout = DefaultConfirmTimeout
	}
	a.trustScheduleKeys(effective)
	return c, nil
}

// trustScheduleKeys tells the verifier the fleet.schedule_keys of the
// config about to run, so that a config or command signed by one (fleetd's
// key, which signs schedules only) is refused as wrong_role, naming the
// key's role, rather than as a key the unit never heard of.
func (a *Agent) trustScheduleKeys(effective []byte) {
	var doc struct {
		Fleet struct {
			ScheduleKeys []string `toml:"schedule_keys"`
		} `toml:"fleet"`
	}
	var keys []ed25519.PublicKey
	_, err := toml.Decode(string(effective), &doc)
	for i := 0; err == nil && i < len(doc.Fleet.ScheduleKeys); i++ {
		var k ed25519.PublicKey
		if k, err = fleet.ParseScheduleKey(doc.Fleet.ScheduleKeys[i]); err == nil {
			keys = append(keys, k)
		}
	}
	if err == nil {
		err = a.verifier.SetScheduleKeys(keys)
	}
	if err != nil {
		a.log.Warn("fleet.schedule_keys not taken", "err", err)
	}
}

// Run connects to the fleet and acts on it until ctx ends, then closes the
// link (announcing the unit offline) and the store.
func (a *Agent) Run(ctx context.Context) error {
	defer a.store.Close()
	var events <-chan appliance.Event
	if a.opts.Appliance != nil {
		// The machine drops a subscriber's oldest event when its buffer is
		// full; the audit log is written from these events, so the agent's
		// buffer is deep enough for any burst a person can press (60
		// PRIVACY toggles back to back overflowed 64).
		ch, cancel := a.opts.Appliance.Subscribe(4096)
		defer cancel()
		events = ch
	}
	var auditC <-chan struct{}
	if a.opts.Audit != nil {
		auditC = a.opts.Audit.Notify()
	}
	if err := a.openLink(); err != nil {
		return err
	}
	defer func() { a.link.Close() }()
	a.publish(fleet.EventStarted, a.startup)
	if a.startup.RolledBack {
		a.reportRollback()
	}
	if _, pending := a.store.Pending(); pending {
		a.armConfirm()
	}
	a.publishState()
	a.auditIdentity(nil)
	a.shipAudit()
	var updateC <-chan time.Time
	if a.opts.Update != nil {
		poll := a.opts.Update.Poll
		if poll <= 0 {
			poll = DefaultUpdatePoll
		}
		t := time.NewTicker(poll)
		defer t.Stop()
		updateC = t.C
		a.checkUpdate()
	}

	for {
		var confirmC <-chan time.Time
		if a.confirm != nil {
			confirmC = a.confirm.C
		}
		select {
		case <-ctx.Done():
			a.stopConfirm()
			return nil
		case m, ok := <-a.link.Messages():
			if !ok {
				return errors.New("fleet agent: link closed underneath the agent")
			}
			a.handle(ctx, m)
		case s, ok := <-a.link.States():
			if !ok {
				return errors.New("fleet agent: link closed underneath the agent")
			}
			a.onConn(s)
		case <-confirmC:
			a.confirm = nil
			a.onConfirmTimeout()
		case <-a.refresh:
			a.auditIdentity(nil)
			a.publishReported()
		case <-auditC:
			a.shipAudit()
		case <-updateC:
			a.checkUpdate()
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			a.onApplianceEvent(ev)
		}
	}
}

func (a *Agent) openLink() error {
	o := a.conn.Link
	o.Status = a.statusNow()
	l, err := link.Open(o)
	if err != nil {
		return fmt.Errorf("fleet agent: %w", err)
	}
	a.mu.Lock() // PublishTokenRequest reads it from other goroutines
	a.link = l
	a.mu.Unlock()
	a.setUp(false)
	return nil
}

// relink moves to conn's link if it differs from the current one. The old
// link is closed first: both use the same queue directory.
func (a *Agent) relink(conn Connection) error {
	same := reflect.DeepEqual(withoutStatus(conn.Link), withoutStatus(a.conn.Link))
	a.conn = conn
	if same {
		return nil
	}
	a.log.Info("fleet connection settings changed: reconnecting")
	a.link.Close()
	return a.openLink()
}

// withoutStatus is the part of o that, when it changes, needs a new
// connection. Hooks are left out: a func is never DeepEqual to another (not
// even to itself), so an enrolled unit, whose link always has an
// OnConnectError, reconnected after every config it applied, and a command
// sent right after a push found it offline.
func withoutStatus(o link.Options) link.Options {
	o.Status = link.Status{}
	o.OnConnectError = nil
	o.OnToken, o.OnSchedule = nil, nil
	o.Logger = nil
	return o
}

func (a *Agent) onConn(s link.ConnState) {
	a.setUp(s.Up)
	a.auditIdentity(s.Err)
	if !s.Up {
		return
	}
	a.shipAudit()
	if _, pending := a.store.Pending(); pending && a.deferred == nil {
		a.stopConfirm()
		if err := a.store.Confirm(); err != nil {
			a.log.Error("could not mark the config good; it stays pending and is confirmed at the next connect", "err", err)
			return
		}
		a.log.Info("config confirmed: the broker was reached with it", "generation", a.store.Generation())
		a.publishReported()
	}
}

func (a *Agent) handle(ctx context.Context, m link.Message) {
	switch m.Kind {
	case link.DeviceConfig, link.GroupConfig:
		a.handleConfig(m)
	case link.DeviceCmd, link.GroupCmd:
		a.handleCommand(ctx, m)
	}
}

func topicKey(m link.Message, device string) string {
	if m.Kind == link.GroupConfig || m.Kind == link.GroupCmd {
		return fleet.Target{Group: m.Group}.Key()
	}
	return fleet.Target{Device: device}.Key()
}

func (a *Agent) setUp(up bool) {
	a.mu.Lock()
	a.up = up
	a.mu.Unlock()
}

// Connected says whether the unit is connected to its fleet broker and
// subscribed. Safe to call from any goroutine.
func (a *Agent) Connected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.up
}
