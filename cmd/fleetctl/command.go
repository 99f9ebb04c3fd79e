package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

func sendCommand(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("cmd")
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in the CA folder, --ca-dir)")
	caDir := addCADirUsage(fs, "the fleet CA directory: its fleet.key is the default --key [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
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
	key, err := keyOrDefault(*keyPath, caDir)
	if err != nil {
		return fmt.Errorf("cmd: %w", err)
	}
	e, p, err := signCommandArgs(env, "cmd", key, tf, pos[0], fs, *seconds, *expires)
	if err != nil {
		return err
	}
	return sendSigned(ctx, env, bs, "cmd", e, p, *wait, *asJSON)
}

// sendSigned publishes a signed command through the broker settings and
// prints the units' answers (answers); cmd and update share it.
func sendSigned(ctx context.Context, env *cmdEnv, bs *brokerSettings, cmd string, e fleet.Envelope, p fleet.CommandPayload, wait time.Duration, asJSON bool) error {
	if err := bs.resolve(cmd); err != nil {
		return err
	}
	out, err := manager.SendCommand(ctx, bs.broker(), env.log, e, p, wait, newProgress(env.stderr, time.Now()))
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return answers(env, cmd, p, out, wait, asJSON)
}

// answers prints the units' answers to a command the way cmd does (a
// table, or JSON) and is cmd's exit status.
func answers(env *cmdEnv, cmd string, p fleet.CommandPayload, out []manager.CmdResult, wait time.Duration, asJSON bool) error {
	if wait == 0 {
		fmt.Fprintf(env.stderr, "sent %s to %s; not waiting for answers\n", p.Name, p.Target)
		return nil
	}
	if asJSON {
		if err := writeJSON(env.stdout, out); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
	} else if len(out) > 0 {
		rows := make([][]string, 0, len(out))
		for _, r := range out {
			res, detail := describeCmdResult(r, p)
			rows = append(rows, []string{r.Unit, res, clock(r.At), detail})
		}
		if err := table(env.stdout, []string{"UNIT", "RESULT", "AT", "DETAIL"}, rows); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if p.Name == fleet.CommandDoctor {
			printDoctor(env.stdout, out)
		}
	} else {
		fmt.Fprintf(env.stderr, "no unit has reported being in group %s: nobody got the command\n", p.Target.Group)
	}
	if err := manager.CmdOutcome(p, out); err != nil {
		return err
	}
	return manager.DoctorOutcome(out)
}

// printDoctor writes each unit's self-check the way roomctl doctor does on
// the unit itself.
func printDoctor(w io.Writer, out []manager.CmdResult) {
	for _, r := range out {
		if r.Result != manager.ResDone {
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

// describeCmdResult is a result's short cell and its detail.
func describeCmdResult(r manager.CmdResult, p fleet.CommandPayload) (result, detail string) {
	switch r.Result {
	case manager.ResDone:
		return "done", oneLine(r.Message)
	case manager.ResRefused:
		return "refused: " + r.Reason, oneLine(r.Message)
	case manager.ResOffline:
		return "offline", "runs it if it is back before " + clock(p.ExpiresAt)
	case manager.ResNeverSeen:
		return "never seen", "no unit with this id has connected to this broker"
	case manager.ResNoAnswer:
		return "no answer", noAnswerNote
	}
	return r.Result, ""
}
