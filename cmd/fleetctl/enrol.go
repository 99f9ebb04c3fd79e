package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

func openCA(cmd string, dir *caDirFlag) (*ca.CA, error) {
	d, err := dir.resolve()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	if d == "" {
		return nil, fmt.Errorf("%s: no fleet CA: pass --ca-dir DIR (made by fleetctl ca init), set FLEETCTL_CA_DIR, or put ca_dir = \"...\" in the settings file", cmd)
	}
	c, err := ca.Open(d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return c, nil
}

// caCmd is "fleetctl ca init|crl".
const caUsage = `usage: fleetctl ca init --dir DIR --broker mqtts://HOST:8883 [--broker-host H,...] [--name NAME]
       fleetctl ca crl [--ca-dir DIR] [--out FILE]

init  create the fleet CA, the fleet signing key, the broker's and the fleet
      manager's certificates and the units' enrolment bundle in DIR
crl   rewrite the revocation list (valid 10 years; OpenSSL refuses every
      client once it lapses) and optionally copy it to the broker
Each subcommand takes --help.
`

const enrolUsage = `usage: fleetctl enrol code [--count N] [--note TEXT] [--valid 720h]
       fleetctl enrol codes
       fleetctl enrol list [--all] [--json]
       fleetctl enrol approve ID [--group G]... [--acl-out FILE] [--unit-broker URL] [--force]
       fleetctl enrol reject ID [--reason TEXT]

code     make claim codes for installers (one per unit; valid 30 days
         unless --valid says otherwise, 0 = never expire)
codes    list the claim codes, used or not
list     units waiting for approval: device, model, version, claim code,
         first seen, and why one cannot be approved ("contested": two
         units sent the same claim code)
approve  sign the unit's certificate and send it with the fleet key, the
         broker and its groups; a contested code needs --force; --acl-out
         writes the broker's ACL with the unit in it first
reject   send the unit a refusal it shows on roomctl status
All take --ca-dir (or $FLEETCTL_CA_DIR, or ca_dir in the settings file); list, approve and reject also the
broker settings. Each subcommand takes --help.
`

// groupHelp answers "fleetctl ca --help" and the like.
func groupHelp(env *cmdEnv, args []string, usage string) bool {
	if len(args) > 0 && (args[0] == "--help" || args[0] == "-h" || args[0] == "-help" || args[0] == "help") {
		fmt.Fprint(env.stdout, usage)
		return true
	}
	return false
}

func caCmd(ctx context.Context, env *cmdEnv, args []string) error {
	if groupHelp(env, args, caUsage) {
		return nil
	}
	if len(args) == 0 {
		return errors.New("ca: give a subcommand: init or crl (see fleetctl ca --help)")
	}
	switch args[0] {
	case "init":
		return caInit(env, args[1:])
	case "crl":
		return caCRL(env, args[1:])
	}
	return fmt.Errorf("ca: unknown subcommand %q: use init or crl", args[0])
}

func caInit(env *cmdEnv, args []string) error {
	fs := newFlags("ca init")
	dir := fs.String("dir", "", "directory for the fleet CA (created 0700; keep it off the broker, backed up)")
	name := fs.String("name", "Konsult fleet CA", "the CA's name")
	broker := fs.String("broker", "", "the broker units reach, mqtts://HOST:8883 (its host goes into the broker's certificate; fleetctl reaches the same host on 8884)")
	hosts := fs.String("broker-host", "", "more names or addresses for the broker's certificate, comma-separated")
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("ca init: unexpected argument %q", pos[0])
	}
	if *dir == "" || *broker == "" {
		return errors.New("ca init: --dir and --broker are required, e.g. fleetctl ca init --dir fleet-ca --broker mqtts://broker.clinic.example:8883")
	}
	r, err := manager.InitCA(*dir, *name, *broker, strings.Split(*hosts, ","))
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	brokerDir, adminDir, enrolDir := r.BrokerDir, r.AdminDir, r.EnrolDir
	fmt.Fprintf(env.stdout, `fleet CA ready in %[1]s (keep it private and backed up: ca.key and fleet.key are the fleet's trust)
  %[2]s/    copy to the broker's /etc/mosquitto/konsult/ (server.crt, server.key, ca.crt, crl.pem, acl)
  %[3]s/     fleetctl's own certificate and settings: fleetctl --config %[3]s/fleetctl.toml ...
  %[4]s/     the enrolment bundle every new unit ships with (README.md "Enrolment")
next: fleetctl enrol code --ca-dir %[1]s   (a claim code for each unit an installer sets up)
`, *dir, brokerDir, adminDir, enrolDir)
	return nil
}

