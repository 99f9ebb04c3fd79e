package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Push results, the "result" of each unit in push's output.
const (
	resApplied    = "applied"     // runs the config (config_applied, or its reported versions say so)
	resDeferred   = "deferred"    // verified and stored; applies when the current call ends
	resRejected   = "rejected"    // refused it whole; reason and message say why
	resRolledBack = "rolled_back" // applied it, then went back to its last known good by itself
	resOffline    = "offline"     // offline per its retained status; it gets the config on reconnect
	resNeverSeen  = "never_seen"  // no status or reported document on the broker at all
	resNoAnswer   = "no_answer"   // online, but said nothing about the config within --wait
	resRevoked    = "revoked"     // the CA's ledger (--ca-dir) marks it revoked: it will not connect again
)

// pushResult is one unit's answer to a push.
type pushResult struct {
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

	received time.Time // when fleetctl learnt the result (benchmarks)
}

// final reports whether r is an answer that no later message can improve.
func (r *pushResult) final() bool {
	switch r.Result {
	case resApplied, resRejected, resRolledBack:
		return true
	}
	return false
}

// answered reports whether waiting longer for r is pointless: it answered,
// or it is not connected.
func (r *pushResult) answered() bool { return r.Result != resNoAnswer }

func push(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("push")
	keyPath := fs.String("key", "", "the fleet signing key (fleet.key from fleetctl keygen)")
	tf := addTargetFlags(fs)
	version := fs.String("version", "", "config version for this target, above the one the units run")
	expires := fs.Duration("expires", 168*time.Hour, "how long units accept the envelope; a unit that comes online later needs it re-signed")
	urgent := fs.Bool("urgent", false, "apply during a call too, instead of when the call ends")
	envFile := fs.String("envelope", "", "push this envelope from fleetctl sign instead of signing a config file")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the units' answers (0: publish and return)")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	caDir := fs.String("ca-dir", "", "the fleet CA directory, to name revoked units as such and leave them out of the exit status [$FLEETCTL_CA_DIR]")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	revoked, err := revokedUnits("push", *caDir)
	if err != nil {
		return err
	}
	var e fleet.Envelope
	var p fleet.ConfigPayload
	if *envFile != "" {
		if len(pos) > 0 || *keyPath != "" || *version != "" || *tf.device != "" || *tf.group != "" {
			return errors.New("push: --envelope carries its own target, version and signature: drop --key, --device, --group, --version and the config file")
		}
		if e, p, err = readConfigEnvelope(*envFile); err != nil {
			return fmt.Errorf("push: %w", err)
		}
	} else {
		if len(pos) != 1 {
			return errors.New("push: give exactly one config file: fleetctl push --key fleet.key --group NAME --version N config.toml")
		}
		if e, p, err = signConfigFile(env, "push", *keyPath, tf, *version, *expires, *urgent, pos[0]); err != nil {
			return err
		}
	}
	if *wait < 0 {
		return errors.New("push: --wait must be 0 or more, e.g. 30s")
	}
	if err := bs.resolve("push"); err != nil {
		return err
	}

	t := link.Topics{Prefix: bs.Prefix}
	topic := t.DeviceConfig(p.Target.Device)
	if p.Target.Group != "" {
		topic = t.GroupConfig(p.Target.Group)
	}
	fc, err := dialFleet(ctx, bs, env.log, topic, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported), t.AllDevices(link.DeviceEvents))
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	defer fc.Close()
	view := newFleetView()
	var retained []byte
	if err := fc.Sync(ctx, func(m fleetMsg) {
		if m.Topic == topic {
			retained = m.Payload
		}
		view.feed(m)
	}); err != nil {
		return fmt.Errorf("push: %w", err)
	}
	raw := e.Marshal()
	if err := checkNotStale(p, raw, retained, view); err != nil {
		return fmt.Errorf("push: %w", err)
	}

	job := &pushJob{payload: p, topic: topic, envelope: raw, wait: *wait, prog: newProgress(env.stderr, time.Now()), revoked: revoked}
	results, err := job.run(ctx, fc, view, newDedup(1<<16))
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	if *wait == 0 {
		// Nobody was asked yet: a table would say "no answer" for every
		// unit. fleetctl status shows who has it later.
		fmt.Fprintf(env.stderr, "published version %d for %s (retained) to %d units; not waiting for answers: see fleetctl status\n", p.Version, p.Target, len(results))
		return nil
	}
	if len(results) == 0 && p.Target.Group != "" {
		fmt.Fprintf(env.stderr, "no unit has reported being in group %s yet: the config is retained on the broker, and units of the group apply it when they connect\n", p.Target.Group)
	}
	if *asJSON {
		if results == nil {
			results = []pushResult{}
		}
		if err := writeJSON(env.stdout, results); err != nil {
			return fmt.Errorf("push: %w", err)
		}
	} else if len(results) > 0 {
		rows := make([][]string, 0, len(results))
		for _, r := range results {
			res, detail := describeResult(r)
			rows = append(rows, []string{r.Unit, res, versionCell(r.Version), clock(r.At), detail})
		}
		if err := table(env.stdout, []string{"UNIT", "RESULT", "VERSION", "AT", "DETAIL"}, rows); err != nil {
			return fmt.Errorf("push: %w", err)
		}
	}
	return pushOutcome(p, results)
}

