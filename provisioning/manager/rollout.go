package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Rollout unit results.
const (
	RollPending = "pending" // not sent yet (a later wave)
	RollSent    = "sent"    // the unit took the command; waiting for it to report
	RollGood    = "good"    // it reports the version booted and marked good
	RollFailed  = "failed"  // refused, install failed or rolled back
	RollTimeout = "timeout" // no verdict within the wave's timeout
)

// DefaultWaves are fleetctl rollout's waves: one canary, then 5 %, 25 %
// and the rest.
var DefaultWaves = []string{"1", "5%", "25%", "100%"}

// Rollout is a system update sent to a group in waves. It is kept in a
// state file after every step, so a stopped or interrupted rollout resumes
// where it stood.
type Rollout struct {
	Group  string           `json:"group"`
	Update fleet.UpdateArgs `json:"update"`
	Waves  []string         `json:"waves"`
	// Threshold is the fraction of a wave that may fail (after the first
	// wave, where any failure stops the rollout).
	Threshold float64       `json:"threshold"`
	Units     []RolloutUnit `json:"units"`
	// Stopped says why the rollout stopped; Done that every wave is good.
	Stopped string    `json:"stopped,omitempty"`
	Done    bool      `json:"done,omitempty"`
	Started time.Time `json:"started"`
}

// RolloutUnit is one unit of a rollout.
type RolloutUnit struct {
	Unit   string    `json:"unit"`
	Wave   int       `json:"wave"` // from 1
	Result string    `json:"result"`
	Detail string    `json:"detail,omitempty"`
	Sent   time.Time `json:"sent,omitzero"`
	At     time.Time `json:"at,omitzero"`
}

// PlanRollout puts units (in order) into waves: each wave is a count
// ("1") or a share of the whole ("5%"), cumulative, and takes at least one
// unit more than the one before while units remain.
func PlanRollout(units []string, waves []string) ([]RolloutUnit, error) {
	if len(units) == 0 {
		return nil, errors.New("no units to update")
	}
	var out []RolloutUnit
	upto := 0
	for i, w := range waves {
		n, err := waveSize(w, len(units))
		if err != nil {
			return nil, err
		}
		if n <= upto {
			n = upto + 1
		}
		if i == len(waves)-1 {
			n = len(units)
		}
		n = min(n, len(units))
		for _, u := range units[upto:n] {
			out = append(out, RolloutUnit{Unit: u, Wave: i + 1, Result: RollPending})
		}
		upto = n
		if upto == len(units) {
			break
		}
	}
	return out, nil
}

func waveSize(w string, total int) (int, error) {
	if p, ok := strings.CutSuffix(w, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f <= 0 || f > 100 {
			return 0, fmt.Errorf("wave %q: a share is 1%% to 100%%", w)
		}
		return int(math.Ceil(f / 100 * float64(total))), nil
	}
	n, err := strconv.Atoi(w)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("wave %q: give a number of units (1) or a share (5%%)", w)
	}
	return n, nil
}

// RolloutOptions is how RunRollout sends and waits.
type RolloutOptions struct {
	Key         string        // the fleet signing key file
	WaveTimeout time.Duration // how long a wave's units have to report good
	Save        func(*Rollout) error
	// Progress is told each unit's result as it comes (nil: nothing).
	Progress func(RolloutUnit)
	Now      func() time.Time
}

// RunRollout runs r's waves from the first that is not all good, saving r
// after each step, and stops on its own when a wave fails: any failure in
// the first wave, or more than r.Threshold of a later one.
func RunRollout(ctx context.Context, b Broker, log *slog.Logger, r *Rollout, o RolloutOptions) error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Progress == nil {
		o.Progress = func(RolloutUnit) {}
	}
	r.Stopped = ""
	last := 0
	for _, u := range r.Units {
		last = max(last, u.Wave)
	}
	for w := 1; w <= last; w++ {
		idx := r.wave(w)
		if r.allGood(idx) {
			continue
		}
		if err := r.send(ctx, b, log, idx, o); err != nil {
			return err
		}
		if err := r.watch(ctx, b, log, idx, o); err != nil {
			return err
		}
		bad := 0
		for _, i := range idx {
			if r.Units[i].Result != RollGood {
				bad++
			}
		}
		if bad > 0 && (w == 1 || float64(bad)/float64(len(idx)) > r.Threshold) {
			r.Stopped = fmt.Sprintf("wave %d: %d of %d units failed or timed out (allowed: %s)", w, bad, len(idx), allowed(w, r.Threshold))
			if err := o.Save(r); err != nil {
				return err
			}
			return fmt.Errorf("rollout stopped: %s; fix the cause and run it again with --resume", r.Stopped)
		}
	}
	r.Done = true
	return o.Save(r)
}

func allowed(w int, th float64) string {
	if w == 1 {
		return "none in the first wave"
	}
	return fmt.Sprintf("%g%%", th*100)
}

