package config

import (
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"
)

// A signed fleet config may tune the unit, but not open its local API to
// the machine's other users or move its socket, nor set what ties the unit
// to its identity: each such key is refused whole, naming the key.
func TestFleetConfigCannotSetLocalOnlyKeys(t *testing.T) {
	local := Local{}
	for _, tc := range []struct{ name, toml, want string }{
		{"api http", "[api]\nhttp = \"127.0.0.1:8787\"\n", "[api]"},
		{"api socket", "[api]\nsocket = \"/tmp/x.sock\"\n", "[api]"},
		{"enrol broker", "[fleet]\nenrol_broker = \"mqtts://evil.example:8884\"\n", "fleet.enrol_broker"},
		{"network dir", "[unit]\nnetwork_dir = \"/tmp\"\n", "unit.network_dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := local.Effective([]byte(tc.toml))
			if err == nil {
				t.Fatalf("fleet config %q was accepted", tc.toml)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "unit's own config file") {
				t.Fatalf("error %q does not name %s as local-only", err, tc.want)
			}
		})
	}
	// The same keys are fine in the unit's own file.
	if _, err := (Local{path: "roomd.toml", text: "[api]\nhttp = \"127.0.0.1:8787\"\n"}).Effective(nil); err != nil {
		t.Fatalf("local [api] refused: %v", err)
	}
}

// fleet.schedule_keys comes from the fleet (its config is signed with the
// fleet key: that is the authorisation), and a key that is not one is
// refused with the key's name.
func TestScheduleKeysFromTheFleet(t *testing.T) {
	if ScopeOf("fleet.schedule_keys") != Live {
		t.Fatalf("fleet.schedule_keys has scope %v: a fleet config must be able to set it", ScopeOf("fleet.schedule_keys"))
	}
	good := base64.StdEncoding.EncodeToString(make([]byte, ed25519.PublicKeySize))
	f := Fleet{ScheduleKeys: []string{good}}
	keys, err := f.ScheduleKeyList()
	if err != nil || len(keys) != 1 {
		t.Fatalf("one good key: %v %v", keys, err)
	}
	f.ScheduleKeys = append(f.ScheduleKeys, "not-a-key")
	if err := f.validate(); err == nil || !strings.Contains(err.Error(), "fleet.schedule_keys[1]") {
		t.Fatalf("a bad schedule key: %v", err)
	}
}
