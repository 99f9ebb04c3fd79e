package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/audit"
)

// waitState polls roomctl status until it shows state.
func waitState(t *testing.T, sock, state string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := roomctl(t, "--socket", sock, "status", "--json")
		var st struct {
			State string `json:"state"`
		}
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s within 10s: %v\n%s", state, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStandaloneUnitKeepsItsAuditLog (issue 24): a unit with its fleet
// off keeps the audit log all the same. A real roomd --sim, fleet off,
// goes through privacy, a call and mute; roomctl audit verify passes on
// the unit's log; a copy tampered with each of four ways fails naming the
// record; the privacy report lists the call.
func TestStandaloneUnitKeepsItsAuditLog(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "roomd.toml")
	if err := os.WriteFile(cfg, []byte("[fleet]\nenabled = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := startRoomd(t, "--config", cfg)
	waitState(t, sock, "idle")
	for _, b := range []string{"privacy", "privacy", "join"} {
		if out, err := roomctl(t, "--socket", sock, "press", b); err != nil {
			t.Fatalf("press %s: %v\n%s", b, err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	waitState(t, sock, "in_call")
	for _, b := range []string{"mute", "mute", "leave"} {
		if out, err := roomctl(t, "--socket", sock, "press", b); err != nil {
			t.Fatalf("press %s: %v\n%s", b, err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	waitState(t, sock, "idle")

	// The records as the unit holds them.
	var lines []string
	var recs []audit.Record
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := roomctl(t, "--socket", sock, "audit", "show", "--json")
		if err != nil {
			t.Fatalf("audit show: %v\n%s", err, out)
		}
		lines = strings.Split(strings.TrimSpace(out), "\n")
		recs = recs[:0]
		for _, l := range lines {
			r, err := audit.Parse([]byte(l))
			if err != nil {
				t.Fatalf("audit show --json line %q: %v", l, err)
			}
			recs = append(recs, r)
		}
		if len(recs) > 0 && recs[len(recs)-1].Kind == audit.KindCallLeft || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var kinds []string
	meeting := ""
	for _, r := range recs {
		kinds = append(kinds, r.Kind)
		if r.Kind == audit.KindCallJoined {
			meeting = r.Fields["meeting"]
		}
	}
	want := []string{audit.KindChainStarted, audit.KindStarted, audit.KindConfigApplied, audit.KindPrivacyOn, audit.KindPrivacyOff,
		audit.KindCallJoined, audit.KindMuteOn, audit.KindMuteOff, audit.KindCallLeft}
	if strings.Join(kinds, " ") != strings.Join(want, " ") || meeting == "" {
		t.Fatalf("the unit recorded %v (meeting %q), want %v", kinds, meeting, want)
	}

	out, err := roomctl(t, "--socket", sock, "audit", "verify")
	if err != nil || !strings.Contains(out, ": OK") || !strings.Contains(out, "records 1 to 9 verified") {
		t.Fatalf("roomctl audit verify on the unit: %v\n%s", err, out)
	}
	device := regexp.MustCompile(`signed by (\S+)`).FindStringSubmatch(out)
	if device == nil {
		t.Fatalf("verify names no key:\n%s", out)
	}
	if out, err := roomctl(t, "--socket", sock, "audit", "verify", "--unit", "ku-someoneelse0000000"); err == nil || !strings.Contains(out, "FAILED") {
		t.Errorf("verify --unit with another unit's id passed:\n%s", out)
	}
	show, err := roomctl(t, "--socket", sock, "audit", "show")
	if err != nil || !strings.Contains(show, "call_joined") || !strings.Contains(show, "meeting="+meeting) {
		t.Errorf("audit show: %v\n%s", err, show)
	}

	// A copy, tampered with four ways: each fails, naming the record.
	swap := func(ls []string, i, j int) []string { ls[i], ls[j] = ls[j], ls[i]; return ls }
	for name, tc := range map[string]struct {
		tamper func([]string) []string
		names  string
	}{
		"edited":    {func(ls []string) []string { ls[3] = strings.Replace(ls[3], "privacy_on", "mute_on", 1); return ls }, "record 4"},
		"deleted":   {func(ls []string) []string { return append(ls[:4:4], ls[5:]...) }, "record 5"},
		"reordered": {func(ls []string) []string { return swap(ls, 5, 6) }, "record 6"},
		"inserted":  {func(ls []string) []string { return append(ls[:7:7], append([]string{ls[2]}, ls[7:]...)...) }, "record 3"},
	} {
		ls := append([]string(nil), lines...)
		p := filepath.Join(t.TempDir(), name+".jsonl")
		if err := os.WriteFile(p, []byte(strings.Join(tc.tamper(ls), "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := roomctl(t, "audit", "verify", "--file", p)
		if err == nil || !strings.Contains(out, "FAILED") || !strings.Contains(out, name) || !strings.Contains(out, tc.names) {
			t.Errorf("roomctl audit verify of a copy %s: err=%v, want FAILED naming %s\n%s", name, err, tc.names, out)
		}
	}
	// The untouched copy verifies, bound to the unit's key.
	p := filepath.Join(t.TempDir(), "copy.jsonl")
	os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	if out, err := roomctl(t, "audit", "verify", "--file", p, "--unit", device[1]); err != nil || !strings.Contains(out, ": OK") {
		t.Errorf("the untouched copy: %v\n%s", err, out)
	}

	// The privacy report lists the call, from the unit's own log.
	md, err := roomctl(t, "--socket", sock, "privacy-report")
	if err != nil {
		t.Fatalf("privacy-report: %v\n%s", err, md)
	}
	for _, w := range []string{"1 in the audit log", "meeting " + meeting + ":", "9 records written, kept on the unit only", "on the unit only", "roomctl audit verify"} {
		if !strings.Contains(md, w) {
			t.Errorf("the fleet-off unit's report lacks %q:\n%s", w, md)
		}
	}
}