func caCRL(env *cmdEnv, args []string) error {
	fs := newFlags("ca crl")
	dir := addCADir(fs)
	out := fs.String("out", "", "also copy the revocation list here (e.g. crl.pem, to copy to the broker's /etc/mosquitto/konsult/: the CA stays off the broker)")
	if _, err := parseFlags(fs, env, args); err != nil {
		return helpIsNil(err)
	}
	c, err := openCA("ca crl", dir)
	if err != nil {
		return err
	}
	if err := c.Update(func(*ca.Ledger) error { return nil }); err != nil {
		return err
	}
	return copyCRL(env, c, *out)
}

func copyCRL(env *cmdEnv, c *ca.CA, out string) error {
	src, err := manager.CopyCRL(c, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "revocation list %s (valid until %s): restart Mosquitto to load it (systemctl restart mosquitto; Mosquitto 2.0 does not reload it on SIGHUP)\n",
		src, time.Now().Add(ca.CRLLifetime).Format("2006-01-02"))
	return nil
}

// enrolCmd is "fleetctl enrol code|codes|list|approve|reject".
func enrolCmd(ctx context.Context, env *cmdEnv, args []string) error {
	if groupHelp(env, args, enrolUsage) {
		return nil
	}
	if len(args) == 0 {
		return errors.New("enrol: give a subcommand: code, codes, list, approve or reject")
	}
	rest := args[1:]
	switch args[0] {
	case "code":
		return enrolCode(env, rest)
	case "codes":
		return enrolCodes(env, rest)
	case "list":
		return enrolList(ctx, env, rest)
	case "approve":
		return enrolDecide(ctx, env, rest, true)
	case "reject":
		return enrolDecide(ctx, env, rest, false)
	}
	return fmt.Errorf("enrol: unknown subcommand %q: use code, codes, list, approve or reject", args[0])
}

func enrolCode(env *cmdEnv, args []string) error {
	fs := newFlags("enrol code")
	dir := addCADir(fs)
	n := fs.Int("count", 1, "how many codes")
	note := fs.String("note", "", "a note kept with the codes, e.g. the clinic or installer")
	valid := fs.Duration("valid", 30*24*time.Hour, "how long an unused code can enrol a unit (0: never expires)")
	if _, err := parseFlags(fs, env, args); err != nil {
		return helpIsNil(err)
	}
	if *n < 1 || *n > 1000 {
		return errors.New("enrol code: --count must be 1 to 1000")
	}
	if *valid < 0 {
		return errors.New("enrol code: --valid must be 0 (never expires) or more, e.g. 168h")
	}
	c, err := openCA("enrol code", dir)
	if err != nil {
		return err
	}
	codes, err := manager.NewClaimCodes(c, *n, *note, *valid, env.now())
	if err != nil {
		return err
	}
	for _, code := range codes {
		fmt.Fprintln(env.stdout, code)
	}
	return nil
}

func enrolCodes(env *cmdEnv, args []string) error {
	fs := newFlags("enrol codes")
	dir := addCADir(fs)
	if _, err := parseFlags(fs, env, args); err != nil {
		return helpIsNil(err)
	}
	c, err := openCA("enrol codes", dir)
	if err != nil {
		return err
	}
	l, err := c.Ledger()
	if err != nil {
		return err
	}
	var rows [][]string
	for _, cc := range l.ClaimCodes {
		used := "unused"
		switch {
		case cc.UsedBy != "":
			used = cc.UsedBy + " " + clock(cc.UsedAt)
		case !cc.Expires.IsZero() && env.now().After(cc.Expires):
			used = "expired"
		}
		expires := "never"
		if !cc.Expires.IsZero() {
			expires = clock(cc.Expires)
		}
		rows = append(rows, []string{cc.Code, clock(cc.Created), expires, used, cc.Note})
	}
	return table(env.stdout, []string{"CLAIM CODE", "CREATED", "EXPIRES", "USED BY", "NOTE"}, rows)
}

