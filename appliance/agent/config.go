package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/provisioning/configstore"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

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

func (a *Agent) setDeferred(eff []byte, done fleet.ConfigApplied) {
	a.deferred, a.deferredFor = eff, done
	a.mu.Lock()
	a.isDeferred = eff != nil
	a.mu.Unlock()
}
