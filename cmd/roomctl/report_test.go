package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestPrivacyReportFromTheRunningUnit: roomctl privacy-report asks the
// running roomd --sim, which runs its self-check for it; Markdown and HTML
// say what a DPO needs, and name no secret.
func TestPrivacyReportFromTheRunningUnit(t *testing.T) {
	sock := startRoomd(t)
	md, err := roomctl(t, "--socket", sock, "privacy-report")
	if err != nil {
		t.Fatalf("privacy-report: %v\n%s", err, md)
	}
	for _, want := range []string{"# Privacy report: unit sim-unit", "## Media", "none configured", "## Fleet telemetry",
		"`identity.renewal_csr`", "## Audit log", "90 days", "## Shutter, LED and self-check", "Last run", "| software version | dev |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	out := filepath.Join(t.TempDir(), "report.html")
	if msg, err := roomctl(t, "--socket", sock, "privacy-report", "--html", "--out", out); err != nil {
		t.Fatalf("privacy-report --html: %v\n%s", err, msg)
	}
	html, _ := os.ReadFile(out)
	if !strings.HasPrefix(string(html), "<!DOCTYPE html>") || !strings.Contains(string(html), "@media print") {
		t.Fatalf("not a print-ready page:\n%.300s", html)
	}
	if m := regexp.MustCompile(`PRIVATE KEY|fleet\.key|[a-z]+://[^/\s]*:[^/\s]*@`).FindString(md + string(html)); m != "" {
		t.Errorf("report holds %q", m)
	}
}

// TestPrivacyReportOfflineFollowsTheConfig: --config makes the report
// from a file; a server outside the declared regions is flagged.
func TestPrivacyReportOfflineFollowsTheConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "roomd.toml")
	os.WriteFile(p, []byte(`[conference]
connector = "livekit"
url = "https://sfu.example.com"
api_key = "k"
api_secret = "very-secret-value-123"
[privacy]
regions = ["eu-no"]
host_regions = {"sfu.example.com" = "us-west"}
`), 0o600)
	md, err := roomctl(t, "privacy-report", "--config", p)
	if err != nil {
		t.Fatalf("%v\n%s", err, md)
	}
	for _, want := range []string{"sfu.example.com is in region us-west, outside the clinic's declared regions (eu-no)", "not run: this report was made from a config file"} {
		if !strings.Contains(md, want) {
			t.Errorf("offline report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "very-secret-value-123") {
		t.Error("the report holds the API secret")
	}
}
