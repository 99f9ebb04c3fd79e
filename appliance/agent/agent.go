package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/konsult/konsult/appliance"
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
	Logger   *slog.Logger
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

	mu            sync.Mutex // guards what Reported and Connected read
	lastRejection *fleet.Rejection
	lastRollback  *fleet.Rollback
	up            bool
	isDeferred    bool

	refresh chan struct{} // RefreshReported asks Run to publish
}

// RefreshReported republishes the reported document (the identity asks
// for a renewal). Safe from any goroutine.
func (a *Agent) RefreshReported() {
	select {
	case a.refresh <- struct{}{}:
	default:
	}
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
	if err := a.boot(); err != nil {
		store.Close()
		return nil, err
	}
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
	return c, nil
}

// Run connects to the fleet and acts on it until ctx ends, then closes the
// link (announcing the unit offline) and the store.
func (a *Agent) Run(ctx context.Context) error {
	defer a.store.Close()
	var events <-chan appliance.Event
	if a.opts.Appliance != nil {
		ch, cancel := a.opts.Appliance.Subscribe(64)
		defer cancel()
		events = ch
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
			a.publishReported()
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
	a.link = l
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
	o.Logger = nil
	return o
}

func (a *Agent) onConn(s link.ConnState) {
	a.setUp(s.Up)
	if !s.Up {
		return
	}
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

// armConfirm starts the wait for the broker after a config change.
func (a *Agent) armConfirm() {
	a.stopConfirm()
	if a.link.Connected() {
		a.onConn(link.ConnState{Up: true, At: time.Now()})
		return
	}
	a.confirm = time.NewTimer(a.conn.ConfirmTimeout)
}

func (a *Agent) stopConfirm() {
	if a.confirm != nil {
		a.confirm.Stop()
		a.confirm = nil
	}
}

func (a *Agent) onConfirmTimeout() {
	if a.link.Connected() {
		a.onConn(link.ConnState{Up: true, At: time.Now()})
		return
	}
	reason := fmt.Sprintf("the unit did not reach its broker within %s with the new config", a.conn.ConfirmTimeout)
	a.rollback(reason)
}

// rollback returns to the last known good config and runs it.
func (a *Agent) rollback(reason string) {
	reason = a.redact.text(reason)
	a.log.Warn("rolling back to the last known good config", "reason", reason)
	if err := a.store.Rollback(reason); err != nil {
		a.log.Error("rollback failed; staying on the current config", "err", err)
		return
	}
	a.setDeferred(nil, fleet.ConfigApplied{})
	cur := a.store.Current()
	conn, err := a.connectionFor([]byte(cur.Config))
	if err == nil {
		err = a.opts.Apply([]byte(cur.Config))
	}
	if err != nil {
		// The last known good ran before; something outside the fleet
		// config changed. Keep the link as it is so the fleet can fix it.
		a.log.Error("the last known good config does not run either: fix the unit's local config", "err", a.redact.text(err.Error()))
	} else if err := a.relink(conn); err != nil {
		a.log.Error("reconnecting with the last known good settings failed", "err", err)
	}
	a.reportRollback()
}

// reportRollback publishes the store's last rollback. The record stays in
// the store for good (until the next rollback replaces it): after a
// restart the reported document must still say that the unit runs its last
// known good and not the versions it lists. The event is queued on disk at
// once, so it survives a restart too.
func (a *Agent) reportRollback() {
	r, ok := a.store.LastRollback()
	if !ok {
		return
	}
	a.publish(fleet.EventConfigRolledBack, a.setRollback(r))
	a.publishState()
}

func (a *Agent) setRollback(r configstore.RollbackRecord) fleet.Rollback {
	rb := fleet.Rollback{FromGeneration: r.FromGeneration, ToGeneration: r.ToGeneration,
		Reason: a.redact.text(r.Reason), Versions: r.Versions, At: r.At}
	a.mu.Lock()
	a.lastRollback = &rb
	a.mu.Unlock()
	return rb
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

func (a *Agent) handleConfig(m link.Message) {
	key := topicKey(m, a.id.Device)
	if len(m.Payload) == 0 {
		// An empty retained message clears the topic on the broker. It is
		// not signed, so it cannot remove a config from the unit.
		a.log.Info("the fleet cleared a retained config; the unit keeps the one it applied", "target", key)
		return
	}
	cur := a.store.Current()
	if bytes.Equal(cur.Envelopes[key], m.Payload) {
		// The broker hands retained configs over again on every reconnect.
		a.log.Debug("config already applied", "target", key)
		return
	}
	c, err := a.verifier.VerifyConfig(m.Payload, cur.Versions, nil)
	if err == nil && c.Target.Key() != key {
		err = &fleet.Error{Reason: fleet.ReasonWrongTarget, Msg: fmt.Sprintf(
			"a config for %s arrived on the topic of %s: publish each config on its own target's topic (fleetctl push does)", c.Target, key)}
	}
	if fleet.ReasonOf(err) == fleet.ReasonStaleVersion && a.wasRolledBack(key, m.Payload, cur) {
		a.log.Info("ignoring the retained config the unit rolled back; publish a higher version to try again", "target", key)
		return
	}
	var eff []byte
	if err == nil {
		a.redact.add(c.Config)
		eff, err = a.merged(cur, key, c.Config)
	}
	if err != nil {
		a.reject(key, m.Payload, err)
		return
	}
	next := configstore.State{
		Config:    string(eff),
		Envelopes: maps.Clone(cur.Envelopes),
		Versions:  maps.Clone(cur.Versions),
	}
	if next.Envelopes == nil {
		next.Envelopes = map[string][]byte{}
	}
	if next.Versions == nil {
		next.Versions = map[string]uint64{}
	}
	next.Envelopes[key] = c.Envelope
	next.Versions[key] = c.Version
	if err := a.store.Apply(next); err != nil {
		a.reject(key, m.Payload, &fleet.Error{Reason: "apply", Msg: fmt.Sprintf("the unit could not store the config (%v): check its storage; nothing was applied", err)})
		return
	}
	done := fleet.ConfigApplied{Target: key, Version: c.Version, Generation: a.store.Generation(), Urgent: c.Urgent}
	a.log.Info("config accepted", "target", key, "version", c.Version, "generation", done.Generation, "urgent", c.Urgent)
	if !c.Urgent && a.busy() {
		a.stopConfirm() // the previous change, if any, is superseded
		a.setDeferred(eff, done)
		a.publish(fleet.EventConfigDeferred, done)
		a.publishReported()
		return
	}
	a.activate(eff, done)
}

// merged is the effective config with toml as target key's layer,
// validated by roomd.
func (a *Agent) merged(cur configstore.State, key, toml string) ([]byte, error) {
	layers := map[string][]byte{}
	for k, env := range cur.Envelopes {
		if p, err := payloadOf(env); err == nil {
			layers[k] = []byte(p.Config)
		}
	}
	layers[key] = []byte(toml)
	eff, err := fleet.Effective(a.id, layers)
	if err != nil {
		return nil, &fleet.Error{Reason: fleet.ReasonSchema, Msg: a.redact.text(err.Error()) + ": fix it and sign a new version"}
	}
	if a.opts.Validate != nil {
		if err := a.opts.Validate(eff); err != nil {
			msg := a.redact.text(fleet.RedactValues(err.Error(), eff))
			return nil, &fleet.Error{Reason: fleet.ReasonSchema, Msg: "config refused by the unit's schema: " + msg + ": fix it and sign a new version"}
		}
	}
	return eff, nil
}

// wasRolledBack says whether env is the config for key that the unit
// rolled back: its version is the applied one (a rollback keeps it) but
// the stored envelope for key is older.
func (a *Agent) wasRolledBack(key string, env []byte, cur configstore.State) bool {
	p, err := payloadOf(env)
	if err != nil || p.Version != cur.Versions[key] {
		return false
	}
	stored, err := payloadOf(cur.Envelopes[key])
	return err != nil || stored.Version < p.Version
}

// payloadOf reads a config envelope without verifying it: for envelopes
// the store holds (verified when they arrived) and for reporting a version.
func payloadOf(env []byte) (fleet.ConfigPayload, error) {
	var p fleet.ConfigPayload
	e, err := fleet.ParseEnvelope(env)
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		return p, fmt.Errorf("config payload: %w", err)
	}
	return p, nil
}

func (a *Agent) reject(key string, env []byte, err error) {
	r := fleet.Rejection{Target: key, Reason: string(fleet.ReasonOf(err)), At: time.Now().UTC()}
	var fe *fleet.Error
	if errors.As(err, &fe) {
		r.Message = a.redact.text(fe.Msg)
	} else {
		r.Reason = string(fleet.ReasonInternal)
		r.Message = "the unit could not check the config: see its log"
		a.log.Error("checking a config failed", "target", key, "err", a.redact.text(err.Error()))
	}
	if p, perr := payloadOf(env); perr == nil {
		r.Version = p.Version
	}
	a.log.Warn("config rejected", "target", key, "version", r.Version, "reason", r.Reason, "message", r.Message)
	a.mu.Lock()
	a.lastRejection = &r
	a.mu.Unlock()
	a.publish(fleet.EventConfigRejected, r)
	a.publishReported()
}

// busy says whether a config change has to wait: the unit is in a call or
// on its way into or out of one.
func (a *Agent) busy() bool {
	if a.opts.Appliance == nil {
		return false
	}
	switch a.opts.Appliance.Status().State {
	case appliance.Joining, appliance.InCall, appliance.Leaving:
		return true
	}
	return false
}

// activate hands a stored config to roomd and waits for the broker.
func (a *Agent) activate(eff []byte, done fleet.ConfigApplied) {
	a.setDeferred(nil, fleet.ConfigApplied{})
	conn, err := a.connectionFor(eff)
	if err == nil {
		err = a.opts.Apply(eff)
	}
	if err != nil {
		a.rollback("roomd could not run the config: " + err.Error())
		return
	}
	a.log.Info("config applied", "target", done.Target, "version", done.Version, "generation", done.Generation)
	a.publish(fleet.EventConfigApplied, done)
	if err := a.relink(conn); err != nil {
		a.rollback("the unit could not connect with the config's fleet settings: " + err.Error())
		return
	}
	a.publishState()
	a.armConfirm()
}

func (a *Agent) handleCommand(ctx context.Context, m link.Message) {
	res := peekCommand(m.Payload)
	c, err := a.verifier.VerifyCommand(m.Payload, a.nonces)
	if err != nil {
		res.Reason = string(fleet.ReasonOf(err))
		var fe *fleet.Error
		if errors.As(err, &fe) {
			res.Message = a.redact.text(fe.Msg)
		}
		a.log.Warn("command refused", "name", res.Name, "reason", res.Reason, "message", res.Message)
		a.publish(fleet.EventCommandRefused, res)
		return
	}
	res = fleet.CommandResult{Name: c.Name, Nonce: c.Nonce}
	checks, err := a.run(ctx, c)
	for _, ch := range checks {
		res.Checks = append(res.Checks, fleet.DoctorCheck{Name: ch.Name, OK: ch.OK, Detail: a.redact.text(ch.Detail), Fix: a.redact.text(ch.Fix)})
	}
	if err != nil {
		res.Reason, res.Message = "failed", a.redact.text(err.Error())
		a.log.Warn("command failed", "name", c.Name, "err", res.Message)
		a.publish(fleet.EventCommandRefused, res)
		return
	}
	a.log.Info("command done", "name", c.Name)
	a.publish(fleet.EventCommandDone, res)
	if c.Name == fleet.CommandReboot {
		go a.opts.Reboot()
	}
}

// peekCommand reads the name and nonce of a command that may not verify,
// to say which command was refused. Only values that are valid names and
// nonces are echoed, so a forged command cannot put text into events.
func peekCommand(env []byte) fleet.CommandResult {
	var out fleet.CommandResult
	e, err := fleet.ParseEnvelope(env)
	if err != nil {
		return out
	}
	var p fleet.CommandPayload
	if json.Unmarshal(e.Payload, &p) != nil {
		return out
	}
	switch p.Name {
	case fleet.CommandJoin, fleet.CommandLeave, fleet.CommandIdentify, fleet.CommandReboot, fleet.CommandReportNow, fleet.CommandCertificate, fleet.CommandDoctor:
		out.Name = p.Name
	}
	if len(p.Nonce) == 32 && isLowerHex(p.Nonce) {
		out.Nonce = p.Nonce
	}
	return out
}

func isLowerHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// run carries out a verified command; doctor also returns its checks.
func (a *Agent) run(ctx context.Context, c *fleet.Command) ([]fleet.DoctorCheck, error) {
	if c.Name == fleet.CommandDoctor {
		if a.opts.Doctor == nil {
			return nil, errors.New("this unit has no self-check")
		}
		return a.opts.Doctor(ctx), nil
	}
	return nil, a.do(ctx, c)
}

func (a *Agent) do(ctx context.Context, c *fleet.Command) error {
	ap := a.opts.Appliance
	needsAppliance := c.Name == fleet.CommandJoin || c.Name == fleet.CommandLeave || c.Name == fleet.CommandIdentify
	if needsAppliance && ap == nil {
		return fmt.Errorf("this unit has no appliance to %s", c.Name)
	}
	switch c.Name {
	case fleet.CommandJoin:
		// JOIN toggles on the unit's button; a fleet join must not hang up.
		switch ap.Status().State {
		case appliance.Joining, appliance.InCall:
			return nil
		case appliance.Leaving:
			return errors.New("the unit is hanging up a call: send join again in a few seconds")
		}
		return ap.Do(ctx, appliance.ActJoin, "fleet")
	case fleet.CommandLeave:
		return ap.Do(ctx, appliance.ActLeave, "fleet")
	case fleet.CommandIdentify:
		return ap.Identify(ctx, time.Duration(c.Parsed.Seconds)*time.Second)
	case fleet.CommandReboot:
		if a.opts.Reboot == nil {
			return errors.New("this unit cannot restart on command")
		}
		return nil // after command_done is queued
	case fleet.CommandReportNow:
		a.publishState()
		return nil
	case fleet.CommandCertificate:
		if a.opts.Identity == nil {
			return errors.New("this unit was given its certificate by hand (fleet.cert_file), not by enrolment: replace the file on the unit")
		}
		if err := a.opts.Identity.InstallCertificate(c.Parsed.Certificate); err != nil {
			return err
		}
		a.publishReported()
		return nil
	}
	return fmt.Errorf("unknown command %q", c.Name)
}

func (a *Agent) onApplianceEvent(ev appliance.Event) {
	t := a.redact.text
	switch ev.Type {
	case "state":
		a.publish(fleet.EventState, fleet.State{State: string(ev.State)})
		a.publishStatus()
		if a.deferred != nil && !a.busy() {
			eff, done := a.deferred, a.deferredFor
			a.activate(eff, done)
		}
	case "call":
		switch ev.Detail {
		case "joined":
			a.publish(fleet.EventCallJoined, fleet.Call{Meeting: ev.Meeting})
		case "left":
			a.publish(fleet.EventCallLeft, fleet.Call{Meeting: ev.Meeting, Reason: t(ev.Reason)})
		case "leave":
			a.publish(fleet.EventFault, fleet.Fault{Source: "call", Reason: t(ev.Reason)})
		}
	case "fault":
		switch ev.Detail {
		case "shutter":
			a.publish(fleet.EventShutterFault, fleet.Fault{Source: "shutter", Reason: t(ev.Reason)})
		case "camera":
			a.publish(fleet.EventCameraLost, fleet.Fault{Source: "camera", Reason: t(ev.Reason)})
		default:
			a.publish(fleet.EventFault, fleet.Fault{Source: ev.Detail, Reason: t(ev.Reason)})
		}
	case "fault_cleared":
		a.publish(fleet.EventFaultCleared, fleet.Fault{Source: ev.Detail, Reason: t(ev.Reason)})
	case "button":
		which, kind, _ := cutLast(ev.Detail, ":")
		a.publish(fleet.EventButton, fleet.Button{Which: which, Kind: kind})
	}
}

func cutLast(s, sep string) (string, string, bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

// publish queues an event; it reports whether it was queued.
func (a *Agent) publish(typ string, data any) bool {
	if _, err := a.link.PublishEvent(link.Event{Type: typ, Data: data}); err != nil {
		a.log.Warn("fleet event not queued", "type", typ, "err", err)
		return false
	}
	return true
}

func (a *Agent) statusNow() link.Status {
	st := link.Status{Version: a.opts.Version, ConfigGeneration: a.store.Generation(), At: time.Now().UTC()}
	if a.opts.Appliance != nil {
		st.State = string(a.opts.Appliance.Status().State)
	}
	return st
}

func (a *Agent) publishStatus() {
	if err := a.link.PublishStatus(a.statusNow()); err != nil {
		a.log.Warn("fleet status not published", "err", err)
	}
}

func (a *Agent) publishReported() {
	if err := a.link.PublishReported(a.Reported()); err != nil {
		a.log.Warn("fleet reported state not published", "err", err)
	}
}

func (a *Agent) publishState() {
	a.publishStatus()
	a.publishReported()
}

func (a *Agent) setDeferred(eff []byte, done fleet.ConfigApplied) {
	a.deferred, a.deferredFor = eff, done
	a.mu.Lock()
	a.isDeferred = eff != nil
	a.mu.Unlock()
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

// Reported is the unit's reported document as of now. Safe to call from
// any goroutine (roomd's local status shows it).
func (a *Agent) Reported() fleet.ReportedDoc {
	cur := a.store.Current()
	_, pending := a.store.Pending()
	d := fleet.ReportedDoc{
		Device:     a.id.Device,
		Groups:     slices.Clone(a.id.Groups),
		Versions:   cur.Versions,
		Generation: a.store.Generation(),
		Pending:    pending,
		At:         time.Now().UTC(),
	}
	if d.Groups == nil {
		d.Groups = []string{}
	}
	if d.Versions == nil {
		d.Versions = map[string]uint64{}
	}
	if a.opts.Identity != nil {
		d.Identity = a.opts.Identity.Report()
	}
	a.mu.Lock()
	d.Deferred = a.isDeferred
	if a.lastRejection != nil {
		r := *a.lastRejection
		d.LastRejection = &r
	}
	if a.lastRollback != nil {
		r := *a.lastRollback
		d.LastRollback = &r
	}
	a.mu.Unlock()
	return d
}
