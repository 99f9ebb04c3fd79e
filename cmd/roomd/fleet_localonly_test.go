package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/fleet"
)

// Issue 18 item 5: a key the unit reads only at start, pushed by the fleet,
// used to be reported applied and then do nothing. It is refused (schema),
// naming the key as local-only, with the very message fleetctl's check
// (config.CheckFleet) gives before signing; a live key still applies.
func TestFleetLocalOnlyKeyIsRefusedLiveKeyApplies(t *testing.T) {
	f := newFleetSide(t)
	u := startFleetUnit(t, f)
	for _, tc := range []struct {
		name, toml, key string
		localOnly       bool
	}{
		{"renew_before", "[fleet]\nrenew_before = \"100h\"\n", "fleet.renew_before", true},
		{"log format", "[log]\nformat = \"json\"\n", "log.format", true},
		{"unknown key", "[call]\nmax_lenght = \"1h\"\n", "call.max_lenght", false},
		{"out of range", "[call]\nmax_length = \"48h\"\n", "call.max_length", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.T = t
			f.push(signed{version: 1, target: devTarget, toml: tc.toml})
			r := fleettest.Data[fleet.Rejection](t, f.WaitEvent(fleet.EventConfigRejected, 10*time.Second))
			if r.Reason != string(fleet.ReasonSchema) || !strings.Contains(r.Message, tc.key) {
				t.Fatalf("config_rejected = %+v, want schema naming %s", r, tc.key)
			}
			if tc.localOnly && !strings.Contains(r.Message, "unit's own config file") {
				t.Fatalf("config_rejected = %+v, want %s named local-only", r, tc.key)
			}
			var fe *fleet.Error
			if err := config.CheckFleet([]byte(tc.toml)); !errors.As(err, &fe) || string(fe.Reason) != r.Reason || fe.Msg != r.Message {
				t.Fatalf("the unit says %s: %q; config.CheckFleet says %v", r.Reason, r.Message, err)
			}
			if s := u.status(); s.Fleet.Generation != 0 {
				t.Fatalf("generation %d after a refused config, want 0", s.Fleet.Generation)
			}
		})
	}
	f.T = t
	f.push(signed{version: 1, target: devTarget, toml: "[pins]\nmute = \"GPIO20\"\n[log]\nlevel = \"debug\"\n"})
	f.WaitEvent(fleet.EventConfigApplied, 10*time.Second)
	u.eventually("live keys applied", func(s status) bool { return pin(s, "mute") == "GPIO20" && s.Fleet.Generation == 1 })
}