// pushOutcome is push's exit status: an error unless every unit applied the
// config or will once its call ends. A revoked unit never will, and nothing
// the fleet manager does about the config changes that: it does not count.
func pushOutcome(p fleet.ConfigPayload, results []pushResult) error {
	counts := map[string]int{}
	bad := 0
	for _, r := range results {
		counts[r.Result]++
		if r.Result != resApplied && r.Result != resDeferred && r.Result != resRevoked {
			bad++
		}
	}
	if bad == 0 {
		return nil
	}
	var parts []string
	for _, k := range []string{resRejected, resRolledBack, resNoAnswer, resOffline, resNeverSeen} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], strings.ReplaceAll(k, "_", " ")))
		}
	}
	if counts[resRevoked] > 0 {
		parts = append(parts, fmt.Sprintf("%d revoked, not counted", counts[resRevoked]))
	}
	msg := fmt.Sprintf("version %d for %s: %d of %d units did not apply it (%s)", p.Version, p.Target, bad, len(results), strings.Join(parts, ", "))
	if counts[resOffline]+counts[resNeverSeen]+counts[resNoAnswer] > 0 {
		msg += "; the config stays retained, so units that are away apply it when they connect: check with fleetctl status"
	} else {
		msg += ": see the reasons above, fix the config and push a higher version"
	}
	return errors.New(msg)
}

// describeResult is a result's short cell and its detail, the last column.
func describeResult(r pushResult) (result, detail string) {
	switch r.Result {
	case resApplied:
		return "applied", ""
	case resDeferred:
		return "deferred", "in a call: applies when the call ends"
	case resRejected:
		return "rejected: " + r.Reason, oneLine(r.Message)
	case resRolledBack:
		return "rolled back", oneLine(r.Reason)
	case resOffline:
		return "offline", "gets it when it reconnects (AT: last seen)"
	case resNeverSeen:
		return "never seen", "no unit with this id has connected to this broker"
	case resNoAnswer:
		return "no answer", "online, but said nothing within --wait; a newly approved unit: is it in the broker's ACL (fleetctl acl, then reload Mosquitto)?"
	case resRevoked:
		return "revoked", revokedNote(r.At, r.Message)
	}
	return r.Result, ""
}

func versionCell(v uint64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatUint(v, 10)
}

