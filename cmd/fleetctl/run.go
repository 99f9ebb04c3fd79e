package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"
)

// subcommand is one "fleetctl NAME": to add one, write its func and list it
// in subcommands.
type subcommand struct {
	name    string
	args    string // synopsis after the name, for usage
	summary string
	run     func(ctx context.Context, env *cmdEnv, args []string) error
	notes   string // more help after the summary
}

func subcommands() []subcommand {
	return []subcommand{
		{"keygen", "--out DIR [--force] [--ca-dir DIR]", "create the fleet signing key (fleet.key) and the public key units pin (fleet.pub)", keygen, ""},
		{"sign", "[--key FILE | --ca-dir DIR] (--device ID | --group NAME) --version N [--expires 168h] [--urgent] [--out FILE] CONFIG.toml", "sign a config for a unit or a group", sign, ""},
		{"sign-command", "[--key FILE | --ca-dir DIR] (--device ID | --group NAME) [--seconds N] [--expires 5m] [--out FILE] NAME", "sign a command: join, leave, identify, reboot, report-now, doctor", signCommand, ""},
		{"push", "[--key FILE] [--ca-dir DIR] (--device ID | --group NAME) --version N [--urgent] [--expires 168h] [--wait 30s] [--json] CONFIG.toml | push --envelope FILE", "sign and publish a config, then wait for the units to apply or refuse it", push, pushNotes},
		{"status", "[--group NAME] [--json]", "list the units: online, call state, config versions, software version, last seen", status, brokerNotes},
		{"watch", "[--device ID | --group NAME] [--type T[,T]] [--count N] [--for D] [--json]", "print the units' events as they happen", watch, watchNotes},
		{"ca", "init --dir DIR --broker mqtts://HOST:8883 [--broker-host H,...] | crl [--out FILE]", "create the fleet CA, signing key, broker/admin certificates and the units' enrolment bundle; refresh the revocation list", caCmd, enrolNotes},
		{"enrol", "code [--count N] | codes | list [--all] [--json] | approve ID [--group G]... [--acl-out FILE] | reject ID [--reason TEXT]", "claim codes for installers; units waiting for approval; approve or reject them", enrolCmd, enrolNotes},
		{"acl", "[--out FILE]", "render the broker's ACL: the shipped rules plus each enrolled unit's groups", aclCmd, ""},
		{"revoke", "ID [--crl-out FILE]", "revoke a unit's certificate (the broker refuses it at its next connect, after Mosquitto restarts) and clear its retained topics", revokeCmd, ""},
		{"renew", "[--watch]", "sign the certificate renewals units ask for and send them back", renewCmd, ""},
		{"consult", "add --unit ID --at 2026-12-02T10:30 [--for 30m] | list [--unit ID] [--all] | cancel ID | import [--unit ID] FILE.ics", "book, list and cancel consultations in fleetd (one-button join); import a booking calendar", consultCmd, consultNotes},
		{"audit", "verify --unit ID [--db FILE] | verify --file FILE [--unit ID] | export --unit ID [--out FILE]", "verify a unit's signed audit chain as fleetd holds it (or a log file): the first edited, deleted, reordered or inserted record, and gaps", auditCmd, auditNotes},
		{"privacy-report", "(--unit ID | --group NAME | --all) [--html] [--out FILE] [--wait 15s]", "the privacy report of units, as each makes it from the config it runs on (Markdown or one print-ready HTML page)", privacyReportCmd, privacyNotes},
		{"update", "[--key FILE] [--ca-dir DIR] (--device ID | --group NAME) --url https://… --version V --sha256 HEX [--downgrade] [--reboot now|window] [--expires 30m] [--wait 10s] [--json]", "send a signed system update (RAUC bundle) to units, then print each unit's answer", updateCmd, updateNotes},
		{"rollout", "[--key FILE] --group G --version V --bundle https://… --sha256 HEX [--reboot now|window] [--waves 1,5%,25%,100%] [--threshold 10%] [--wave-timeout 30m] [--state FILE] | --resume --state FILE | status --state FILE", "update a group in waves that stop on their own when units fail or roll back", rolloutCmd, rolloutNotes},
		{"cmd", "[--key FILE] [--ca-dir DIR] (--device ID | --group NAME) [--seconds N] [--expires 5m] [--wait 10s] [--json] NAME", "sign and send a command, then wait for the units' results", sendCommand, cmdNotes},
	}
}

// cmdEnv is what every subcommand gets besides its arguments.
type cmdEnv struct {
	stdout, stderr io.Writer
	now            func() time.Time
	// log reports trouble along the way (a lost broker connection) on
	// stderr; results go to stdout. Nothing secret is ever logged: no key,
	// no config.
	log *slog.Logger
}

