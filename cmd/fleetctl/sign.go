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

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
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
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in the CA folder, --ca-dir)")
	caDir := addCADirUsage(fs, "the fleet CA directory: its fleet.key is the default --key [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
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
	key, err := keyOrDefault(*keyPath, caDir)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	e, p, err := signConfigFile(env, "sign", key, tf, *version, *expires, *urgent, pos[0])
	if err != nil {
		return err
	}
	if err := emit(env, *out, e); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	fmt.Fprintf(env.stderr, "signed version %d for %s with key %s, expires %s\n", p.Version, p.Target, e.KeyID, p.ExpiresAt.Format(time.RFC3339))
	return nil
}

// signConfigFile checks and signs a config file the way sign and push both
// do; cmd prefixes the errors.
func signConfigFile(env *cmdEnv, cmd, keyPath string, tf targetFlags, version string, expires time.Duration, urgent bool, path string) (fleet.Envelope, fleet.ConfigPayload, error) {
	var p fleet.ConfigPayload
	if keyPath == "" {
		return fleet.Envelope{}, p, errKeyRequired(cmd)
	}
	target, err := tf.target(cmd)
	if err != nil {
		return fleet.Envelope{}, p, err
	}
	if version == "" {
		return fleet.Envelope{}, p, fmt.Errorf("%s: --version is required: one above the last version published for this target", cmd)
	}
	v, err := strconv.ParseUint(version, 10, 64)
	if err != nil || v == 0 {
		return fleet.Envelope{}, p, fmt.Errorf("%s: --version %q is not a whole number of 1 or more: versions start at 1 and only go up", cmd, version)
	}
	if err := checkConfigFile(path); err != nil {
		return fleet.Envelope{}, p, fmt.Errorf("%s: %w", cmd, err)
	}
	e, p, err := manager.SignConfigFile(keyPath, target, v, expires, urgent, path, env.now())
	if err != nil {
		return fleet.Envelope{}, p, fmt.Errorf("%s: %w", cmd, err)
	}
	return e, p, nil
}

func signCommand(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("sign-command")
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in the CA folder, --ca-dir)")
	caDir := addCADirUsage(fs, "the fleet CA directory: its fleet.key is the default --key [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
	tf := addTargetFlags(fs)
	seconds := fs.Int("seconds", 0, "identify: how long the unit blinks its LED (1-300; default 10)")
	expires := fs.Duration("expires", 5*time.Minute, "how long units accept the command (at most 1h)")
	out := fs.String("out", "", "write the envelope here (mode 0600) instead of stdout")
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) != 1 {
		return errors.New("sign-command: give exactly one command name: join, leave, identify, reboot, report-now or doctor")
	}
	key, err := keyOrDefault(*keyPath, caDir)
	if err != nil {
		return fmt.Errorf("sign-command: %w", err)
	}
	e, p, err := signCommandArgs(env, "sign-command", key, tf, pos[0], fs, *seconds, *expires)
	if err != nil {
		return err
	}
	if err := emit(env, *out, e); err != nil {
		return fmt.Errorf("sign-command: %w", err)
	}
	fmt.Fprintf(env.stderr, "signed command %s for %s with key %s, expires %s\n", p.Name, p.Target, e.KeyID, p.ExpiresAt.Format(time.RFC3339))
	return nil
}

// signCommandArgs checks and signs a command the way sign-command and cmd
// both do; --seconds counts only if it was given on fs.
func signCommandArgs(env *cmdEnv, cmd, keyPath string, tf targetFlags, name string, fs *flag.FlagSet, seconds int, expires time.Duration) (fleet.Envelope, fleet.CommandPayload, error) {
	p := fleet.CommandPayload{Name: name}
	if keyPath == "" {
		return fleet.Envelope{}, p, errKeyRequired(cmd)
	}
	target, err := tf.target(cmd)
	if err != nil {
		return fleet.Envelope{}, p, err
	}
	var cargs map[string]json.RawMessage
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "seconds" {
			cargs = map[string]json.RawMessage{"seconds": json.RawMessage(strconv.Itoa(seconds))}
		}
	})
	e, p, err := manager.SignCommandFile(keyPath, target, name, cargs, expires, env.now())
	if err != nil {
		return fleet.Envelope{}, p, fmt.Errorf("%s: %w", cmd, err)
	}
	return e, p, nil
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

// errKeyRequired names the key units trust: an enrolled fleet's is the
// fleet.key fleetctl ca init put in the CA folder, not one from keygen.
func errKeyRequired(cmd string) error {
	return fmt.Errorf("%s: --key is required: the fleet signing key, fleet.key in the fleet CA folder made by fleetctl ca init (give --ca-dir, FLEETCTL_CA_DIR or ca_dir in the settings file and it is the default); only a fleet without a CA uses the one from fleetctl keygen", cmd)
}

// checkConfigFile refuses a config the units would refuse, with the words
// a unit would report (appliance/config is the unit's own schema), so a
// mistake is caught before it is signed and retained on the broker.
func checkConfigFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return checkConfig(path, b)
}

func checkConfig(what string, b []byte) error {
	if err := config.CheckFleet(b); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
