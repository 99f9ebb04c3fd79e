package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Command results, the "result" of each unit in cmd's output.
const (
	resDone    = "done"    // verified and carried out (join/leave: requested)
	resRefused = "refused" // refused; reason and message say why
)

// cmdResult is one unit's answer to a command.
type cmdResult struct {
	Unit    string    `json:"unit"`
	Result  string    `json:"result"` // done, refused, offline, never_seen, no_answer
	Reason  string    `json:"reason,omitempty"`
	Message string    `json:"message,omitempty"`
	At      time.Time `json:"at,omitzero"`
	// Checks: the unit's self-check (doctor only).
	Checks []fleet.DoctorCheck `json:"checks,omitempty"`
}

func sendCommand(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("cmd")
	keyPath := fs.String("key", "", "the fleet signing key (fleet.key from fleetctl keygen)")
	tf := addTargetFlags(fs)
	seconds := fs.Int("seconds", 0, "identify: how long the unit blinks its LED (1-300; default 10)")
	expires := fs.Duration("expires", 5*time.Minute, "how long units accept the command (at most 1h); an offline unit runs it if it is back before then")
	wait := fs.Duration("wait", 10*time.Second, "how long to wait for the units' answers (0: send and return)")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) != 1 {
		return errors.New("cmd: give exactly one command name: join, leave, identify, reboot, report-now or doctor")
	}
	if *wait < 0 {
		return errors.New("cmd: --wait must be 0 or more, e.g. 10s")
	}
	e, p, err := signCommandArgs(env, "cmd", *keyPath, tf, pos[0], fs, *seconds, *expires)
	if err != nil {
		return err
	}
	if err := bs.resolve("cmd"); err != nil {
		return err
	}
	t := link.Topics{Prefix: bs.Prefix}
	topic := t.DeviceCmd(p.Target.Device)
	if p.Target.Group != "" {
		topic = t.GroupCmd(p.Target.Group)
	}
	fc, err := dialFleet(ctx, bs, env.log, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported), t.AllDevices(link.DeviceEvents))
	if err != nil {
		return fmt.Errorf("cmd: %w", err)
	}
	defer fc.Close()
	view := newFleetView()
	if err := fc.Sync(ctx, func(m fleetMsg) { view.feed(m) }); err != nil {
		return fmt.Errorf("cmd: %w", err)
	}

	results := map[string]*cmdResult{}
	var order []string
	for _, u := range view.sorted() {
		if p.Target.Device == u.ID || (p.Target.Group != "" && u.inGroup(p.Target.Group)) {
			order = append(order, u.ID)
		}
	}
	if p.Target.Device != "" && len(order) == 0 {
		order = append(order, p.Target.Device)
	}
	for _, id := range order {
		results[id] = &cmdResult{Unit: id}
		presence(results[id], view.unit(id))
	}
	published := time.Now()
	// Not retained: a command is for now. A unit that is offline finds it
	// in its persistent session when it reconnects, and its expiry bounds
	// how late it may still run.
	if err := fc.Publish(ctx, topic, false, e.Marshal()); err != nil {
		return fmt.Errorf("cmd: %w", err)
	}
	if *wait == 0 {
		fmt.Fprintf(env.stderr, "sent %s to %s; not waiting for answers\n", p.Name, p.Target)
		return nil
	}

	prog := newProgress(env.stderr, published)
	settled := func() (done, total int, detail string) {
		n := 0
		for _, r := range results {
			if r.Result != resNoAnswer {
				n++
			}
		}
		return n, len(results), ""
	}
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	dd := newDedup(1 << 16)
	for {
		done, total, _ := settled()
		if done == total {
			break
		}
		prog.update(settled())
		nctx, ncancel := context.WithTimeout(wctx, 100*time.Millisecond)
		m, err := fc.Next(nctx)
		ncancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("cmd: %w", ctx.Err())
			}
			if wctx.Err() != nil {
				break
			}
			continue
		}
		if view.feed(m) {
			if r := results[m.Unit]; r != nil && r.Result != resDone && r.Result != resRefused {
				presence(r, view.unit(m.Unit))
			}
			continue
		}
		ev, ok := parseEvent(m)
		if !ok || !dd.first(ev.Unit+"/"+ev.ID) || (ev.Type != fleet.EventCommandDone && ev.Type != fleet.EventCommandRefused) {
			continue
		}
		r := results[ev.Unit]
		if r == nil {
			continue
		}
		var d fleet.CommandResult
		if json.Unmarshal(ev.Data, &d) != nil {
			continue
		}
		// A unit that could not read the command at all cannot name its
		// nonce; a refusal without one counts if it came after the send.
		if d.Nonce != p.Nonce && (d.Nonce != "" || ev.Type != fleet.EventCommandRefused || ev.At.Before(published.Add(-fleet.DefaultSkew))) {
			continue
		}
		r.Result, r.Reason, r.Message, r.At, r.Checks = resDone, "", "", ev.At, d.Checks
		if ev.Type == fleet.EventCommandRefused {
			r.Result, r.Reason, r.Message = resRefused, d.Reason, d.Message
		}
	}
	prog.done(settled())

	out := make([]cmdResult, 0, len(order))
	for _, id := range order {
		out = append(out, *results[id])
	}
	if *asJSON {
		if err := writeJSON(env.stdout, out); err != nil {
			return fmt.Errorf("cmd: %w", err)
		}
	} else if len(out) > 0 {
		rows := make([][]string, 0, len(out))
		for _, r := range out {
			res, detail := describeCmdResult(r, p)
			rows = append(rows, []string{r.Unit, res, clock(r.At), detail})
		}
		if err := table(env.stdout, []string{"UNIT", "RESULT", "AT", "DETAIL"}, rows); err != nil {
			return fmt.Errorf("cmd: %w", err)
		}
		if p.Name == fleet.CommandDoctor {
			printDoctor(env.stdout, out)
		}
	} else {
		fmt.Fprintf(env.stderr, "no unit has reported being in group %s: nobody got the command\n", p.Target.Group)
	}
	if err := cmdOutcome(p, out); err != nil {
		return err
	}
	return doctorOutcome(out)
}