// readConfigEnvelope reads an envelope written by fleetctl sign. Its
// signature is the units' business (fleetctl holds no public key); the
// payload is read only to learn the target and version.
func readConfigEnvelope(path string) (fleet.Envelope, fleet.ConfigPayload, error) {
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

// checkNotStale refuses a push that units would refuse as stale_version.
// Publishing it would also replace the retained, newer config on the
// broker: a unit that connects later would then get the old one.
// Publishing the very envelope that is already retained is allowed (it
// heals a broker that lost its retained store), and so is a new envelope
// with the version of one that every unit refused.
func checkNotStale(p fleet.ConfigPayload, envelope, retained []byte, view *fleetView) error {
	key := p.Target.Key()
	if have := retainedVersion(retained); have > p.Version {
		return fmt.Errorf("the broker holds version %d for %s, above %d: sign with --version %d or higher", have, p.Target, p.Version, have+1)
	}
	if bytes.Equal(bytes.TrimSpace(retained), envelope) {
		return nil
	}
	for _, u := range view.sorted() {
		if u.Reported == nil || (p.Target.Device != "" && u.ID != p.Target.Device) || (p.Target.Group != "" && !u.inGroup(p.Target.Group)) {
			continue
		}
		if have := u.Reported.Versions[key]; have >= p.Version {
			return fmt.Errorf("unit %s already runs version %d for %s, so it would refuse version %d: sign with --version %d or higher", u.ID, have, p.Target, p.Version, have+1)
		}
	}
	return nil
}

// pushJob publishes one config and follows the affected units' answers.
type pushJob struct {
	payload  fleet.ConfigPayload
	topic    string
	envelope []byte
	wait     time.Duration
	prog     *progress

	published time.Time
	results   map[string]*pushResult
	order     []string
	// before holds each unit's last rejection and rollback as they were
	// when the job started: those are answers to earlier pushes.
	before map[string]priorAnswers
	// revoked are the units the CA's ledger marks revoked (nil without
	// --ca-dir).
	revoked map[string]*ca.Unit
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

// run publishes the envelope (retained), then feeds every message to view
// and the job until each affected unit has answered or is away, or wait
// has passed. Units are those of the target: for a group, the units whose
// reported document lists it, as seen at publish time.
func (j *pushJob) run(ctx context.Context, fc *fleetClient, view *fleetView, dd *dedup) ([]pushResult, error) {
	j.results = map[string]*pushResult{}
	j.before = map[string]priorAnswers{}
	j.order = nil
	for _, u := range view.sorted() {
		if j.payload.Target.Device == u.ID || (j.payload.Target.Group != "" && u.inGroup(j.payload.Target.Group)) {
			j.order = append(j.order, u.ID)
		}
	}
	if d := j.payload.Target.Device; d != "" && len(j.order) == 0 {
		j.order = append(j.order, d)
	}
	// fleetctl revoke clears a revoked unit's documents; the ledger still
	// knows its groups.
	for _, id := range revokedFor(j.revoked, j.payload.Target.Device, j.payload.Target.Group) {
		if !slices.Contains(j.order, id) {
			j.order = append(j.order, id)
		}
	}
	slices.Sort(j.order)
	j.published = time.Now()
	for _, id := range j.order {
		j.results[id] = &pushResult{Unit: id, Result: resNoAnswer}
		if rep := view.unit(id).Reported; rep != nil {
			j.before[id] = priorAnswers{rep.LastRejection, rep.LastRollback}
		}
		j.updateFromView(view.unit(id), time.Now())
	}
	if err := fc.Publish(ctx, j.topic, true, j.envelope); err != nil {
		return nil, err
	}
	if j.wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, j.wait)
		defer cancel()
		for !j.settled() {
			j.prog.update(j.count())
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
				continue
			}
			j.handle(m, view, dd)
		}
		j.prog.done(j.count())
	}
	out := make([]pushResult, 0, len(j.order))
	for _, id := range j.order {
		out = append(out, *j.results[id])
	}
	return out, nil
}

func (j *pushJob) settled() bool {
	for _, r := range j.results {
		if !r.answered() {
			return false
		}
	}
	return true
}

func (j *pushJob) count() (done, total int, detail string) {
	counts := map[string]int{}
	for _, r := range j.results {
		counts[r.Result]++
		if r.answered() {
			done++
		}
	}
	var parts []string
	for _, k := range []string{resApplied, resDeferred, resRejected, resRolledBack, resOffline, resNeverSeen} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], strings.ReplaceAll(k, "_", " ")))
		}
	}
	return done, len(j.results), strings.Join(parts, ", ")
}

