package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

// unitLocal is a unit's own file as on a real fleet unit (cmd/roomd's
// fleet tests run one like it).
var unitLocal = Local{path: "/etc/konsult/roomd.toml", text: `[unit]
board = "pi4"
[fleet]
broker = "mqtts://broker.clinic.example:8883"
ca_file = "/etc/konsult/fleet-ca.pem"
cert_file = "/etc/konsult/unit.pem"
key_file = "/etc/konsult/unit.key"
device_id = "room-1"
groups = ["ward-a"]
fleet_key = "/etc/konsult/fleet.pub"
confirm_timeout = "3s"
`}

// unitRefusal is what such a unit reports for text pushed as its device
// config: the verifier's checks, then the agent's merge and roomd's
// validation, worded as appliance/agent words a refusal.
func unitRefusal(t *testing.T, text string) *fleet.Error {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := fleet.Identity{Device: "room-1", Groups: []string{"ward-a"}}
	v, err := fleet.NewVerifier(id, pub)
	if err != nil {
		t.Fatal(err)
	}
	target := fleet.Target{Device: id.Device}
	// Signed by hand: fleet.SignConfig refuses what is not TOML, and the
	// unit must be seen refusing that too.
	payload, err := json.Marshal(fleet.ConfigPayload{Kind: fleet.KindConfig, Version: 1, IssuedAt: time.Now().Add(-time.Minute),
		ExpiresAt: time.Now().Add(time.Hour), Target: target, Config: text})
	if err != nil {
		t.Fatal(err)
	}
	env := fleet.Sign(priv, fleet.DomainConfig, payload)
	var fe *fleet.Error
	if _, err := v.VerifyConfig(env.Marshal(), nil, nil); err != nil {
		if !errors.As(err, &fe) {
			t.Fatalf("verify: %v", err)
		}
		return fe
	}
	eff, err := fleet.Effective(id, map[string][]byte{target.Key(): []byte(text)})
	if err != nil {
		return &fleet.Error{Reason: fleet.ReasonSchema, Msg: err.Error() + ": fix it and sign a new version"}
	}
	if _, err := unitLocal.Effective(eff); err != nil {
		msg := fleet.RedactValues(err.Error(), eff)
		return &fleet.Error{Reason: fleet.ReasonSchema, Msg: "config refused by the unit's schema: " + msg + ": fix it and sign a new version"}
	}
	return nil
}

// CheckFleet, which fleetctl runs before signing, refuses exactly what a
// unit refuses, with the reason and message the unit reports.
func TestCheckFleetAgreesWithTheUnit(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		ok         bool
		names      string // what a refusal must name
	}{
		{"pins", "[pins]\nmute = \"GPIO20\"\n", true, ""},
		{"call and conference", "[call]\nmax_length = \"2h\"\n[conference]\nconnector = \"livekit\"\nurl = \"https://lk.example\"\napi_secret = \"s3cretvalue\"\n", true, ""},
		{"broker and certificate", "[fleet]\nbroker = \"mqtts://other.example:8883\"\ncert_file = \"/x.pem\"\nconfirm_timeout = \"10s\"\n", true, ""},
		{"log level", "[log]\nlevel = \"debug\"\n", true, ""},
		{"ice servers", "[[conference.ice_servers]]\nurls = [\"turn:turn.example:3478\"]\ncredential = \"hunter22\"\n", true, ""},
		{"empty", "", true, ""},
		{"not TOML", "[pins\nmute = \"GPIO20\"\n", false, "not valid TOML"},
		{"unquoted secret", "[conference]\napi_secret = s3cretvalue\n", false, "conference.api_secret"},
		{"unknown key", "[call]\nmax_lenght = \"1h\"\n", false, "call.max_lenght"},
		{"unknown section", "[camera]\nfps = 30\n", false, "camera"},
		{"wrong type", "[call]\nmax_length = 5\n", false, "max_length"},
		{"out of range", "[call]\nmax_length = \"48h\"\n", false, "call.max_length"},
		{"not one of", "[log]\nlevel = \"loud\"\n", false, "log.level"},
		{"two roles on one pin", "[pins]\njoin = \"GPIO23\"\n", false, "[pins]"},
		{"unknown board", "[unit]\nboard = \"pi9\"\n", false, "unit.board"},
		{"renew_before is local-only", "[fleet]\nrenew_before = \"100h\"\n", false, "fleet.renew_before"},
		{"log format is local-only", "[log]\nformat = \"json\"\n", false, "log.format"},
		{"api is local-only", "[api]\nhttp = \"127.0.0.1:8787\"\n", false, "[api]"},
		{"device id is local-only", "[fleet]\ndevice_id = \"room-9\"\n", false, "fleet.device_id"},
		{"enabled is local-only", "[fleet]\nenabled = false\n", false, "fleet.enabled"},
		{"network dir is local-only", "[unit]\nnetwork_dir = \"/tmp\"\n", false, "unit.network_dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unit := unitRefusal(t, tc.toml)
			err := CheckFleet([]byte(tc.toml))
			if tc.ok {
				if unit != nil || err != nil {
					t.Fatalf("want accepted: the unit says %v, CheckFleet %v", unit, err)
				}
				return
			}
			if unit == nil {
				t.Fatalf("the unit accepts it; the table says it should not")
			}
			var fe *fleet.Error
			if !errors.As(err, &fe) || fe.Reason != unit.Reason || fe.Msg != unit.Msg {
				t.Fatalf("the unit says %v\nCheckFleet says %v", unit, err)
			}
			if fe.Reason != fleet.ReasonSchema || !strings.Contains(fe.Msg, tc.names) {
				t.Fatalf("refusal %v does not say schema and name %s", err, tc.names)
			}
			if strings.Contains(fe.Msg, "s3cretvalue") || strings.Contains(fe.Msg, "room-9") {
				t.Fatalf("refusal quotes a value: %v", err)
			}
		})
	}
}
