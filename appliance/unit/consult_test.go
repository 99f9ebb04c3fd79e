package unit

import (
	"testing"

	"github.com/konsult/konsult/appliance/config"
)

// doctor warns about a fleet unit that still holds the conference secret,
// and only then.
func TestDoctorWarnsAboutAPISecretOnAFleetUnit(t *testing.T) {
	cfg := &config.Config{}
	cfg.Conference.APISecret = "s3cret"
	for _, tc := range []struct {
		fleet, secret bool
		warn          bool
	}{{true, true, true}, {true, false, false}, {false, true, false}} {
		c := *cfg
		if !tc.secret {
			c.Conference.APISecret = ""
		}
		p := &parts{cfg: &c, fleetUnit: tc.fleet}
		got := p.secretCheck()
		if (len(got) == 1 && !got[0].OK) != tc.warn {
			t.Fatalf("fleet %v secret %v: %+v", tc.fleet, tc.secret, got)
		}
		for _, ch := range got {
			if ch.Detail == "" || ch.Fix == "" || containsSecret(ch.Detail+ch.Fix) {
				t.Fatalf("check %+v", ch)
			}
		}
	}
}

func containsSecret(s string) bool {
	for i := 0; i+6 <= len(s); i++ {
		if s[i:i+6] == "s3cret" {
			return true
		}
	}
	return false
}
