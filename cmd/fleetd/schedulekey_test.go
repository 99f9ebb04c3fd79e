package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
)

// fleetd -schedule-key makes fleetd's key on a CA folder that has no
// fleet.key, and prints the fleet config line that authorises it (the line
// is what the unit's config takes) and the fleetd.toml line that moves
// fleetd onto it; with that line fleetd runs without the fleet key, and
// without it and without fleet.key it refuses to start, naming both fixes.
func TestScheduleKeyPrintsTheAuthorisingLine(t *testing.T) {
	dir := t.TempDir()
	c, err := ca.Init(filepath.Join(dir, "ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(c.Dir, "fleet.key")) // fleetd must not need it
	conf := fmt.Sprintf("database = %q\nca_dir = %q\n[broker]\nurl = \"tcp://127.0.0.1:1\"\n[livekit]\napi_key = \"k\"\napi_secret = \"s\"\n",
		filepath.Join(dir, "db", "fleetd.db"), c.Dir)
	cfgPath := filepath.Join(dir, "fleetd.toml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	err = run(context.Background(), []string{"-config", cfgPath, "-check"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "schedule_key") || !strings.Contains(err.Error(), "fleet.key") {
		t.Fatalf("fleetd -check with neither a schedule_key nor fleet.key: %v, want both named", err)
	}
	if err := run(context.Background(), []string{"-config", cfgPath, "-schedule-key"}, &out, &errb); err != nil {
		t.Fatalf("fleetd -schedule-key: %v (%s)", err, errb.String())
	}
	priv, err := fleet.LoadPrivateKey(filepath.Join(dir, "db", "schedule.key"))
	if err != nil {
		t.Fatalf("schedule.key beside the database: %v", err)
	}
	pub := priv.Public()
	line, fleetdLine := "", ""
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "schedule_keys = [") {
			line = l
		}
		if strings.HasPrefix(l, "schedule_key = ") {
			fleetdLine = l
		}
	}
	q := strings.TrimSuffix(strings.TrimPrefix(line, `schedule_keys = ["`), `"]`)
	k, err := fleet.ParseScheduleKey(q)
	if err != nil || !k.Equal(pub) {
		t.Fatalf("printed %q: not fleetd's key (%v)", out.String(), err)
	}
	// The fleet config line parses as the unit's config does.
	var unitCfg struct {
		Fleet struct {
			ScheduleKeys []string `toml:"schedule_keys"`
		} `toml:"fleet"`
	}
	if _, err := toml.Decode("[fleet]\n"+line+"\n", &unitCfg); err != nil || len(unitCfg.Fleet.ScheduleKeys) != 1 {
		t.Fatalf("%q in [fleet]: %v", line, err)
	}
	// fleetd.toml with the printed line: fleetd starts without fleet.key.
	if fleetdLine == "" {
		t.Fatalf("no schedule_key line for fleetd.toml in %q", out.String())
	}
	if err := os.WriteFile(cfgPath, []byte(fleetdLine+"\n"+conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"-config", cfgPath, "-check"}, io.Discard, &errb); err != nil {
		t.Fatalf("fleetd -check with schedule_key and no fleet.key: %v", err)
	}
	// A second run prints the same key: it is made once.
	out.Reset()
	if err := run(context.Background(), []string{"-config", cfgPath, "-schedule-key"}, &out, &errb); err != nil || !strings.Contains(out.String(), q) {
		t.Fatalf("second run: %v %q", err, out.String())
	}
}
