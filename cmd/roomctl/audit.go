package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/provisioning/audit"
)

const auditUsage = `usage: roomctl audit verify [--file FILE] [--unit ID] [--json]
       roomctl audit show [--file FILE] [--json]

verify checks the unit's audit log: every record signed by the unit's key,
in order, each linked to the one before; it names the first edited,
deleted, reordered or inserted record (exit status 1). show lists the
records. Both read the log from the running unit over its socket (the
log is the unit's, mode 0600: whoever may use the socket may read it), or
with --file a copy or an export. --unit checks that the chain's key is
that unit's (its device id)`

// auditCmd is roomctl audit verify|show. The check runs here, on the
// lines the unit hands over, not in roomd: the unit vouches for nothing.
func auditCmd(ctx context.Context, c *localapi.Client, args []string, stdout io.Writer, jsonOut bool) error {
	if len(args) == 0 || (args[0] != "verify" && args[0] != "show") {
		return errors.New(auditUsage)
	}
	verb := args[0]
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	file := fs.String("file", "", "a copy or export of the log instead of the running unit's")
	unit := fs.String("unit", "", "verify: the chain's key must be this unit's (device id)")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return errors.New(auditUsage)
	}
	recs, where, err := readAudit(ctx, c, *file)
	if err != nil {
		return err
	}
	if verb == "show" {
		return showAudit(recs, stdout, jsonOut)
	}
	res := audit.Verify(recs, *unit)
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else if res.OK() {
		fmt.Fprintf(stdout, "%s chain %s: OK\n  records %d to %d verified (%d records", where, res.Chain, res.First, res.Last, res.Records)
		if res.Pruned > 0 {
			fmt.Fprintf(stdout, ", %d before them pruned under a signed checkpoint", res.Pruned)
		}
		fmt.Fprintf(stdout, "), signed by %s\n", res.Device)
	} else {
		fmt.Fprintf(stdout, "%s chain %s: FAILED: %s\n", where, res.Chain, res.Problem.Message)
	}
	if !res.OK() {
		return fmt.Errorf("audit verify: %s: %s", res.Problem.Kind, res.Problem.Message)
	}
	return nil
}

// readAudit reads the records from file, or from the running unit.
func readAudit(ctx context.Context, c *localapi.Client, file string) ([]audit.Record, string, error) {
	if file != "" {
		recs, err := audit.ReadFile(file)
		if errors.Is(err, os.ErrPermission) {
			return nil, "", fmt.Errorf("%w: the unit's log is readable by roomd's user only: run roomctl audit without --file (it asks the unit over its socket), or as that user", err)
		}
		return recs, file, err
	}
	l, err := c.AuditLog(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("audit: %w", err)
	}
	var recs []audit.Record
	for i, line := range l.Lines {
		r, err := audit.Parse([]byte(line))
		if err != nil {
			return nil, "", fmt.Errorf("audit: %s line %d is not a record (edited): %w", l.File, i+1, err)
		}
		recs = append(recs, r)
	}
	return recs, l.File, nil
}

func showAudit(recs []audit.Record, stdout io.Writer, jsonOut bool) error {
	if jsonOut {
		for _, r := range recs {
			if _, err := fmt.Fprintf(stdout, "%s\n", r.Line()); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tDETAILS")
	for _, r := range recs {
		var kv []string
		for k, v := range r.Fields {
			if k == "key" {
				v = "(the unit's public key)"
			}
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", r.Seq, r.Time.UTC().Format(time.DateTime), r.Kind, strings.Join(kv, " "))
	}
	return tw.Flush()
}
