package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

// targetFlags are --device and --group, shared by the signing commands.
type targetFlags struct{ device, group *string }

func addTargetFlags(fs *flag.FlagSet) targetFlags {
	return targetFlags{
		device: fs.String("device", "", "address one unit by its device id"),
		group:  fs.String("group", "", "address every unit in this group"),
	}
}

func (t targetFlags) target(cmd string) (fleet.Target, error) {
	tg := fleet.Target{Device: *t.device, Group: *t.group}
	if tg.Device == "" && tg.Group == "" {
		return tg, fmt.Errorf("%s: give --device ID or --group NAME: who the envelope is for", cmd)
	}
	if tg.Device != "" && tg.Group != "" {
		return tg, fmt.Errorf("%s: give --device or --group, not both: sign one envelope per target", cmd)
	}
	if err := tg.Validate(); err != nil {
		return tg, fmt.Errorf("%s: %w", cmd, err)
	}
	return tg, nil
}

func sign(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("sign")
	keyPath := fs.String("key", "", "the fleet signing key (fleet.key from fleetctl keygen)")
	tf := addTargetFlags(fs)
	version := fs.String("version", "", "config version for this target, above the last one published for it")
	expires := fs.Duration("expires", 168*time.Hour, "how long units accept the envelope; a unit enrolled later needs it re-signed")
	urgent := fs.Bool("urgent", false, "set the payload's urgent flag: units apply it without waiting for a call to end")
	out := fs.String("out", "", "write the envelope here (mode 0600) instead of stdout")
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) != 1 {
		return errors.New("sign: give exactly one config file: fleetctl sign --key fleet.key --device ID --version N config.toml")
	}
	if *keyPath == "" {
		return errors.New("sign: --key is required: the fleet.key written by fleetctl keygen")
	}
	target, err := tf.target("sign")
	if err != nil {
		return err
	}
	if *version == "" {
		return errors.New("sign: --version is required: one above the last version published for this target")
	}
	v, err := strconv.ParseUint(*version, 10, 64)
	if err != nil || v == 0 {
		return fmt.Errorf("sign: --version %q is not a whole number of 1 or more: versions start at 1 and only go up", *version)
	}
	if *expires <= 0 {
		return errors.New("sign: --expires must be positive, e.g. 168h")
	}
	cfg, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("sign: read config: %w", err)
	}
	if _, err := fleet.ParseTOML(cfg); err != nil {
		return fmt.Errorf("sign: %s: %w: fix it and sign again", pos[0], err)
	}
	priv, err := fleet.LoadPrivateKey(*keyPath)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	issued := env.now().UTC().Truncate(time.Second)
	e, err := fleet.SignConfig(priv, fleet.ConfigPayload{
		Version:   v,
		IssuedAt:  issued,
		ExpiresAt: issued.Add(*expires),
		Target:    target,
		Urgent:    *urgent,
		Config:    string(cfg),
	})
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	if err := emit(env, *out, e); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	fmt.Fprintf(env.stderr, "signed version %d for %s with key %s, expires %s\n", v, target, e.KeyID, issued.Add(*expires).Format(time.RFC3339))
	return nil
}

func signCommand(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("sign-command")
	keyPath := fs.String("key", "", "the fleet signing key (fleet.key from fleetctl keygen)")
	tf := addTargetFlags(fs)
	seconds := fs.Int("seconds", 0, "identify: how long the unit blinks its LED (1-300; default 10)")
	expires := fs.Duration("expires", 5*time.Minute, "how long units accept the command (at most 1h)")
	out := fs.String("out", "", "write the envelope here (mode 0600) instead of stdout")
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) != 1 {
		return errors.New("sign-command: give exactly one command name: join, leave, identify, reboot or report-now")
	}
	if *keyPath == "" {
		return errors.New("sign-command: --key is required: the fleet.key written by fleetctl keygen")
	}
	target, err := tf.target("sign-command")
	if err != nil {
		return err
	}
	if *expires <= 0 {
		return errors.New("sign-command: --expires must be positive, e.g. 5m")
	}
	p := fleet.CommandPayload{Name: pos[0], Target: target}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "seconds" {
			p.Args = map[string]json.RawMessage{"seconds": json.RawMessage(strconv.Itoa(*seconds))}
		}
	})
	if _, err := fleet.ValidateCommand(p.Name, p.Args); err != nil {
		return fmt.Errorf("sign-command: %w", err)
	}
	priv, err := fleet.LoadPrivateKey(*keyPath)
	if err != nil {
		return fmt.Errorf("sign-command: %w", err)
	}
	p.IssuedAt = env.now().UTC().Truncate(time.Second)
	p.ExpiresAt = p.IssuedAt.Add(*expires)
	e, err := fleet.SignCommand(priv, p)
	if err != nil {
		return fmt.Errorf("sign-command: %w", err)
	}
	if err := emit(env, *out, e); err != nil {
		return fmt.Errorf("sign-command: %w", err)
	}
	fmt.Fprintf(env.stderr, "signed command %s for %s with key %s, expires %s\n", p.Name, target, e.KeyID, p.ExpiresAt.Format(time.RFC3339))
	return nil
}

// emit writes the envelope JSON and a newline to path, or stdout if path is
// empty. The file is 0600: a config envelope carries the config (secrets
// included) in base64, which is encoding, not encryption.
func emit(env *cmdEnv, path string, e fleet.Envelope) error {
	b := append(e.Marshal(), '\n')
	if path == "" {
		_, err := env.stdout.Write(b)
		return err
	}
	return writeFileAtomic(path, b, 0o600)
}
