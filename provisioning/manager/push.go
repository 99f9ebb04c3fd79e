package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Push results, the "result" of each unit in push's output.
const (
	ResApplied    = "applied"     // runs the config (config_applied, or its reported versions say so)
	ResDeferred   = "deferred"    // verified and stored; applies when the current call ends
	ResRejected   = "rejected"    // refused it whole; reason and message say why
	ResRolledBack = "rolled_back" // applied it, then went back to its last known good by itself
	ResOffline    = "offline"     // offline per its retained status; it gets the config on reconnect
	ResNeverSeen  = "never_seen"  // no status or reported document on the broker at all
	ResNoAnswer   = "no_answer"   // online, but said nothing about the config within --wait
	ResRevoked    = "revoked"     // the CA's ledger (--ca-dir) marks it revoked: it will not connect again
)

// PushResult is one unit's answer to a push.
type PushResult struct {
	Unit   string `json:"unit"`
	Result string `json:"result"`
	// Reason and Message explain a rejection or rollback.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Version is the version the unit runs for the pushed target now (0: none).
	Version    uint64 `json:"version"`
	Generation uint64 `json:"generation,omitempty"`
	// At is the unit's time of its answer, or its last sign of life for
	// offline units.
	At time.Time `json:"at,omitzero"`

	// Received is when the fleet manager learnt the result (benchmarks).
	Received time.Time `json:"-"`
}

// final reports whether r is an answer that no later message can improve.
func (r *PushResult) final() bool {
	switch r.Result {
	case ResApplied, ResRejected, ResRolledBack:
		return true
	}
	return false
}

// answered reports whether waiting longer for r is pointless: it answered,
// or it is not connected.
func (r *PushResult) answered() bool { return r.Result != ResNoAnswer }

// Progress is told how many units have answered while a job waits for
// them, and once more when it stops waiting.
type Progress interface {
	Update(done, total int, detail string)
	Done(done, total int, detail string)
}

type noProgress struct{}

func (noProgress) Update(int, int, string) {}
func (noProgress) Done(int, int, string)   {}

// PushOptions is one push: a signed config envelope and its payload (for
// the target and version), how long to wait for the units' answers (0:
// publish and return), and the units the CA's ledger marks revoked.
type PushOptions struct {
	Envelope fleet.Envelope
	Payload  fleet.ConfigPayload
	Wait     time.Duration
	Revoked  map[string]*ca.Unit
	Progress Progress
}

// Push publishes a config (retained) and follows the units' answers: see
// PushJob. It refuses, before publishing, a version units would refuse as
// stale (CheckNotStale).
func Push(ctx context.Context, b Broker, log *slog.Logger, o PushOptions) ([]PushResult, error) {
	p := o.Payload
	t := link.Topics{Prefix: b.Prefix}
	topic := t.DeviceConfig(p.Target.Device)
	if p.Target.Group != "" {
		topic = t.GroupConfig(p.Target.Group)
	}
	fc, err := Dial(ctx, b, log, topic, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported), t.AllDevices(link.DeviceEvents))
	if err != nil {
		return nil, err
	}
	defer fc.Close()
	view := NewView()
	var retained []byte
	if err := fc.Sync(ctx, func(m Msg) {
		if m.Topic == topic {
			retained = m.Payload
		}
		view.Feed(m)
	}); err != nil {
		return nil, err
	}
	raw := o.Envelope.Marshal()
	if err := CheckNotStale(p, raw, retained, view); err != nil {
		return nil, err
	}
	job := &PushJob{Payload: p, Topic: topic, Envelope: raw, Wait: o.Wait, Progress: o.Progress, Revoked: o.Revoked}
	return job.Run(ctx, fc, view, NewDedup(1<<16))
}