// now is the signing clock; tests replace it.
var now = time.Now

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	env := &cmdEnv{stdout: stdout, stderr: stderr, now: now, log: cliLogger(stderr)}
	if len(args) == 0 {
		usage(stderr)
		return errors.New("no command given: see fleetctl --help")
	}
	// "fleetctl --config FILE status", as roomd's demo and the docs write
	// it: the settings file is the one flag every broker command shares,
	// so it may come before the command too.
	var global []string
	for len(args) > 0 && (args[0] == "--config" || args[0] == "-config") {
		if len(args) < 2 {
			return errors.New("--config needs a file: fleetctl --config FILE COMMAND")
		}
		global, args = append(global, "--config", args[1]), args[2:]
	}
	for len(args) > 0 && (strings.HasPrefix(args[0], "--config=") || strings.HasPrefix(args[0], "-config=")) {
		global, args = append(global, args[0]), args[1:]
	}
	if len(args) == 0 {
		usage(stderr)
		return errors.New("no command given: see fleetctl --help")
	}
	name, rest := args[0], append(global, args[1:]...)
	switch name {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return nil
	}
	for _, c := range subcommands() {
		if c.name == name {
			return c.run(ctx, env, rest)
		}
	}
	return fmt.Errorf("unknown command %q: see fleetctl --help", name)
}

// cliLogger logs warnings as "fleetctl: warning: msg key=value" lines: a
// person reads them, so no timestamps or levels beyond that.
func cliLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			if len(groups) == 0 && a.Key == slog.MessageKey {
				return slog.String(slog.MessageKey, "fleetctl: warning: "+a.Value.String())
			}
			return a
		},
	}))
}

func usage(w io.Writer) {
	fmt.Fprint(w, "usage: fleetctl COMMAND [FLAGS] [ARGS]\n\nCommands:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range subcommands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, "\nRun fleetctl COMMAND --help for its flags.\n")
}

// newFlags returns a FlagSet for subcommand name that prints nothing by
// itself: parseFlags turns its errors into one line and --help into usage.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// errHelpShown tells a subcommand that --help was answered and it should
// return nil.
var errHelpShown = errors.New("help shown")

// parseFlags parses args allowing flags after positional arguments
// ("sign config.toml --version 3"), and returns the positionals.
func parseFlags(fs *flag.FlagSet, env *cmdEnv, args []string) ([]string, error) {
	var pos, afterDashes []string
	for i, a := range args {
		if a == "--" {
			args, afterDashes = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				printFlagUsage(fs, env.stdout)
				return nil, errHelpShown
			}
			return nil, fmt.Errorf("%s: %v: see fleetctl %s --help", fs.Name(), err, fs.Name())
		}
		if fs.NArg() == 0 {
			return append(pos, afterDashes...), nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func printFlagUsage(fs *flag.FlagSet, w io.Writer) {
	for _, c := range subcommands() {
		if c.name == fs.Name() {
			fmt.Fprintf(w, "usage: fleetctl %s %s\n\n%s.\n", c.name, c.args, strings.ToUpper(c.summary[:1])+c.summary[1:])
			if c.notes != "" {
				fmt.Fprintf(w, "\n%s", c.notes)
			}
			fmt.Fprint(w, "\nFlags:\n")
		}
	}
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

const brokerNotes = `The broker connection comes from --broker/--ca/--cert/--cert-key, else
FLEETCTL_BROKER/_CA/_CERT/_CERT_KEY, else ~/.config/konsult/fleetctl.toml
(or --config FILE) with the keys broker, ca, cert, cert_key, prefix; paths
in the file are relative to it. --cert is the fleet manager's certificate
(CN fleet-admin); --key is always the fleet signing key, by default
fleet.key in the CA folder (--ca-dir, $FLEETCTL_CA_DIR, or ca_dir in the
file): the key the units enrolled from it trust.
`

const pushNotes = `The units of a group are those whose retained reported state lists it.
The table shows per unit: applied, deferred (in a call; applies when it
ends), rejected with the unit's reason, rolled back, offline, never seen,
no answer, or revoked (with --ca-dir: the CA's ledger says so). Exit status
0 only if every unit applied it (or deferred it); revoked units do not count.
A version not above what the broker holds or a unit runs is refused before
publishing, and so is, when a CA folder is known, a config signed by a key
other than its fleet.key (no enrolled unit could verify it).

` + brokerNotes

const watchNotes = `One line per event: time, unit, type, data fields. QoS 1 duplicates (same
event id) are dropped. Runs until interrupted, --count or --for.

` + brokerNotes

const cmdNotes = `Commands: join, leave, identify [--seconds N], reboot, report-now, doctor.
doctor runs each unit's self-check (what roomctl doctor shows on the unit:
wiring, camera, microphone, encoder choice) and prints it under the table;
units on the Konsult image have no login, so this is how to see them.

Waits for each unit's command_done or command_refused. Exit status 0 only
if every unit carried it out (and, for doctor, every check passed).

` + brokerNotes
