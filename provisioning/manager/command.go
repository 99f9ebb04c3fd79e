package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Command results, the "result" of each unit in cmd's output (besides
// offline, never_seen and no_answer, as for a push).
const (
	ResDone    = "done"    // verified and carried out (join/leave: requested)
	ResRefused = "refused" // refused; reason and message say why
)

// CmdResult is one unit's answer to a command.
type CmdResult struct {
	Unit    string    `json:"unit"`
	Result  string    `json:"result"` // done, refused, offline, never_seen, no_answer
	Reason  string    `json:"reason,omitempty"`
	Message string    `json:"message,omitempty"`
	At      time.Time `json:"at,omitzero"`
	// Checks: the unit's self-check (doctor only).
	Checks []fleet.DoctorCheck `json:"checks,omitempty"`
	// Report: the unit's privacy report (privacy-report only), JSON.
	Report json.RawMessage `json:"report,omitempty"`
}

// SendCommand publishes a signed command (not retained: a command is for
// now; a unit that is offline finds it in its persistent session when it
// reconnects, and its expiry bounds how late it may still run) and waits
// up to wait for each addressed unit's command_done or command_refused.
// The units are the target device, or those whose reported document lists
// the target group. With wait 0 it returns nil results after publishing.
func SendCommand(ctx context.Context, b Broker, log *slog.Logger, e fleet.Envelope, p fleet.CommandPayload, wait time.Duration, prog Progress) ([]CmdResult, error) {
	return SendCommands(ctx, b, log, []SignedCommand{{Envelope: e, Payload: p}}, wait, prog)
}

// SignedCommand is one command for SendCommands.
type SignedCommand struct {
	Envelope fleet.Envelope
	Payload  fleet.CommandPayload
}

// SendCommands is SendCommand for many commands at once (a rollout wave:
// one per unit), on one connection and one view of the fleet, waiting for
// every addressed unit together: a wave of a thousand units costs one
// wait, not a thousand. Each unit's answer is matched to the nonce of the
// command addressed to it. The results follow the commands' order.
func SendCommands(ctx context.Context, b Broker, log *slog.Logger, cmds []SignedCommand, wait time.Duration, prog Progress) ([]CmdResult, error) {
	if prog == nil {
		prog = noProgress{}
	}
	t := link.Topics{Prefix: b.Prefix}
	fc, err := Dial(ctx, b, log, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported), t.AllDevices(link.DeviceEvents))
	if err != nil {
		return nil, err
	}
	defer fc.Close()
	view := NewView()
	if err := fc.Sync(ctx, func(m Msg) { view.Feed(m) }); err != nil {
		return nil, err
	}

	results := map[string]*CmdResult{}
	nonce := map[string]string{} // the nonce of the command each unit was sent
	var order []string
	for _, c := range cmds {
		p := c.Payload
		var ids []string
		for _, u := range view.Sorted() {
			if p.Target.Device == u.ID || (p.Target.Group != "" && u.InGroup(p.Target.Group)) {
				ids = append(ids, u.ID)
			}
		}
		if p.Target.Device != "" && len(ids) == 0 {
			ids = append(ids, p.Target.Device)
		}
		for _, id := range ids {
			if results[id] == nil {
				order = append(order, id)
				results[id] = &CmdResult{Unit: id}
				presence(results[id], view.Unit(id))
			}
			nonce[id] = p.Nonce
		}
	}
	published := time.Now()
	for _, c := range cmds {
		topic := t.DeviceCmd(c.Payload.Target.Device)
		if c.Payload.Target.Group != "" {
			topic = t.GroupCmd(c.Payload.Target.Group)
		}
		if err := fc.Publish(ctx, topic, false, c.Envelope.Marshal()); err != nil {
			return nil, err
		}
	}
	if wait == 0 {
		return nil, nil
	}

	settled := func() (done, total int, detail string) {
		n := 0
		for _, r := range results {
			if r.Result != ResNoAnswer {
				n++
			}
		}
		return n, len(results), ""
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	dd := NewDedup(1 << 16)
	for {
		done, total, _ := settled()
		if done == total {
			break
		}
		prog.Update(settled())
		nctx, ncancel := context.WithTimeout(wctx, 100*time.Millisecond)
		m, err := fc.Next(nctx)
		ncancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if wctx.Err() != nil {
				break
			}
			continue
		}
		if view.Feed(m) {
			if r := results[m.Unit]; r != nil && r.Result != ResDone && r.Result != ResRefused {
				presence(r, view.Unit(m.Unit))
			}
			continue
		}
		ev, ok := ParseEvent(m)
		if !ok || !dd.First(ev.Unit+"/"+ev.ID) || (ev.Type != fleet.EventCommandDone && ev.Type != fleet.EventCommandRefused) {
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
		if d.Nonce != nonce[ev.Unit] && (d.Nonce != "" || ev.Type != fleet.EventCommandRefused || ev.At.Before(published.Add(-fleet.DefaultSkew))) {
			continue
		}
		// A done answer may say how it was carried out (update: deferred
		// until the call ends, or requested).
		r.Result, r.Reason, r.Message, r.At, r.Checks, r.Report = ResDone, "", d.Message, ev.At, d.Checks, d.Report
		if ev.Type == fleet.EventCommandRefused {
			r.Result, r.Reason, r.Message = ResRefused, d.Reason, d.Message
		}
	}
	prog.Done(settled())

	out := make([]CmdResult, 0, len(order))
	for _, id := range order {
		out = append(out, *results[id])
	}
	return out, nil
}

// presence sets a unit that has not answered to offline, never seen or no
// answer from its retained documents.
func presence(r *CmdResult, u *Unit) {
	switch {
	case u.Status == nil && u.Reported == nil:
		r.Result = ResNeverSeen
	case !u.Online():
		r.Result, r.At = ResOffline, u.Seen
	default:
		r.Result, r.At = ResNoAnswer, time.Time{}
	}
}

// CmdOutcome is cmd's exit status: an error unless every unit carried the
// command out.
func CmdOutcome(p fleet.CommandPayload, out []CmdResult) error {
	counts := map[string]int{}
	bad := 0
	for _, r := range out {
		counts[r.Result]++
		if r.Result != ResDone {
			bad++
		}
	}
	if bad == 0 {
		return nil
	}
	var parts []string
	for _, k := range []string{ResRefused, ResNoAnswer, ResOffline, ResNeverSeen} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], strings.ReplaceAll(k, "_", " ")))
		}
	}
	return fmt.Errorf("%s for %s: %d of %d units did not carry it out (%s)", p.Name, p.Target, bad, len(out), strings.Join(parts, ", "))
}

// DoctorOutcome fails when any unit's self-check found a problem, as
// roomctl doctor does, so scripts can tell.
func DoctorOutcome(out []CmdResult) error {
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