// PushOutcome is push's exit status: an error unless every unit applied the
// config or will once its call ends. A revoked unit never will, and nothing
// the fleet manager does about the config changes that: it does not count.
func PushOutcome(p fleet.ConfigPayload, results []PushResult) error {
	counts := map[string]int{}
	bad, unknownKey := 0, 0
	for _, r := range results {
		counts[r.Result]++
		if r.Result == ResRejected && r.Reason == string(fleet.ReasonUnknownKey) {
			unknownKey++
		}
		if r.Result != ResApplied && r.Result != ResDeferred && r.Result != ResRevoked {
			bad++
		}
	}
	if bad == 0 {
		return nil
	}
	var parts []string
	for _, k := range []string{ResRejected, ResRolledBack, ResNoAnswer, ResOffline, ResNeverSeen} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], strings.ReplaceAll(k, "_", " ")))
		}
	}
	if counts[ResRevoked] > 0 {
		parts = append(parts, fmt.Sprintf("%d revoked, not counted", counts[ResRevoked]))
	}
	msg := fmt.Sprintf("version %d for %s: %d of %d units did not apply it (%s)", p.Version, p.Target, bad, len(results), strings.Join(parts, ", "))
	switch {
	case counts[ResRejected] > 0:
		// The refused envelope replaced the retained config: a unit that
		// connects later gets it, not the one before, and refuses it too.
		msg += "; the refused config stays retained on the broker, so units that connect later get it and refuse it too"
		if unknownKey > 0 {
			msg += fmt.Sprintf(": %d refused its signature (unknown_key), so push a higher version signed with the key the units trust (the fleet.key in the CA folder that enrolled them, --ca-dir)", unknownKey)
		} else {
			msg += ": see the reasons above, fix the config and push a higher version"
		}
	case counts[ResOffline]+counts[ResNeverSeen]+counts[ResNoAnswer] > 0:
		msg += "; the config stays retained, so units that are away apply it when they connect: check with fleetctl status"
	default:
		msg += ": see the reasons above, fix the config and push a higher version"
	}
	return errors.New(msg)
}

// ReadConfigEnvelope reads an envelope written by fleetctl sign. Its
// signature is the units' business (fleetctl holds no public key); the
// payload is read only to learn the target and version.
func ReadConfigEnvelope(path string) (fleet.Envelope, fleet.ConfigPayload, error) {
	var p fleet.ConfigPayload
	b, err := os.ReadFile(path)
	if err != nil {
		return fleet.Envelope{}, p, fmt.Errorf("read envelope: %w", err)
	}
	e, err := fleet.ParseEnvelope(bytes.TrimSpace(b))
	if err != nil {
		return fleet.Envelope{}, p, fmt.Errorf("%s: %w", path, err)
	}
	if err := json.Unmarshal(e.Payload, &p); err != nil || p.Kind != fleet.KindConfig {
		return fleet.Envelope{}, p, fmt.Errorf("%s is not a signed config: push an envelope written by fleetctl sign (commands go with fleetctl cmd)", path)
	}
	if err := p.Target.Validate(); err != nil || p.Version == 0 {
		return fleet.Envelope{}, p, fmt.Errorf("%s: the payload has no valid target or version: sign it again with fleetctl sign", path)
	}
	return e, p, nil
}

// retainedVersion reads the version of a retained config envelope, 0 if
// there is none or it cannot be read.
func retainedVersion(b []byte) uint64 {
	e, err := fleet.ParseEnvelope(b)
	if err != nil {
		return 0
	}
	var p fleet.ConfigPayload
	if json.Unmarshal(e.Payload, &p) != nil {
		return 0
	}
	return p.Version
}

// CheckNotStale refuses a push that units would refuse as stale_version.
// Publishing it would also replace the retained, newer config on the
// broker: a unit that connects later would then get the old one.
// Publishing the very envelope that is already retained is allowed (it
// heals a broker that lost its retained store), and so is a new envelope
// with the version of one that every unit refused.
func CheckNotStale(p fleet.ConfigPayload, envelope, retained []byte, view *View) error {
	key := p.Target.Key()
	if have := retainedVersion(retained); have > p.Version {
		return fmt.Errorf("the broker holds version %d for %s, above %d: sign with --version %d or higher", have, p.Target, p.Version, have+1)
	}
	if bytes.Equal(bytes.TrimSpace(retained), envelope) {
		return nil
	}
	for _, u := range view.Sorted() {
		if u.Reported == nil || (p.Target.Device != "" && u.ID != p.Target.Device) || (p.Target.Group != "" && !u.InGroup(p.Target.Group)) {
			continue
		}
		if have := u.Reported.Versions[key]; have >= p.Version {
			return fmt.Errorf("unit %s already runs version %d for %s, so it would refuse version %d: sign with --version %d or higher", u.ID, have, p.Target, p.Version, have+1)
		}
	}
	return nil
}

