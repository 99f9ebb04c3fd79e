package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

func status(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("status")
	group := fs.String("group", "", "only the units that report being in this group")
	asJSON := fs.Bool("json", false, "print the units as JSON")
	caDir := addCADirUsage(fs, "the fleet CA directory, to name revoked units as such [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("status: unexpected argument %q: status takes only flags", pos[0])
	}
	_, revoked, err := caFolder("status", caDir)
	if err != nil {
		return err
	}
	if *group != "" {
		if err := link.ValidName(*group); err != nil {
			return fmt.Errorf("status: --group: %w", err)
		}
	}
	if err := bs.resolve("status"); err != nil {
		return err
	}
	units, err := manager.Status(ctx, bs.broker(), env.log, *group, revoked)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		if units == nil {
			units = []manager.UnitStatus{}
		}
		return writeJSON(env.stdout, units)
	}
	if len(units) == 0 {
		if *group != "" {
			fmt.Fprintf(env.stderr, "no unit reports being in group %s: check the name, or whether its units ever connected (fleetctl status lists all)\n", *group)
		} else {
			fmt.Fprintln(env.stderr, "no unit has ever connected to this broker: check --broker and --prefix")
		}
		return nil
	}
	rows := make([][]string, 0, len(units))
	online := 0
	for _, s := range units {
		if s.Online {
			online++
		}
		rows = append(rows, []string{
			s.Unit, yesNo(s.Online), dash(s.State), generationCell(s), manager.VersionsLabel(s), dash(s.Software), systemCell(s), clock(s.LastSeen), strings.Join(manager.Notes(s, now(), clock), "; "),
		})
	}
	if err := table(env.stdout, []string{"UNIT", "ONLINE", "STATE", "GEN", "CONFIG VERSIONS", "SOFTWARE", "SYSTEM", "LAST SEEN", "NOTES"}, rows); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	fmt.Fprintf(env.stderr, "%d units, %d online\n", len(units), online)
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return oneLine(s)
}

// systemCell is the system version the unit booted and its slot (what a
// rollout changes), "-" for a unit without A/B updates.
func systemCell(s manager.UnitStatus) string {
	u := s.Update
	if u == nil || u.BootedVersion == "" {
		return "-"
	}
	if u.BootedSlot == "" {
		return oneLine(u.BootedVersion)
	}
	return oneLine(u.BootedVersion + " (" + u.BootedSlot + ")")
}

func generationCell(s manager.UnitStatus) string {
	if s.ConfigGeneration == 0 {
		return "-"
	}
	return strconv.FormatUint(s.ConfigGeneration, 10)
}

func revokedNote(at time.Time, reason string) string { return manager.RevokedNote(at, reason, clock) }
