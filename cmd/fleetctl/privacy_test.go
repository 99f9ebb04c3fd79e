package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/deploy/mosquitto"
)

// withPrivacyReport makes the unit answer the privacy-report command with
// its report from the built-in config.
func withPrivacyReport(t *testing.T) unitOpt {
	c, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	return func(o *agent.Options, _ *testUnit) {
		o.PrivacyReport = func(context.Context) any { return report.Build(report.Source{Config: c}) }
	}
}

// TestPrivacyReportStatesTheServersRetention (issue 24): the unit knows
// only the shipped defaults of fleetd and the broker; with --fleetd-config
// and --broker-config the report states what those files set, and follows
// them when they change. A malformed file is refused before any unit is
// asked, naming the file and the fix.
func TestPrivacyReportStatesTheServersRetention(t *testing.T) {
	f := startFleet(t, map[string][]string{"u1": {"ward-a"}})
	f.startUnit("u1", []string{"ward-a"}, withPrivacyReport(t))
	dir := t.TempDir()
	fleetdConf := filepath.Join(dir, "fleetd.toml")
	brokerConf := filepath.Join(dir, "mosquitto.conf")
	write := func(p, text string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ask := func(extra ...string) (string, error) {
		t.Helper()
		out, errOut, err := f.fleetctl(append([]string{"privacy-report", "--unit", "u1", "--key", f.key}, extra...)...)
		return out + errOut, err
	}

	// Without the files: the shipped defaults, said to be such.
	md, err := ask()
	if err != nil || !strings.Contains(md, "365 days unless the fleet manager set another") || !strings.Contains(md, "--fleetd-config states fleetd's own") {
		t.Fatalf("report without the files: %v\n%s", err, md)
	}

	base := "database = \"/var/lib/konsult-fleetd/fleetd.db\"\nca_dir = \"/var/lib/konsult-fleet/ca\"\n[livekit]\napi_key = \"k\"\napi_secret_file = \"/nonexistent/secret\"\n"
	write(fleetdConf, base+"[retention]\naudit = \"180d\"\nrecords = \"30d\"\n")
	write(brokerConf, mosquitto.Conf)
	md, err = ask("--fleetd-config", fleetdConf, "--broker-config", brokerConf)
	if err != nil {
		t.Fatalf("%v\n%s", err, md)
	}
	for _, want := range []string{"from " + fleetdConf + ": audit records kept by fleetd for 180 days", "for 30 days ([retention] records)",
		"from " + brokerConf + ": kept on the broker's disk in /var/lib/mosquitto/, saved every 60 s", "up to 100000 messages and 64 MiB a reader", "dropped after 30d"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "365 days unless") {
		t.Errorf("the report still states the default beside the configured retention:\n%s", md)
	}

	// The files change; so does the report. A broker that never drops a
	// gone reader's queue is flagged.
	write(fleetdConf, base+"[retention]\naudit = \"400d\"\n")
	write(brokerConf, strings.Replace(strings.Replace(mosquitto.Conf, "persistent_client_expiration 30d\n", "", 1), "persistence true", "persistence false", 1))
	md, err = ask("--fleetd-config", fleetdConf, "--broker-config", brokerConf)
	if err != nil {
		t.Fatalf("%v\n%s", err, md)
	}
	for _, want := range []string{"kept by fleetd for 400 days", "for 90 days ([retention] records)", "in the broker's memory only", "never dropped (no persistent_client_expiration)"} {
		if !strings.Contains(md, want) {
			t.Errorf("report after the change lacks %q:\n%s", want, md)
		}
	}

	// Malformed files: a clear error, naming the file and the fix.
	write(fleetdConf, base+"[retention\naudit = 180d\n")
	if out, err := ask("--fleetd-config", fleetdConf); err == nil || !strings.Contains(err.Error(), fleetdConf) || !strings.Contains(err.Error(), "not valid TOML") || !strings.Contains(err.Error(), "fix the file") {
		t.Errorf("malformed fleetd.toml: %v\n%s", err, out)
	}
	write(fleetdConf, base+"[retention]\naudit = \"2h\"\n")
	if _, err := ask("--fleetd-config", fleetdConf); err == nil || !strings.Contains(err.Error(), "at least 1d") {
		t.Errorf("fleetd.toml with too short a retention: %v", err)
	}
	write(brokerConf, "persistence true\nmax_queued_messages lots\n")
	if _, err := ask("--broker-config", brokerConf); err == nil || !strings.Contains(err.Error(), brokerConf+" line 2") || !strings.Contains(err.Error(), "max_queued_messages") {
		t.Errorf("malformed mosquitto.conf: %v", err)
	}
	if _, err := ask("--broker-config", filepath.Join(dir, "missing.conf")); err == nil || !strings.Contains(err.Error(), "missing.conf") {
		t.Errorf("missing mosquitto.conf: %v", err)
	}
}
