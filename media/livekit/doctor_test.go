package livekit

import (
	"strings"
	"testing"
)

// With allowed_hosts empty the server may redirect the unit over https to
// internal addresses (issue 16, item 6): doctor says so and how to fix it,
// naming the configured server's host; the check does not fail the unit.
func TestDoctorWarnsAboutAnEmptyAllowList(t *testing.T) {
	checks := HostChecks("https://lk.clinic.example:7880", nil, false)
	if len(checks) != 1 {
		t.Fatalf("checks = %+v, want one warning", checks)
	}
	c := checks[0]
	if !c.OK || !strings.HasPrefix(c.Detail, "warning:") || !strings.Contains(c.Detail, "internal") ||
		!strings.Contains(c.Fix, `conference.allowed_hosts = ["lk.clinic.example"]`) {
		t.Errorf("allow-list warning = %+v", c)
	}
	if got := HostChecks("https://lk.clinic.example", []string{"lk.clinic.example"}, false); len(got) != 0 {
		t.Errorf("a set allow-list still warned: %+v", got)
	}
	got := HostChecks("https://lk.clinic.example", []string{"lk.clinic.example"}, true)
	if len(got) != 1 || !strings.Contains(got[0].Detail, "allow_private_ice") {
		t.Errorf("allow_private_ice on, doctor = %+v", got)
	}
}