func enrolList(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("enrol list")
	dir := addCADir(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	all := fs.Bool("all", false, "also list units already decided (approved, rejected, revoked)")
	bs := addBrokerFlags(fs)
	if _, err := parseFlags(fs, env, args); err != nil {
		return helpIsNil(err)
	}
	c, err := openCA("enrol list", dir)
	if err != nil {
		return err
	}
	if err := bs.resolve("enrol list"); err != nil {
		return err
	}
	fc, reqs, err := manager.PendingRequests(ctx, bs.broker(), env.log)
	if err != nil {
		return fmt.Errorf("enrol list: %w", err)
	}
	fc.Close()
	l, err := c.Ledger()
	if err != nil {
		return err
	}
	out := manager.EnrolList(reqs, l, *all)
	for i, r := range out {
		// What a request says is cleaned before it reaches JSON, too.
		out[i].Device, out[i].Model, out[i].Version, out[i].Detail = clean(r.Device), clean(r.Model), clean(r.Version), oneLine(r.Detail)
	}
	if *asJSON {
		return writeJSON(env.stdout, out)
	}
	if len(out) == 0 {
		fmt.Fprintln(env.stderr, "no unit is waiting for approval")
		return nil
	}
	rows := make([][]string, len(out))
	for i, r := range out {
		rows[i] = []string{r.Device, r.Model, r.Version, r.ClaimCode, clock(r.FirstSeen), r.Status, r.Detail}
	}
	return table(env.stdout, []string{"DEVICE", "MODEL", "VERSION", "CLAIM CODE", "FIRST SEEN", "STATUS", "DETAIL"}, rows)
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func enrolDecide(ctx context.Context, env *cmdEnv, args []string, approve bool) error {
	cmd := map[bool]string{true: "enrol approve", false: "enrol reject"}[approve]
	fs := newFlags(cmd)
	dir := addCADir(fs)
	var groups stringList
	fs.Var(&groups, "group", "approve: a group the unit joins (repeat for more; later groups win in the merge)")
	reason := fs.String("reason", "", "reject: what the installer is told")
	force := fs.Bool("force", false, "approve: approve although another pending unit sent the same claim code (only for the device id the installer read off the unit)")
	unitBroker := fs.String("unit-broker", "", "approve: the broker the unit uses from now on (default: the host of --broker on port 8883, the units' listener)")
	aclOut := fs.String("acl-out", "", "approve: write the broker's ACL (as fleetctl acl renders it, with this unit) to FILE before sending the approval (e.g. acl; copy it to the broker's /etc/mosquitto/konsult/acl and reload Mosquitto)")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) != 1 {
		return fmt.Errorf("%s: give the unit's device id (from fleetctl enrol list)", cmd)
	}
	id := pos[0]
	c, err := openCA(cmd, dir)
	if err != nil {
		return err
	}
	if err := bs.resolve(cmd); err != nil {
		return err
	}
	if !approve {
		if *aclOut != "" {
			return errors.New("enrol reject: --acl-out is for approve")
		}
		if err := manager.Reject(ctx, bs.broker(), env.log, c, id, *reason); err != nil {
			return decideErr(cmd, id, err)
		}
		fmt.Fprintf(env.stdout, "rejected %s\n", id)
		return nil
	}
	o := manager.ApproveOptions{Groups: groups, UnitBroker: *unitBroker, Force: *force, ACLOut: *aclOut}
	if err := manager.Approve(ctx, bs.broker(), env.log, c, id, o); err != nil {
		return decideErr(cmd, id, err)
	}
	if *aclOut != "" {
		fmt.Fprintf(env.stdout, "wrote %s with %s in it, then sent the approval: reload Mosquitto now (SIGHUP) so it applies\n", *aclOut, id)
	}
	fmt.Fprintf(env.stdout, "approved %s (groups: %s); it installs its certificate and reconnects as itself\n", id, strings.Join(groups, ", "))
	if len(groups) > 0 && *aclOut == "" {
		fmt.Fprintf(env.stdout, "the broker must let it read its groups: fleetctl acl --ca-dir %s --out acl, copy it to the broker's /etc/mosquitto/konsult/acl, then reload Mosquitto (SIGHUP); or approve with --acl-out FILE next time\n", c.Dir)
	}
	return nil
}

func decideErr(cmd, id string, err error) error {
	var ce *manager.ContestedError
	switch {
	case errors.Is(err, manager.ErrNoRequest):
		return fmt.Errorf("%s: no enrolment request from %s on the broker: check the id with fleetctl enrol list", cmd, id)
	case errors.As(err, &ce):
		others := make([]string, len(ce.Others))
		for i, o := range ce.Others {
			others[i] = clean(o)
		}
		return fmt.Errorf("%s: refused: %s", cmd, manager.ContestedMessage(clean(ce.ID), others))
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// aclCmd renders the broker ACL from the CA's ledger: the shipped rules
// plus each approved unit's groups.
func aclCmd(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("acl")
	dir := addCADir(fs)
	out := fs.String("out", "", "write the ACL here instead of printing it")
	admin := fs.String("admin", "fleet-admin", "the fleet manager's certificate CN")
	if _, err := parseFlags(fs, env, args); err != nil {
		return helpIsNil(err)
	}
	c, err := openCA("acl", dir)
	if err != nil {
		return err
	}
	text, err := manager.RenderACL(c, *admin)
	if err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	if *out == "" {
		_, err = fmt.Fprint(env.stdout, text)
		return err
	}
	if err := manager.WriteACL(c, *admin, *out); err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	fmt.Fprintf(env.stdout, "wrote %s: reload Mosquitto (SIGHUP) to apply it\n", *out)
	return nil
}

// revokeCmd revokes a unit's certificates and clears its retained topics.
func revokeCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("revoke")
	dir := addCADir(fs)
	reason := fs.String("reason", "revoked by the fleet manager", "why (kept in the CA's ledger)")
	out := fs.String("crl-out", "", "also copy the new revocation list here (e.g. crl.pem, to copy to the broker's /etc/mosquitto/konsult/: the CA stays off the broker)")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) != 1 {
		return errors.New("revoke: give the unit's device id")
	}
	c, err := openCA("revoke", dir)
	if err != nil {
		return err
	}
	l, err := c.Ledger()
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	if u := l.Units[pos[0]]; u != nil && u.Status == "revoked" {
		// Run again to clear what the first run could not reach.
		fmt.Fprintf(env.stdout, "%s was already revoked %s\n", pos[0], clock(u.Decided))
	} else {
		n, err := c.Revoke(pos[0], *reason)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "revoked %d certificate(s) of %s\n", n, pos[0])
	}
	if err := copyCRL(env, c, *out); err != nil {
		return err
	}
	// The ACL still grants the unit its group topics until it is rendered
	// again from the ledger, which no longer lists it as approved.
	fmt.Fprintf(env.stdout, "re-render the broker's ACL without it: fleetctl acl --ca-dir %s --out acl, copy it to the broker's /etc/mosquitto/konsult/acl, then reload Mosquitto (SIGHUP)\n", c.Dir)
	err = bs.resolve("revoke")
	if err == nil {
		err = manager.ClearRetained(ctx, bs.broker(), env.log, pos[0])
	}
	if err != nil {
		return fmt.Errorf("revoke: %s is revoked in the CA, but its retained status, reported state and config stay on the broker (%w): run fleetctl revoke %s again with the broker settings", pos[0], err, pos[0])
	}
	fmt.Fprintf(env.stdout, "cleared the retained status, reported state and config of %s on the broker\n", pos[0])
	return nil
}

