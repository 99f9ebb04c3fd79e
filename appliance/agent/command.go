package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

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
	if c.Name == fleet.CommandPrivacyReport {
		a.privacyReport(ctx, &res)
		return
	}
	if c.Name == fleet.CommandUpdate {
		a.updateCommand(&res, c.Parsed.Update)
		return
	}
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
	case fleet.CommandJoin, fleet.CommandLeave, fleet.CommandIdentify, fleet.CommandReboot, fleet.CommandReportNow, fleet.CommandCertificate, fleet.CommandDoctor, fleet.CommandPrivacyReport, fleet.CommandUpdate:
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

// privacyReport answers the privacy-report command with the unit's report,
// every secret-looking config value cut out of it once more.
func (a *Agent) privacyReport(ctx context.Context, res *fleet.CommandResult) {
	if a.opts.PrivacyReport == nil {
		res.Reason, res.Message = "failed", "this unit makes no privacy report"
		a.publish(fleet.EventCommandRefused, *res)
		return
	}
	b, err := json.Marshal(a.opts.PrivacyReport(ctx))
	if err != nil {
		res.Reason, res.Message = "failed", "the privacy report could not be encoded"
		a.publish(fleet.EventCommandRefused, *res)
		return
	}
	red := a.redact.text(string(b))
	if !json.Valid([]byte(red)) {
		res.Reason, res.Message = "failed", "the privacy report could not be sent with its secrets cut out"
		a.publish(fleet.EventCommandRefused, *res)
		return
	}
	res.Report = json.RawMessage(red)
	a.log.Info("command done", "name", res.Name)
	a.publish(fleet.EventCommandDone, *res)
}
