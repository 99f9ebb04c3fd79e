package config

import (
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