// printDoctor writes each unit's self-check the way roomctl doctor does on
// the unit itself.
func printDoctor(w io.Writer, out []cmdResult) {
	for _, r := range out {
		if r.Result != resDone {
			continue
		}
		fmt.Fprintf(w, "\n%s\n", clean(r.Unit))
		for _, ch := range r.Checks {
			mark := "ok  "
			if !ch.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  %s  %-16s %s\n", mark, clean(ch.Name), oneLine(ch.Detail))
			if ch.Fix != "" {
				fmt.Fprintf(w, "        %-16s fix: %s\n", "", oneLine(ch.Fix))
			}
		}
	}
}

// doctorOutcome fails when any unit's self-check found a problem, as
// roomctl doctor does, so scripts can tell.
func doctorOutcome(out []cmdResult) error {
	var bad []string
	for _, r := range out {
		for _, ch := range r.Checks {
			if !ch.OK {
				bad = append(bad, r.Unit+": "+ch.Name)
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("doctor: %d check(s) failed (%s)", len(bad), strings.Join(bad, ", "))
	}
	return nil
}

// presence sets a unit that has not answered to offline, never seen or no
// answer from its retained documents.
func presence(r *cmdResult, u *unitView) {
	switch {
	case u.Status == nil && u.Reported == nil:
		r.Result = resNeverSeen
	case !u.online():
		r.Result, r.At = resOffline, u.Seen
	default:
		r.Result, r.At = resNoAnswer, time.Time{}
	}
}

// describeCmdResult is a result's short cell and its detail.
func describeCmdResult(r cmdResult, p fleet.CommandPayload) (result, detail string) {
	switch r.Result {
	case resDone:
		return "done", ""
	case resRefused:
		return "refused: " + r.Reason, oneLine(r.Message)
	case resOffline:
		return "offline", "runs it if it is back before " + clock(p.ExpiresAt)
	case resNeverSeen:
		return "never seen", "no unit with this id has connected to this broker"
	case resNoAnswer:
		return "no answer", "online, but said nothing within --wait"
	}
	return r.Result, ""
}

func cmdOutcome(p fleet.CommandPayload, out []cmdResult) error {
	counts := map[string]int{}
	bad := 0
	for _, r := range out {
		counts[r.Result]++
		if r.Result != resDone {
			bad++
		}
	}
	if bad == 0 {
		return nil
	}
	var parts []string
	for _, k := range []string{resRefused, resNoAnswer, resOffline, resNeverSeen} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], strings.ReplaceAll(k, "_", " ")))
		}
	}
	return fmt.Errorf("%s for %s: %d of %d units did not carry it out (%s)", p.Name, p.Target, bad, len(out), strings.Join(parts, ", "))
}