func (r *Rollout) wave(w int) []int {
	var idx []int
	for i, u := range r.Units {
		if u.Wave == w {
			idx = append(idx, i)
		}
	}
	return idx
}

func (r *Rollout) allGood(idx []int) bool {
	for _, i := range idx {
		if r.Units[i].Result != RollGood {
			return false
		}
	}
	return true
}

// send gives every unit of the wave that is not good its signed command
// (again, on a resumed wave), all at once on one connection.
func (r *Rollout) send(ctx context.Context, b Broker, log *slog.Logger, idx []int, o RolloutOptions) error {
	var cmds []SignedCommand
	byUnit := map[string]*RolloutUnit{}
	for _, i := range idx {
		u := &r.Units[i]
		if u.Result == RollGood {
			continue
		}
		e, p, err := SignCommandFile(o.Key, fleet.Target{Device: u.Unit}, fleet.CommandUpdate, fleet.UpdateArgsJSON(r.Update), time.Hour, o.Now())
		if err != nil {
			return fmt.Errorf("rollout: %w", err)
		}
		cmds = append(cmds, SignedCommand{Envelope: e, Payload: p})
		byUnit[u.Unit] = u
	}
	if len(cmds) == 0 {
		return nil
	}
	sent := o.Now().UTC()
	for _, u := range byUnit {
		u.Sent, u.Result, u.Detail = sent, RollSent, ""
	}
	// Saved before the send: a rollout killed mid-wave resumes knowing
	// these units may have the command.
	if err := o.Save(r); err != nil {
		return err
	}
	res, err := SendCommands(ctx, b, log, cmds, 15*time.Second, nil)
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	for _, c := range res {
		u := byUnit[c.Unit]
		if u == nil {
			continue
		}
		switch c.Result {
		case ResRefused:
			u.Result, u.Detail, u.At = RollFailed, "refused: "+c.Reason+": "+c.Message, c.At
		case ResDone:
			u.Detail = c.Message
		default: // offline units find it in their session
			u.Detail = strings.ReplaceAll(c.Result, "_", " ")
		}
		o.Progress(*u)
	}
	return o.Save(r)
}

// watch follows the wave's reported documents until each unit is good or
// failed, or the wave times out.
func (r *Rollout) watch(ctx context.Context, b Broker, log *slog.Logger, idx []int, o RolloutOptions) error {
	t := link.Topics{Prefix: b.Prefix}
	fc, err := Dial(ctx, b, log, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported))
	if err != nil {
		return err
	}
	defer fc.Close()
	view := NewView()
	if err := fc.Sync(ctx, func(m Msg) { view.Feed(m) }); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, o.WaveTimeout)
	defer cancel()
	for {
		open := 0
		for _, i := range idx {
			u := &r.Units[i]
			if u.Result != RollSent {
				continue
			}
			if res, detail := r.verdict(view.Unit(u.Unit), u.Sent); res != "" {
				u.Result, u.Detail, u.At = res, detail, o.Now().UTC()
				o.Progress(*u)
				if err := o.Save(r); err != nil {
					return err
				}
				continue
			}
			open++
		}
		if open == 0 {
			return nil
		}
		nctx, ncancel := context.WithTimeout(wctx, 200*time.Millisecond)
		m, err := fc.Next(nctx)
		ncancel()
		if err == nil {
			view.Feed(m)
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if wctx.Err() != nil {
			for _, i := range idx {
				if u := &r.Units[i]; u.Result == RollSent {
					u.Result, u.Detail, u.At = RollTimeout, "no verdict within "+o.WaveTimeout.String(), o.Now().UTC()
					o.Progress(*u)
				}
			}
			return o.Save(r)
		}
	}
}

// verdict reads a unit's reported update state: good once it runs the
// version marked good, failed when it rolled it back or konsult-update
// recorded a failure after the command was sent.
func (r *Rollout) verdict(u *Unit, sent time.Time) (string, string) {
	if u.Reported == nil || u.Reported.Update == nil {
		return "", ""
	}
	st, v := u.Reported.Update, r.Update.Version
	if rb := st.RolledBack; rb != nil && rb.Version == v && !before(rb.At, sent) {
		return RollFailed, "rolled back: " + rb.Reason
	}
	if st.BootedVersion == v && st.PendingVersion == "" {
		return RollGood, "slot " + st.BootedSlot
	}
	if st.LastFailure != "" && st.PendingVersion == "" {
		if st.LastFailureAt != "" && !before(st.LastFailureAt, sent) {
			return RollFailed, st.LastFailure
		}
	}
	return "", ""
}

// before says whether konsult-update's stamp (RFC 3339) is from before
// the command was sent: a verdict of an earlier attempt. An unreadable
// stamp counts as current.
func before(stamp string, sent time.Time) bool {
	at, err := time.Parse(time.RFC3339, stamp)
	return err == nil && at.Before(sent.Truncate(time.Second))
}
