package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/appliance/report"
)

// privacyReport is roomctl privacy-report: the running unit's report over
// the local API, or with --config one made offline from a config file (no
// self-check, no fleet state).
func privacyReport(ctx context.Context, c *localapi.Client, args []string, stdout io.Writer, jsonOut bool) error {
	fs := flag.NewFlagSet("privacy-report", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	html := fs.Bool("html", false, "a self-contained, print-ready HTML page instead of Markdown")
	cfgFile := fs.String("config", "", "make the report offline from this config file (roomd.toml) instead of asking the running unit")
	out := fs.String("out", "", "write the report to this file instead of stdout")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("privacy-report: %w: usage: roomctl privacy-report [--html] [--config FILE] [--out FILE]", err)
	}
	var r report.Report
	if *cfgFile != "" {
		cfg, err := config.Load(*cfgFile)
		if err != nil {
			return err
		}
		r = report.Build(report.Source{Config: cfg})
	} else if err := c.PrivacyReport(ctx, &r); err != nil {
		return err
	}
	var text string
	switch {
	case jsonOut:
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		text = string(b) + "\n"
	case *html:
		text = r.HTML()
	default:
		text = r.Markdown()
	}
	if *out != "" {
		return os.WriteFile(*out, []byte(text), 0o644)
	}
	_, err := io.WriteString(stdout, text)
	return err
}
