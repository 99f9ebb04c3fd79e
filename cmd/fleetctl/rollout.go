package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

const rolloutNotes = `Sends fleetctl update to the group's units in waves (default 1, 5%, 25%,
100%: cumulative shares of the group, each wave at least one unit more) and
waits until each wave's units report the version booted and marked good,
or --wave-timeout. It stops on its own when a wave fails: any failure in
the first wave (the canary), or more than --threshold of a later one
(refused, install failed, rolled back, or timed out). Units defer the
update during a call and reboot in their update.reboot_window (--reboot
window): give --wave-timeout room for both. The state is saved to --state
after every step; after a stop, fix the cause and run fleetctl rollout
--resume --state FILE: it resends to the units of the stopped wave that are
not good and goes on. fleetctl rollout status --state FILE shows each wave
and unit.

` + brokerNotes

func rolloutCmd(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) > 0 && args[0] == "status" {
		return rolloutStatus(env, args[1:])
	}
	fs := newFlags("rollout")
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in the CA folder, --ca-dir)")
	caDir := addCADirUsage(fs, "the fleet CA directory: its fleet.key is the default --key [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
	group := fs.String("group", "", "the group to update")
	url := fs.String("bundle", "", "the bundle's https URL")
	version := fs.String("version", "", "the bundle's version")
	sum := fs.String("sha256", "", "the bundle's SHA-256")
	downgrade := fs.Bool("downgrade", false, "allow an older version (the bundle must be signed as a downgrade)")
	reboot := fs.String("reboot", fleet.RebootWindow, `"now" or "window"`)
	waves := fs.String("waves", strings.Join(manager.DefaultWaves, ","), "the waves, cumulative: unit counts or shares of the group")
	threshold := fs.String("threshold", "10%", "the share of a wave (after the first) that may fail before the rollout stops")
	timeout := fs.Duration("wave-timeout", 30*time.Minute, "how long a wave's units have to report good")
	state := fs.String("state", "", "the rollout's state file (default rollout-GROUP-VERSION.json)")
	resume := fs.Bool("resume", false, "continue the rollout in --state where it stopped")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("rollout: unexpected argument %q", pos[0])
	}
	key, err := keyOrDefault(*keyPath, caDir)
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if key == "" {
		return errKeyRequired("rollout")
	}
	if err := bs.resolve("rollout"); err != nil {
		return err
	}
	var r *manager.Rollout
	if *resume {
		if *state == "" {
			return errors.New("rollout: --resume needs --state FILE")
		}
		if r, err = loadRollout(*state); err != nil {
			return err
		}
	} else {
		if r, err = newRollout(ctx, env, bs, *group, *waves, *threshold, fleet.UpdateArgs{URL: *url, Version: *version, SHA256: *sum, Downgrade: *downgrade, Reboot: *reboot}); err != nil {
			return err
		}
		if *state == "" {
			*state = "rollout-" + r.Group + "-" + r.Update.Version + ".json"
		}
		if _, err := os.Stat(*state); err == nil {
			return fmt.Errorf("rollout: %s exists: continue it with --resume --state %s, or give another --state", *state, *state)
		}
	}
	save := func(r *manager.Rollout) error {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		return writeFileAtomic(*state, append(b, '\n'), 0o600)
	}
	if err := save(r); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	fmt.Fprintf(env.stderr, "rollout of %s to group %s: %d units in %d waves; state in %s\n", r.Update.Version, r.Group, len(r.Units), r.Units[len(r.Units)-1].Wave, *state)
	err = manager.RunRollout(ctx, bs.broker(), env.log, r, manager.RolloutOptions{
		Key: key, WaveTimeout: *timeout, Save: save, Now: env.now,
		Progress: func(u manager.RolloutUnit) {
			fmt.Fprintf(env.stdout, "wave %d  %-24s %-8s %s\n", u.Wave, u.Unit, u.Result, oneLine(u.Detail))
		},
	})
	printRollout(env, r)
	return err
}

func newRollout(ctx context.Context, env *cmdEnv, bs *brokerSettings, group, waves, threshold string, ua fleet.UpdateArgs) (*manager.Rollout, error) {
	if group == "" {
		return nil, errors.New("rollout: give --group G: the units to update")
	}
	if _, err := fleet.ValidateCommand(fleet.CommandUpdate, fleet.UpdateArgsJSON(ua)); err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	th, err := strconv.ParseFloat(strings.TrimSuffix(threshold, "%"), 64)
	if err != nil || th < 0 || th > 100 {
		return nil, errors.New("rollout: --threshold is a share, 0% to 100%")
	}
	units, err := manager.Status(ctx, bs.broker(), env.log, group, nil)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	var ids []string
	for _, u := range units {
		ids = append(ids, u.Unit)
	}
	plan, err := manager.PlanRollout(ids, strings.Split(waves, ","))
	if err != nil {
		return nil, fmt.Errorf("rollout: group %s: %w", group, err)
	}
	return &manager.Rollout{Group: group, Update: ua, Waves: strings.Split(waves, ","), Threshold: th / 100, Units: plan, Started: env.now().UTC()}, nil
}

func loadRollout(path string) (*manager.Rollout, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	var r manager.Rollout
	if err := json.Unmarshal(b, &r); err != nil || len(r.Units) == 0 {
		return nil, fmt.Errorf("rollout: %s is not a rollout state file", path)
	}
	return &r, nil
}

func rolloutStatus(env *cmdEnv, args []string) error {
	fs := newFlags("rollout status")
	state := fs.String("state", "", "the rollout's state file")
	if _, err := parseFlags(fs, env, args); err != nil {
		return helpIsNil(err)
	}
	if *state == "" {
		return errors.New("rollout status: give --state FILE")
	}
	r, err := loadRollout(*state)
	if err != nil {
		return err
	}
	printRollout(env, r)
	return nil
}

// printRollout shows each wave's progress (a bar of its units) and each unit.
func printRollout(env *cmdEnv, r *manager.Rollout) {
	w := env.stdout
	fmt.Fprintf(w, "\nrollout of %s to group %s (waves %s, threshold %g%%)\n", r.Update.Version, r.Group, strings.Join(r.Waves, ","), r.Threshold*100)
	last := r.Units[len(r.Units)-1].Wave
	rows := [][]string{}
	for wv := 1; wv <= last; wv++ {
		counts := map[string]int{}
		n := 0
		for _, u := range r.Units {
			if u.Wave == wv {
				counts[u.Result]++
				n++
				rows = append(rows, []string{strconv.Itoa(wv), u.Unit, u.Result, clock(u.At), oneLine(u.Detail)})
			}
		}
		good := counts[manager.RollGood]
		bar := strings.Repeat("#", good*20/n) + strings.Repeat(".", 20-good*20/n)
		fmt.Fprintf(w, "wave %d  [%s] %d/%d good", wv, bar, good, n)
		for _, k := range []string{manager.RollSent, manager.RollFailed, manager.RollTimeout, manager.RollPending} {
			if counts[k] > 0 {
				fmt.Fprintf(w, ", %d %s", counts[k], k)
			}
		}
		fmt.Fprintln(w)
	}
	switch {
	case r.Done:
		fmt.Fprintln(w, "done: every unit reports the version good")
	case r.Stopped != "":
		fmt.Fprintln(w, "STOPPED: "+r.Stopped)
	}
	fmt.Fprintln(w)
	_ = table(w, []string{"WAVE", "UNIT", "RESULT", "AT", "DETAIL"}, rows)
}
