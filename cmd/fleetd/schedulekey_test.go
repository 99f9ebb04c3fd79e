package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
)

// fleetd -schedule-key makes fleetd's key on a CA folder that has no
// fleet.key, and prints the fleet config line that authorises it; the
// line is what the unit's config takes.
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
	if err := run(context.Background(), []string{"-config", cfgPath, "-schedule-key"}, &out, &errb); err != nil {
		t.Fatalf("fleetd -schedule-key: %v (%s)", err, errb.String())
	}
	priv, err := fleet.LoadPrivateKey(filepath.Join(dir, "db", "schedule.key"))
	if err != nil {
		t.Fatalf("schedule.key beside the database: %v", err)
	}
	pub := priv.Public()
	line := ""
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "[fleet] schedule_keys = [") {
			line = l
		}
	}
	q := strings.TrimSuffix(strings.TrimPrefix(line, `[fleet] schedule_keys = ["`), `"]`)
	k, err := fleet.ParseScheduleKey(q)
	if err != nil || !k.Equal(pub) {
		t.Fatalf("printed %q: not fleetd's key (%v)", out.String(), err)
	}
	// A second run prints the same key: it is made once.
	out.Reset()
	if err := run(context.Background(), []string{"-config", cfgPath, "-schedule-key"}, &out, &errb); err != nil || !strings.Contains(out.String(), q) {
		t.Fatalf("second run: %v %q", err, out.String())
	}
}
