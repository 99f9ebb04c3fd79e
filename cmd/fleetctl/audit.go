package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/fleetd"
)

// defaultAuditDB is where the packaged fleetd keeps its database.
const defaultAuditDB = "/var/lib/konsult-fleetd/fleetd.db"

const auditNotes = `The audit verbs read fleetd's database (--db, else $FLEETCTL_DB, else
` + defaultAuditDB + `) or a file: a unit's own log (<state_dir>/audit/audit.jsonl)
or an export.

  verify --unit ID [--db FILE]       check the fleet's copy of a unit's chain(s):
                                     signatures, order, links; names the first bad
                                     record and any gap between what the unit says it
                                     sent (its reported state) and what fleetd holds
  verify --file FILE [--unit ID]     check a log file as it stands (with --unit:
                                     that its key is the unit's)
  export --unit ID [--db FILE] [--out FILE]   the unit's records as JSON lines

Exit status 1 when a chain does not verify or records are missing.
`

// auditResult is one chain's verdict as --json prints it.
type auditResult struct {
	audit.Result
	Gaps    []audit.Gap        `json:"gaps,omitempty"`
	Mark    *fleet.AuditReport `json:"reported,omitempty"`
	Verdict string             `json:"verdict"`
}

func auditCmd(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(env.stdout, "usage: fleetctl audit verify|export [FLAGS]\n\n"+auditNotes)
		if len(args) == 0 {
			return errors.New("audit: say verify or export")
		}
		return nil
	}
	verb, rest := args[0], args[1:]
	fs := newFlags("audit")
	db := fs.String("db", "", "fleetd's database [$FLEETCTL_DB] (default "+defaultAuditDB+")")
	unit := fs.String("unit", "", "the unit (device id)")
	file := fs.String("file", "", "a log file to verify instead of the database")
	out := fs.String("out", "", "export: write here instead of stdout")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if _, err := parseFlags(fs, env, rest); err != nil {
		if errors.Is(err, errHelpShown) {
			return nil
		}
		return err
	}
	dbPath := *db
	if dbPath == "" {
		dbPath = getenv("FLEETCTL_DB")
	}
	if dbPath == "" {
		dbPath = defaultAuditDB
	}
	switch verb {
	case "verify":
		var results []auditResult
		if *file != "" {
			recs, err := audit.ReadFile(*file)
			if err != nil {
				return err
			}
			res := auditResult{Result: audit.Verify(recs, *unit)}
			results = append(results, res)
		} else {
			if *unit == "" {
				return errors.New("audit verify: say --unit ID (or --file FILE)")
			}
			var err error
			if results, err = verifyStored(ctx, dbPath, *unit); err != nil {
				return err
			}
		}
		return printAudit(env, *unit, *file, results, *asJSON)
	case "export":
		if *unit == "" {
			return errors.New("audit export: say --unit ID")
		}
		st, err := openDB(dbPath)
		if err != nil {
			return err
		}
		defer st.Close()
		chains, err := st.AuditChains(ctx, *unit)
		if err != nil {
			return err
		}
		var b bytes.Buffer
		for _, c := range chains {
			lines, err := st.AuditLines(ctx, *unit, c)
			if err != nil {
				return err
			}
			for _, l := range lines {
				b.Write(l)
				b.WriteByte('\n')
			}
		}
		if *out != "" {
			return os.WriteFile(*out, b.Bytes(), 0o600)
		}
		_, err = env.stdout.Write(b.Bytes())
		return err
	}
	return fmt.Errorf("audit: unknown verb %q: say verify or export", verb)
}

func openDB(path string) (*fleetd.Store, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("fleetd's database: %w (say --db FILE)", err)
	}
	return fleetd.OpenStore(path)
}

// verifyStored verifies every chain fleetd holds of unit, and compares
// the one the unit last reported with its high-water mark.
func verifyStored(ctx context.Context, path, unit string) ([]auditResult, error) {
	st, err := openDB(path)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	chains, err := st.AuditChains(ctx, unit)
	if err != nil {
		return nil, err
	}
	mark, _, hasMark, err := st.AuditMark(ctx, unit)
	if err != nil {
		return nil, err
	}
	if len(chains) == 0 && !hasMark {
		return nil, fmt.Errorf("fleetd holds no audit records of unit %s", unit)
	}
	if hasMark && !containsStr(chains, mark.Chain) {
		chains = append(chains, mark.Chain)
	}
	var out []auditResult
	for _, c := range chains {
		lines, err := st.AuditLines(ctx, unit, c)
		if err != nil {
			return nil, err
		}
		var recs []audit.Record
		var seqs []uint64
		for _, l := range lines {
			r, err := audit.Parse(l)
			if err != nil {
				return nil, err
			}
			recs = append(recs, r)
			seqs = append(seqs, r.Seq)
		}
		res := auditResult{Result: audit.Verify(recs, unit)}
		res.Chain = c
		if hasMark && mark.Chain == c {
			m := mark
			res.Mark = &m
			first := uint64(1)
			if res.OK() && res.First > 1 {
				first = res.First
			}
			res.Gaps = audit.Gaps(seqs, first, mark.Sent)
		}
		out = append(out, res)
	}
	return out, nil
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func printAudit(env *cmdEnv, unit, file string, results []auditResult, asJSON bool) error {
	bad := 0
	for i := range results {
		r := &results[i]
		switch {
		case !r.OK():
			r.Verdict = "FAILED: " + r.Problem.Message
			bad++
		case len(r.Gaps) > 0:
			var g []string
			for _, x := range r.Gaps {
				if x.From == x.To {
					g = append(g, fmt.Sprint(x.From))
				} else {
					g = append(g, fmt.Sprintf("%d-%d", x.From, x.To))
				}
			}
			r.Verdict = fmt.Sprintf("INCOMPLETE: the unit reports %d records sent, fleetd lacks %s", r.Mark.Sent, strings.Join(g, ", "))
			bad++
		default:
			r.Verdict = "OK"
		}
	}
	if asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return err
		}
	} else {
		what := "unit " + unit
		if file != "" {
			what = file
		}
		for _, r := range results {
			fmt.Fprintf(env.stdout, "%s chain %s: %s\n", what, r.Chain, r.Verdict)
			if r.OK() {
				fmt.Fprintf(env.stdout, "  records %d to %d verified (%d records", r.First, r.Last, r.Records)
				if r.Pruned > 0 {
					fmt.Fprintf(env.stdout, ", %d before them pruned under a signed checkpoint", r.Pruned)
				}
				fmt.Fprintf(env.stdout, "), signed by %s\n", r.Device)
			}
			if r.Mark != nil {
				fmt.Fprintf(env.stdout, "  the unit reports: %d written, %d sent\n", r.Mark.Head, r.Mark.Sent)
			}
		}
	}
	if bad > 0 {
		return fmt.Errorf("audit verify: %d of %d chains failed or are incomplete", bad, len(results))
	}
	return nil
}