func (j *pushJob) handle(m fleetMsg, view *fleetView, dd *dedup) {
	if view.feed(m) {
		if r := j.results[m.Unit]; r != nil {
			j.updateFromView(view.unit(m.Unit), m.at)
		}
		return
	}
	ev, ok := parseEvent(m)
	if !ok || !dd.first(ev.Unit+"/"+ev.ID) {
		return
	}
	r := j.results[ev.Unit]
	if r == nil {
		return
	}
	view.unit(ev.Unit).seen(ev.At)
	key, v := j.payload.Target.Key(), j.payload.Version
	switch ev.Type {
	case fleet.EventConfigApplied, fleet.EventConfigDeferred:
		var d fleet.ConfigApplied
		if json.Unmarshal(ev.Data, &d) != nil || d.Target != key || d.Version != v {
			return
		}
		if r.final() {
			return
		}
		r.Result = resDeferred
		if ev.Type == fleet.EventConfigApplied {
			r.Result = resApplied
			r.Version = v
		}
		r.Generation, r.At, r.received = d.Generation, ev.At, m.at
	case fleet.EventConfigRejected:
		var d fleet.Rejection
		if json.Unmarshal(ev.Data, &d) != nil || d.Target != key || !j.ours(d.Version, ev.At) || r.final() {
			return
		}
		r.Result, r.Reason, r.Message, r.At, r.received = resRejected, d.Reason, d.Message, ev.At, m.at
	case fleet.EventConfigRolledBack:
		var d fleet.Rollback
		if json.Unmarshal(ev.Data, &d) != nil || d.Versions[key] != v {
			return
		}
		r.Result, r.Reason, r.Message, r.At, r.received = resRolledBack, d.Reason, "", ev.At, m.at
		r.Generation = d.ToGeneration
	}
}

// ours reports whether a rejection of version v at time at is about this
// push. A unit that cannot read the envelope at all reports version 0; that
// counts if it happened after the publish (allowing for clock skew between
// the unit and this machine).
func (j *pushJob) ours(v uint64, at time.Time) bool {
	if v == j.payload.Version {
		return true
	}
	return v == 0 && !at.Before(j.published.Add(-fleet.DefaultSkew))
}

// updateFromView derives a unit's result from its retained documents: they
// catch up on answers whose events fleetctl missed (it connected after them,
// or lost its connection) and say who is offline.
func (j *pushJob) updateFromView(u *unitView, arrived time.Time) {
	r := j.results[u.ID]
	if rv := j.revoked[u.ID]; rv != nil {
		r.Result, r.At, r.Message = resRevoked, rv.Decided, rv.Reason
		return
	}
	key, v := j.payload.Target.Key(), j.payload.Version
	if rep := u.Reported; rep != nil {
		r.Version = rep.Versions[key]
		prior := j.before[u.ID]
		if rb := rep.LastRollback; rb != nil && rb.Versions[key] == v && !sameRollback(rb, prior.rollback) {
			r.Result, r.Reason, r.Message, r.At, r.Generation, r.received = resRolledBack, rb.Reason, "", rb.At, rb.ToGeneration, arrived
			return
		}
		if r.final() {
			return
		}
		if rep.Versions[key] >= v && r.Result != resDeferred {
			// A unit in a call stores a config that is not urgent and
			// counts its version before it runs it; config_applied
			// follows when the call ends.
			r.Result = resApplied
			if rep.Deferred {
				r.Result = resDeferred
			}
			r.Generation, r.At, r.received = rep.Generation, rep.At, arrived
			return
		}
		if rj := rep.LastRejection; rj != nil && rj.Target == key && (rj.Version == v || rj.Version == 0) && !sameRejection(rj, prior.rejection) {
			r.Result, r.Reason, r.Message, r.At, r.received = resRejected, rj.Reason, rj.Message, rj.At, arrived
			return
		}
	}
	if r.final() || r.Result == resDeferred {
		return
	}
	switch {
	case u.Status == nil && u.Reported == nil:
		r.Result = resNeverSeen
	case !u.online():
		r.Result, r.At = resOffline, u.Seen
	default:
		r.Result, r.At = resNoAnswer, time.Time{}
	}
}