// PushJob publishes one config and follows the affected units' answers.
type PushJob struct {
	Payload  fleet.ConfigPayload
	Topic    string
	Envelope []byte
	Wait     time.Duration
	Progress Progress // nil: none
	// Revoked are the units the CA's ledger marks revoked (nil without a
	// CA folder).
	Revoked map[string]*ca.Unit

	published time.Time
	results   map[string]*PushResult
	order     []string
	// before holds each unit's last rejection and rollback as they were
	// when the job started: those are answers to earlier pushes.
	before map[string]priorAnswers
}

type priorAnswers struct {
	rejection *fleet.Rejection
	rollback  *fleet.Rollback
}

func sameRejection(a, b *fleet.Rejection) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Target == b.Target && a.Version == b.Version && a.Reason == b.Reason && a.At.Equal(b.At)
}

func sameRollback(a, b *fleet.Rollback) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.FromGeneration == b.FromGeneration && a.ToGeneration == b.ToGeneration && a.At.Equal(b.At)
}

// Run publishes the envelope (retained), then feeds every message to view
// and the job until each affected unit has answered or is away, or wait
// has passed. Units are those of the target: for a group, the units whose
// reported document lists it, as seen at publish time.
func (j *PushJob) Run(ctx context.Context, fc *Client, view *View, dd *Dedup) ([]PushResult, error) {
	j.results = map[string]*PushResult{}
	j.before = map[string]priorAnswers{}
	j.order = nil
	for _, u := range view.Sorted() {
		if j.Payload.Target.Device == u.ID || (j.Payload.Target.Group != "" && u.InGroup(j.Payload.Target.Group)) {
			j.order = append(j.order, u.ID)
		}
	}
	if d := j.Payload.Target.Device; d != "" && len(j.order) == 0 {
		j.order = append(j.order, d)
	}
	// fleetctl revoke clears a revoked unit's documents; the ledger still
	// knows its groups.
	for _, id := range RevokedFor(j.Revoked, j.Payload.Target.Device, j.Payload.Target.Group) {
		if !slices.Contains(j.order, id) {
			j.order = append(j.order, id)
		}
	}
	slices.Sort(j.order)
	j.published = time.Now()
	for _, id := range j.order {
		j.results[id] = &PushResult{Unit: id, Result: ResNoAnswer}
		if rep := view.Unit(id).Reported; rep != nil {
			j.before[id] = priorAnswers{rep.LastRejection, rep.LastRollback}
		}
		j.updateFromView(view.Unit(id), time.Now())
	}
	if err := fc.Publish(ctx, j.Topic, true, j.Envelope); err != nil {
		return nil, err
	}
	if j.Wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, j.Wait)
		defer cancel()
		// settled and count walk every unit: at most every 50 ms (or when
		// the broker is quiet), not per message, which made a push to N
		// units cost N² (44 % of fleetctl's CPU at 10,000 units).
		var looked time.Time
		open := 0 // units not answered, kept per message: 0 looks at once
		for _, r := range j.results {
			if !r.answered() {
				open++
			}
		}
		for {
			if time.Since(looked) >= 50*time.Millisecond {
				if j.settled() {
					break
				}
				j.progress().Update(j.count())
				looked = time.Now()
			}
			nctx, ncancel := context.WithTimeout(wctx, 100*time.Millisecond)
			m, err := fc.Next(nctx)
			ncancel()
			if err != nil {
				if wctx.Err() != nil {
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					break // --wait is over: whoever has not answered is "no answer"
				}
				looked = time.Time{} // quiet: look now
				continue
			}
			was := j.answered(m.Unit)
			j.handle(m, view, dd)
			if !was && j.answered(m.Unit) {
				if open--; open <= 0 {
					looked = time.Time{}
				}
			}
		}
		j.progress().Done(j.count())
	}
	out := make([]PushResult, 0, len(j.order))
	for _, id := range j.order {
		out = append(out, *j.results[id])
	}
	return out, nil
}

// Published is when Run published the envelope.
func (j *PushJob) Published() time.Time { return j.published }

func (j *PushJob) progress() Progress {
	if j.Progress == nil {
		return noProgress{}
	}
	return j.Progress
}

func (j *PushJob) answered(unit string) bool {
	r := j.results[unit]
	return r != nil && r.answered()
}

func (j *PushJob) settled() bool {
	for _, r := range j.results {
		if !r.answered() {
			return false
		}
	}
	return true
}

func (j *PushJob) count() (done, total int, detail string) {
	counts := map[string]int{}
	for _, r := range j.results {
		counts[r.Result]++
		if r.answered() {
			done++
		}
	}
	var parts []string
	for _, k := range []string{ResApplied, ResDeferred, ResRejected, ResRolledBack, ResOffline, ResNeverSeen} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], strings.ReplaceAll(k, "_", " ")))
		}
	}
	return done, len(j.results), strings.Join(parts, ", ")
}

