package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/konsult/konsult/provisioning/fleetd"
)

const consultNotes = `The consult verbs talk to fleetd on its local socket (--fleetd, else
$FLEETCTL_FLEETD, else /run/konsult-fleetd/fleetd.sock): fleetctl must run
on fleetd's server as a user in its group. The other verbs do not need
fleetd.

  add --unit ID --at 2026-12-02T10:30 --for 30m   book one; prints its id
      and the patient link (shown once: the link's secret is kept hashed)
  list [--unit ID] [--all]                         upcoming ones (--all: past
      and cancelled too)
  cancel ID                                        cancel one
  import [--unit ID] FILE.ics                      book a calendar's events
      (UID keyed: a re-import moves or cancels); the unit is --unit, else
      X-KONSULT-UNIT, else LOCATION. Summaries and descriptions are ignored.

--at is local time unless it carries a zone (2026-12-02T10:30+01:00).
`

func consultCmd(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(env.stdout, "usage: fleetctl consult add|list|cancel|import [FLAGS]\n\n"+consultNotes)
		if len(args) == 0 {
			return errors.New("consult: say add, list, cancel or import")
		}
		return nil
	}
	verb, rest := args[0], args[1:]
	fs := newFlags("consult")
	sock := fs.String("fleetd", "", "fleetd's socket [$FLEETCTL_FLEETD] (default "+fleetd.DefaultSocket+")")
	unit := fs.String("unit", "", "the unit (device id)")
	at := fs.String("at", "", "start, 2026-12-02T10:30 (local time) or RFC 3339")
	dur := fs.Duration("for", 30*time.Minute, "how long")
	all := fs.Bool("all", false, "list past and cancelled consultations too")
	pos, err := parseFlags(fs, env, rest)
	if err != nil {
		if errors.Is(err, errHelpShown) {
			return nil
		}
		return err
	}
	path := *sock
	if path == "" {
		path = getenv("FLEETCTL_FLEETD")
	}
	if path == "" {
		path = fleetd.DefaultSocket
	}
	c := fleetd.NewClient(path)
	switch verb {
	case "add":
		if *unit == "" || *at == "" {
			return errors.New("consult add: --unit and --at are required")
		}
		start, err := parseAt(*at)
		if err != nil {
			return fmt.Errorf("consult add: --at: %w", err)
		}
		a, err := c.Add(ctx, fleetd.AddRequest{Unit: *unit, Start: start, End: start.Add(*dur)})
		if err != nil {
			return fmt.Errorf("consult add: %w", err)
		}
		fmt.Fprintf(env.stdout, "consultation %s for %s, %s – %s\npatient link (send it to the patient; it is not shown again):\n  %s\n",
			a.ID, a.Unit, a.Start.Local().Format("2006-01-02 15:04"), a.End.Local().Format("15:04"), a.PatientLink)
		return nil
	case "list":
		cs, err := c.List(ctx, *unit, *all)
		if err != nil {
			return fmt.Errorf("consult list: %w", err)
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUNIT\tSTART\tEND\tSTATE")
		for _, x := range cs {
			state := "booked"
			if x.CancelledAt != nil {
				state = "cancelled"
			} else if env.now().After(x.End) {
				state = "past"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.ID, x.Unit, x.Start.Local().Format("2006-01-02 15:04"), x.End.Local().Format("15:04"), state)
		}
		return tw.Flush()
	case "cancel":
		if len(pos) != 1 {
			return errors.New("consult cancel: name one consultation id")
		}
		x, err := c.Cancel(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("consult cancel: %w", err)
		}
		fmt.Fprintf(env.stdout, "cancelled %s (%s, %s)\n", x.ID, x.Unit, x.Start.Local().Format("2006-01-02 15:04"))
		return nil
	case "import":
		if len(pos) != 1 {
			return errors.New("consult import: name one .ics file")
		}
		f, err := os.Open(pos[0])
		if err != nil {
			return fmt.Errorf("consult import: %w", err)
		}
		defer f.Close()
		res, err := c.Import(ctx, f, *unit)
		if err != nil {
			return fmt.Errorf("consult import: %w", err)
		}
		for _, a := range res.Added {
			fmt.Fprintf(env.stdout, "added %s for %s at %s: %s\n", a.ID, a.Unit, a.Start.Local().Format("2006-01-02 15:04"), a.PatientLink)
		}
		fmt.Fprintf(env.stdout, "%d added, %d moved, %d cancelled, %d unchanged, %d skipped\n", len(res.Added), res.Moved, res.Cancelled, res.Unchanged, len(res.Skipped))
		for _, s := range res.Skipped {
			fmt.Fprintf(env.stdout, "  skipped %s\n", s)
		}
		return nil
	}
	return fmt.Errorf("consult: unknown verb %q: add, list, cancel or import", verb)
}

// parseAt reads --at: RFC 3339, or a local time without zone.
func parseAt(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02 15:04"} {
		if t, err := time.ParseInLocation(layout, strings.TrimSpace(s), time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use 2026-12-02T10:30", s)
}
