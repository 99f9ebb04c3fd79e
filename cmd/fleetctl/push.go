package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

func push(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("push")
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in the CA folder, --ca-dir)")
	tf := addTargetFlags(fs)
	version := fs.String("version", "", "config version for this target, above the one the units run")
	expires := fs.Duration("expires", 168*time.Hour, "how long units accept the envelope; a unit that comes online later needs it re-signed")
	urgent := fs.Bool("urgent", false, "apply during a call too, instead of when the call ends")
	envFile := fs.String("envelope", "", "push this envelope from fleetctl sign instead of signing a config file")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the units' answers (0: publish and return)")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	caDir := addCADirUsage(fs, "the fleet CA directory: its fleet.key is the default --key, a config signed by another key is refused, and revoked units are named as such and left out of the exit status [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	dir, revoked, err := caFolder("push", caDir)
	if err != nil {
		return err
	}
	var e fleet.Envelope
	var p fleet.ConfigPayload
	if *envFile != "" {
		if len(pos) > 0 || *keyPath != "" || *version != "" || *tf.device != "" || *tf.group != "" {
			return errors.New("push: --envelope carries its own target, version and signature: drop --key, --device, --group, --version and the config file")
		}
		if e, p, err = manager.ReadConfigEnvelope(*envFile); err != nil {
			return fmt.Errorf("push: %w", err)
		}
		if err := checkConfig(*envFile, []byte(p.Config)); err != nil {
			return fmt.Errorf("push: refused before publishing: %w", err)
		}
	} else {
		if len(pos) != 1 {
			return errors.New("push: give exactly one config file: fleetctl push --group NAME --version N config.toml")
		}
		if e, p, err = signConfigFile(env, "push", defaultKey(*keyPath, dir), tf, *version, *expires, *urgent, pos[0]); err != nil {
			return err
		}
	}
	if dir != "" {
		// Units enrolled from this CA would refuse it, and it would stay
		// retained on the broker for every unit that connects later.
		if err := manager.CheckFleetKey(e, dir); err != nil {
			return fmt.Errorf("push: refused before publishing: %w", err)
		}
	}
	if *wait < 0 {
		return errors.New("push: --wait must be 0 or more, e.g. 30s")
	}
	if err := bs.resolve("push"); err != nil {
		return err
	}
	results, err := manager.Push(ctx, bs.broker(), env.log, manager.PushOptions{
		Envelope: e, Payload: p, Wait: *wait, Revoked: revoked, Progress: newProgress(env.stderr, time.Now()),
	})
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
			results = []manager.PushResult{}
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
	return manager.PushOutcome(p, results)
}

// caFolder resolves the CA folder (none: "") and the units its ledger
// marks revoked.
func caFolder(cmd string, f *caDirFlag) (string, map[string]*ca.Unit, error) {
	dir, err := f.resolve()
	if err != nil || dir == "" {
		return "", nil, err
	}
	c, err := openCA(cmd, f)
	if err != nil {
		return "", nil, err
	}
	revoked, err := manager.RevokedUnits(c)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return dir, revoked, nil
}

// keyOrDefault is key, else the CA folder's fleet.key; the CA folder is
// looked for only when it is needed.
func keyOrDefault(key string, f *caDirFlag) (string, error) {
	if key != "" {
		return key, nil
	}
	dir, err := f.resolve()
	return defaultKey("", dir), err
}

// defaultKey is --key, else the CA folder's fleet.key: the key the units
// it enrolled trust.
func defaultKey(key, caDir string) string {
	if key == "" && caDir != "" {
		return filepath.Join(caDir, manager.FleetKeyFile)
	}
	return key
}

// describeResult is a result's short cell and its detail, the last column.
func describeResult(r manager.PushResult) (result, detail string) {
	switch r.Result {
	case manager.ResApplied:
		return "applied", ""
	case manager.ResDeferred:
		return "deferred", "in a call: applies when the call ends"
	case manager.ResRejected:
		if r.Reason == string(fleet.ReasonUnknownKey) {
			return "rejected: " + r.Reason, oneLine(r.Message) + "; sign with the fleet.key in the CA folder (fleetctl ca init), the key enrolment gave the units"
		}
		return "rejected: " + r.Reason, oneLine(r.Message)
	case manager.ResRolledBack:
		return "rolled back", oneLine(r.Reason)
	case manager.ResOffline:
		return "offline", "gets it when it reconnects (AT: last seen)"
	case manager.ResNeverSeen:
		return "never seen", "no unit with this id has connected to this broker"
	case manager.ResNoAnswer:
		return "no answer", noAnswerNote
	case manager.ResRevoked:
		return "revoked", revokedNote(r.At, r.Message)
	}
	return r.Result, ""
}

// noAnswerNote: the usual cause, right after an approval, is an ACL that
// does not list the unit yet.
const noAnswerNote = "online, but said nothing within --wait; usually, after an approval, the broker's ACL does not list the unit yet: re-render it with fleetctl acl --out FILE and reload the broker (SIGHUP)"

func versionCell(v uint64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatUint(v, 10)
}
