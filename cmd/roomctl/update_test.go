package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// roomctl status shows where the unit's system updates stand, from the
// state konsult-update writes (roomd --sim: sim-update next to the socket).
func TestStatusShowsUpdateState(t *testing.T) {
	sock := startRoomd(t)
	dir := filepath.Join(filepath.Dir(sock), "sim-update")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	st := "phase=idle\nbooted_slot=A\nbooted_version=2026.1201.1\nfrom_slot=B\nfrom_version=2026.1130.1\n" +
		"rolled_back_version=2026.1203.1\nrolled_back_reason=the shutter is not confirmed closed (after 300s on 2026.1203.1)\n" +
		"rolled_back_at=2026-12-02T03:10:00Z\nlast_failure=the shutter is not confirmed closed (after 300s on 2026.1203.1)\n"
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte(st), 0o644); err != nil {
		t.Fatal(err)
	}
	var out string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out, "ROLLED BACK") {
		if time.Now().After(deadline) {
			t.Fatalf("status never showed the rollback:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
		out, _ = roomctl(t, "--socket", sock, "status")
	}
	for _, want := range []string{
		"system       slot A, version 2026.1201.1",
		"slots        A 2026.1201.1, B 2026.1130.1",
		"update failed  the shutter is not confirmed closed",
		"ROLLED BACK  update to 2026.1203.1 (slot B): the shutter is not confirmed closed (after 300s on 2026.1203.1)",
	} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	js, err := roomctl(t, "--socket", sock, "status", "--json")
	if err != nil || !strings.Contains(js, `"rolled_back"`) || !strings.Contains(js, `"booted_version":"2026.1201.1"`) && !strings.Contains(js, `"booted_version": "2026.1201.1"`) {
		t.Errorf("status --json lacks the update state (%v):\n%s", err, js)
	}
}