// renewCmd signs the renewal requests units put in their reported
// documents and sends each its certificate with the certificate command.
func renewCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("renew")
	dir := addCADir(fs)
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in --ca-dir)")
	watch := fs.Bool("watch", false, "keep running and renew as requests arrive (the fleet's renewal service)")
	bs := addBrokerFlags(fs)
	if _, err := parseFlags(fs, env, args); err != nil {
		return helpIsNil(err)
	}
	c, err := openCA("renew", dir)
	if err != nil {
		return err
	}
	kp := *keyPath
	if kp == "" {
		kp = filepath.Join(c.Dir, manager.FleetKeyFile)
	}
	priv, err := fleet.LoadPrivateKey(kp)
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	if err := bs.resolve("renew"); err != nil {
		return err
	}
	renewed := 0
	err = manager.Renew(ctx, bs.broker(), env.log, c, priv, env.now, *watch, func(r manager.Renewal) {
		if r.Err != nil {
			fmt.Fprintf(env.stderr, "renew: %s: %s\n", clean(r.Unit), clean(r.Err.Error()))
			return
		}
		renewed++
		fmt.Fprintf(env.stdout, "renewed %s: new certificate sent\n", clean(r.Unit))
	})
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	if !*watch && renewed == 0 {
		fmt.Fprintln(env.stderr, "no unit asked for a new certificate")
	}
	return nil
}

const enrolNotes = `Enrolment commands read the fleet CA from --ca-dir (or $FLEETCTL_CA_DIR, or
ca_dir in the settings file);
list, approve, reject and renew also reach the broker as the fleet manager.
A unit waits in "enrol list" once an installer gives it a claim code; approve
signs its certificate and sends it, the fleet's public key, the broker and
its groups. See docs/FLEETCTL.md and README.md "Enrolment".`
