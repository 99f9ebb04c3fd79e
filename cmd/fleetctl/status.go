package main

import (
	"context"
	"fmt"
	"slices"
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
			s.Unit, yesNo(s.Online), dash(s.State), generationCell(s), versionsCell(s), dash(s.Software), clock(s.LastSeen), notesCell(s),
		})
	}
	if err := table(env.stdout, []string{"UNIT", "ONLINE", "STATE", "GEN", "CONFIG VERSIONS", "SOFTWARE", "LAST SEEN", "NOTES"}, rows); err != nil {
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

func generationCell(s manager.UnitStatus) string {
	if s.ConfigGeneration == 0 {
		return "-"
	}
	return strconv.FormatUint(s.ConfigGeneration, 10)
}

// versionsCell lists the config versions a unit runs in merge order: its
// groups' in its group order, then its own device config.
func versionsCell(s manager.UnitStatus) string {
	if len(s.Versions) == 0 {
		return "-"
	}
	vs := s.Versions
	var parts []string
	done := map[string]bool{}
	for _, g := range s.Groups {
		if v, ok := vs["group:"+g]; ok {
			parts = append(parts, fmt.Sprintf("%s v%d", g, v))
			done["group:"+g] = true
		}
	}
	if v, ok := vs["device:"+s.Unit]; ok {
		parts = append(parts, fmt.Sprintf("device v%d", v))
		done["device:"+s.Unit] = true
	}
	// Anything else (a group the unit has left) last, in a stable order.
	rest := make([]string, 0, len(vs))
	for k := range vs {
		if !done[k] {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	for _, k := range rest {
		parts = append(parts, fmt.Sprintf("%s v%d", strings.TrimPrefix(k, "group:"), vs[k]))
	}
	return strings.Join(parts, ", ")
}

// notesCell says what a fleet manager should know beyond the versions:
// a config not yet confirmed or waiting for a call, a refusal of a version
// the unit does not run, a rollback it still runs on.
func notesCell(s manager.UnitStatus) string {
	if r := s.Revoked; r != nil {
		// Nothing else about it can change any more.
		return revokedNote(r.At, r.Reason)
	}
	var notes []string
	if s.Pending {
		notes = append(notes, "config not yet confirmed")
	}
	if s.Deferred {
		notes = append(notes, "newest config waits for the call to end")
	}
	// A group config the unit never received: none was pushed to the group
	// yet, or the broker's ACL did not let the unit read it (the unit keeps
	// re-subscribing until it arrives).
	for _, g := range s.Groups {
		if _, ok := s.Versions["group:"+g]; !ok {
			notes = append(notes, fmt.Sprintf("no config for group %s yet", g))
		}
	}
	if rj := s.LastRejection; rj != nil && (rj.Version == 0 || rj.Version > s.Versions[rj.Target]) {
		notes = append(notes, fmt.Sprintf("refused %s v%d (%s) at %s", targetLabel(rj.Target), rj.Version, rj.Reason, clock(rj.At)))
	}
	if rb := s.LastRollback; rb != nil && rb.ToGeneration == s.ConfigGeneration {
		notes = append(notes, fmt.Sprintf("runs its last known good config since %s: %s", clock(rb.At), oneLine(rb.Reason)))
	}
	// Certificates last 90 days: a unit nobody renews drops off the fleet
	// on that day, so say so while there is time.
	if c := s.Certificate; c != nil && !c.NotAfter.IsZero() {
		switch {
		case !now().Before(c.NotAfter):
			notes = append(notes, fmt.Sprintf("certificate expired %s: it cannot connect; factory-reset and enrol it again", clock(c.NotAfter)))
		case c.RenewalCSR != "":
			notes = append(notes, fmt.Sprintf("certificate expires %s and the unit asks for renewal: run fleetctl renew (or keep fleetctl renew --watch running)", clock(c.NotAfter)))
		}
		if c.LastRenewalError != "" {
			notes = append(notes, "last renewal not installed: "+oneLine(c.LastRenewalError))
		}
	}
	return strings.Join(notes, "; ")
}

// targetLabel turns a target key into words: "group:ward-3" → "group ward-3".
func targetLabel(key string) string {
	kind, name, ok := strings.Cut(key, ":")
	if !ok {
		return key
	}
	return kind + " " + name
}

func revokedNote(at time.Time, reason string) string {
	s := "revoked " + clock(at)
	if reason != "" {
		s += " (" + oneLine(reason) + ")"
	}
	return s + ": it cannot connect once the broker has the new CRL"
}
