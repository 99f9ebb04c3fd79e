package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/konsult/konsult/provisioning/fleetd"
)

const defaultConfig = "/etc/konsult/fleetd.toml"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", defaultConfig, "fleetd's TOML config (docs/FLEETD.md)")
	check := fs.Bool("check", false, "check the config, open the database (running its migrations) and exit")
	verbose := fs.Bool("v", false, "log every token and schedule, not only trouble")
	schedKey := fs.Bool("schedule-key", false, "print the fleet config line that authorises fleetd's schedule key on the units (making the key if it has none) and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: fleetd takes only flags", fs.Arg(0))
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg, err := fleetd.LoadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *schedKey {
		return fleetd.WriteScheduleKeySteps(cfg, stdout)
	}
	svc, err := fleetd.New(cfg, log)
	if err != nil {
		return err
	}
	defer svc.Close()
	if *check {
		if err := svc.CheckPatientWeb(); err != nil {
			return err
		}
		v, err := svc.Store().Version()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "fleetd: config %s is valid; database %s at schema version %d\n", *cfgPath, cfg.Database, v)
		return nil
	}
	return svc.Run(ctx)
}
