package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/deploy/mosquitto"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/fleetd"
	"github.com/konsult/konsult/provisioning/manager"
)

const privacyNotes = `Each unit makes its own report from the config it runs on (the same as
roomctl privacy-report on the unit): fleetctl sends the signed
privacy-report command and prints what the units answer. --all asks every
unit fleetctl status lists, one after the other. A unit that does not
answer within --wait is listed at the end.

A unit cannot see the fleet manager's servers, so its report states what
fleetd and the broker keep as shipped. --fleetd-config FILE (fleetd.toml:
its [retention]) and --broker-config FILE (mosquitto.conf: persistence,
retained messages, queue bounds, session expiry) restate those lines from
the files the servers really run with; a file that does not read is an
error before any unit is asked.
`

// privacyReportCmd is fleetctl privacy-report.
func privacyReportCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("privacy-report")
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in the CA folder, --ca-dir)")
	caDir := addCADirUsage(fs, "the fleet CA directory: its fleet.key is the default --key [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
	unit := fs.String("unit", "", "one unit (device id)")
	group := fs.String("group", "", "every unit in this group")
	all := fs.Bool("all", false, "every unit the fleet knows")
	html := fs.Bool("html", false, "one self-contained, print-ready HTML page (a printed page per unit) instead of Markdown")
	out := fs.String("out", "", "write the report here instead of stdout")
	wait := fs.Duration("wait", 15*time.Second, "how long to wait for each unit's report")
	fleetdConf := fs.String("fleetd-config", "", "fleetd's config file (fleetd.toml): state the retention it really sets, not the shipped default")
	brokerConf := fs.String("broker-config", "", "the broker's mosquitto.conf: state the persistence and queue bounds it really sets, not the shipped ones")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("privacy-report: unexpected argument %q", pos[0])
	}
	n := 0
	for _, set := range []bool{*unit != "", *group != "", *all} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New("privacy-report: give exactly one of --unit ID, --group NAME or --all")
	}
	// The files first: a wrong one is reported before any unit is asked.
	restate, err := serverRetention(*fleetdConf, *brokerConf)
	if err != nil {
		return fmt.Errorf("privacy-report: %w", err)
	}
	key, err := keyOrDefault(*keyPath, caDir)
	if err != nil {
		return fmt.Errorf("privacy-report: %w", err)
	}
	if key == "" {
		return errKeyRequired("privacy-report")
	}
	if err := bs.resolve("privacy-report"); err != nil {
		return err
	}
	var targets []fleet.Target
	switch {
	case *unit != "":
		targets = []fleet.Target{{Device: *unit}}
	case *group != "":
		targets = []fleet.Target{{Group: *group}}
	default:
		_, revoked, err := caFolder("privacy-report", caDir)
		if err != nil {
			return err
		}
		units, err := manager.Status(ctx, bs.broker(), env.log, "", revoked)
		if err != nil {
			return fmt.Errorf("privacy-report: %w", err)
		}
		for _, u := range units {
			targets = append(targets, fleet.Target{Device: u.Unit})
		}
		if len(targets) == 0 {
			return errors.New("privacy-report: the fleet knows no unit yet")
		}
	}
	var reports []report.Report
	var missing []string
	for _, tg := range targets {
		if err := tg.Validate(); err != nil {
			return fmt.Errorf("privacy-report: %w", err)
		}
		e, p, err := manager.SignCommandFile(key, tg, fleet.CommandPrivacyReport, nil, 5*time.Minute, env.now())
		if err != nil {
			return fmt.Errorf("privacy-report: %w", err)
		}
		res, err := manager.SendCommand(ctx, bs.broker(), env.log, e, p, *wait, nil)
		if err != nil {
			return fmt.Errorf("privacy-report: %w", err)
		}
		for _, r := range res {
			var rep report.Report
			if r.Result != manager.ResDone || len(r.Report) == 0 || json.Unmarshal(r.Report, &rep) != nil {
				missing = append(missing, r.Unit+" ("+r.Result+")")
				continue
			}
			if rep.Unit == "" {
				rep.Unit = r.Unit
			}
			restate(&rep)
			reports = append(reports, rep)
		}
	}
	var text string
	if *html {
		text = report.HTMLAll(reports)
	} else {
		parts := make([]string, len(reports))
		for i, r := range reports {
			parts[i] = r.Markdown()
		}
		text = strings.Join(parts, "\n---\n\n")
	}
	if *out != "" {
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			return err
		}
	} else if _, err := env.stdout.Write([]byte(text)); err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("privacy-report: no report from %s", strings.Join(missing, ", "))
	}
	return nil
}

// serverRetention reads what fleetd and the broker are configured to keep
// (either file may be ""), and returns what restates it in a unit's report.
func serverRetention(fleetdConf, brokerConf string) (func(*report.Report), error) {
	var ret fleetd.RetentionConfig
	var broker map[string]string
	var err error
	if fleetdConf != "" {
		if ret, err = fleetd.ReadRetention(fleetdConf); err != nil {
			return nil, err
		}
	}
	if brokerConf != "" {
		if broker, err = mosquitto.ReadRetention(brokerConf); err != nil {
			return nil, err
		}
	}
	return func(r *report.Report) {
		if fleetdConf != "" {
			r.SetFleetdRetention(fleetdConf, ret.Audit.Duration, ret.Records.Duration)
		}
		if broker != nil {
			r.SetBrokerRetention(brokerConf, broker)
		}
	}, nil
}