func (j *PushJob) handle(m Msg, view *View, dd *Dedup) {
	if view.Feed(m) {
		if r := j.results[m.Unit]; r != nil {
			j.updateFromView(view.Unit(m.Unit), m.At)
		}
		return
	}
	ev, ok := ParseEvent(m)
	if !ok || !dd.First(ev.Unit+"/"+ev.ID) {
		return
	}
	r := j.results[ev.Unit]
	if r == nil {
		return
	}
	view.Unit(ev.Unit).Saw(ev.At)
	key, v := j.Payload.Target.Key(), j.Payload.Version
	switch ev.Type {
	case fleet.EventConfigApplied, fleet.EventConfigDeferred:
		var d fleet.ConfigApplied
		if json.Unmarshal(ev.Data, &d) != nil || d.Target != key || d.Version != v {
			return
		}
		if r.final() {
			return
		}
		r.Result = ResDeferred
		if ev.Type == fleet.EventConfigApplied {
			r.Result = ResApplied
			r.Version = v
		}
		r.Generation, r.At, r.Received = d.Generation, ev.At, m.At
	case fleet.EventConfigRejected:
		var d fleet.Rejection
		if json.Unmarshal(ev.Data, &d) != nil || d.Target != key || !j.ours(d.Version, ev.At) || r.final() {
			return
		}
		r.Result, r.Reason, r.Message, r.At, r.Received = ResRejected, d.Reason, d.Message, ev.At, m.At
	case fleet.EventConfigRolledBack:
		var d fleet.Rollback
		if json.Unmarshal(ev.Data, &d) != nil || d.Versions[key] != v {
			return
		}
		r.Result, r.Reason, r.Message, r.At, r.Received = ResRolledBack, d.Reason, "", ev.At, m.At
		r.Generation = d.ToGeneration
	}
}

// ours reports whether a rejection of version v at time at is about this
// push. A unit that cannot read the envelope at all reports version 0; that
// counts if it happened after the publish (allowing for clock skew between
// the unit and this machine).
func (j *PushJob) ours(v uint64, at time.Time) bool {
	if v == j.Payload.Version {
		return true
	}
	return v == 0 && !at.Before(j.published.Add(-fleet.DefaultSkew))
}

// updateFromView derives a unit's result from its retained documents: they
// catch up on answers whose events fleetctl missed (it connected after them,
// or lost its connection) and say who is offline.
func (j *PushJob) updateFromView(u *Unit, arrived time.Time) {
	r := j.results[u.ID]
	if rv := j.Revoked[u.ID]; rv != nil {
		r.Result, r.At, r.Message = ResRevoked, rv.Decided, rv.Reason
		return
	}
	key, v := j.Payload.Target.Key(), j.Payload.Version
	if rep := u.Reported; rep != nil {
		r.Version = rep.Versions[key]
		prior := j.before[u.ID]
		if rb := rep.LastRollback; rb != nil && rb.Versions[key] == v && !sameRollback(rb, prior.rollback) {
			r.Result, r.Reason, r.Message, r.At, r.Generation, r.Received = ResRolledBack, rb.Reason, "", rb.At, rb.ToGeneration, arrived
			return
		}
		if r.final() {
			return
		}
		if rep.Versions[key] >= v && r.Result != ResDeferred {
			// A unit in a call stores a config that is not urgent and
			// counts its version before it runs it; config_applied
			// follows when the call ends.
			r.Result = ResApplied
			if rep.Deferred {
				r.Result = ResDeferred
			}
			r.Generation, r.At, r.Received = rep.Generation, rep.At, arrived
			return
		}
		if rj := rep.LastRejection; rj != nil && rj.Target == key && (rj.Version == v || rj.Version == 0) && !sameRejection(rj, prior.rejection) {
			r.Result, r.Reason, r.Message, r.At, r.Received = ResRejected, rj.Reason, rj.Message, rj.At, arrived
			return
		}
	}
	if r.final() || r.Result == ResDeferred {
		return
	}
	switch {
	case u.Status == nil && u.Reported == nil:
		r.Result = ResNeverSeen
	case !u.Online():
		r.Result, r.At = ResOffline, u.Seen
	default:
		r.Result, r.At = ResNoAnswer, time.Time{}
	}
}
