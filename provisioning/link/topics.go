package link

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// DefaultPrefix is the root of a fleet's topic tree.
const DefaultPrefix = "konsult"

// ClientIDPrefix begins every MQTT client id a Konsult client sends. The
// shipped Mosquitto config (deploy/mosquitto) refuses any other
// (clientid_prefixes), which is what keeps a chosen id from ever being a
// unit's: on the units' listener the broker replaces the id with the
// certificate's CN, a device id, and a device id never contains "/".
const ClientIDPrefix = "konsult/"

// UnitClientID is the client id an enrolled unit sends. Mosquitto's units'
// listener replaces it with the unit's CN (its device id); a broker that
// does not gets this one, still unique per unit.
func UnitClientID(deviceID string) string { return ClientIDPrefix + "device/" + deviceID }

// EnrolClientID is the client id of a unit enrolling with the shared
// credential: exactly the root of its enrolment topics, so that the shipped
// ACL's %c/request and %c/response patterns grant it its own request and
// response and nothing else.
func (t Topics) EnrolClientID(deviceID string) string {
	return t.prefix() + "/enrol/" + deviceID
}

// Kind names a topic of the fleet tree.
type Kind int

// The fleet's topics. The first four flow fleet → unit and are what a unit
// subscribes to; the last three flow unit → fleet.
const (
	DeviceConfig   Kind = iota + 1 // <prefix>/device/<id>/config, retained, signed
	GroupConfig                    // <prefix>/group/<g>/config, retained, signed
	DeviceCmd                      // <prefix>/device/<id>/cmd, QoS 1, signed
	GroupCmd                       // <prefix>/group/<g>/cmd, QoS 1, signed
	DeviceStatus                   // <prefix>/device/<id>/status, retained, last will
	DeviceReported                 // <prefix>/device/<id>/reported, retained
	DeviceEvents                   // <prefix>/device/<id>/events, QoS 1
	EnrolRequest                   // <prefix>/enrol/<id>/request, retained (enrolment credential)
	EnrolResponse                  // <prefix>/enrol/<id>/response, retained, signed by the fleet CA
	TokenRequest                   // <prefix>/device/<id>/token-request, QoS 1, unit → fleetd, signed by the unit
	Token                          // <prefix>/device/<id>/token, QoS 1, fleetd → unit, sealed to the unit's key
	Schedule                       // <prefix>/device/<id>/schedule, retained, fleetd → unit, signed
	DeviceAudit                    // <prefix>/device/<id>/audit, QoS 1, unit → fleetd, records signed by the unit (provisioning/audit)
)

func (k Kind) String() string {
	switch k {
	case DeviceConfig:
		return "device-config"
	case GroupConfig:
		return "group-config"
	case DeviceCmd:
		return "device-cmd"
	case GroupCmd:
		return "group-cmd"
	case DeviceStatus:
		return "status"
	case DeviceReported:
		return "reported"
	case DeviceEvents:
		return "events"
	case EnrolRequest:
		return "enrol-request"
	case EnrolResponse:
		return "enrol-response"
	case TokenRequest:
		return "token-request"
	case Token:
		return "token"
	case Schedule:
		return "schedule"
	case DeviceAudit:
		return "audit"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Topics builds the topic names of one fleet. The zero value uses
// DefaultPrefix.
type Topics struct {
	Prefix string
}

func (t Topics) prefix() string {
	if t.Prefix == "" {
		return DefaultPrefix
	}
	return t.Prefix
}

func (t Topics) device(id, leaf string) string {
	return t.prefix() + "/device/" + id + "/" + leaf
}

func (t Topics) group(g, leaf string) string {
	return t.prefix() + "/group/" + g + "/" + leaf
}

// DeviceConfig is the retained, signed desired config of unit id.
func (t Topics) DeviceConfig(id string) string { return t.device(id, "config") }

// GroupConfig is the retained, signed desired config of group g.
func (t Topics) GroupConfig(g string) string { return t.group(g, "config") }

// DeviceCmd carries signed commands to unit id.
func (t Topics) DeviceCmd(id string) string { return t.device(id, "cmd") }

// GroupCmd carries signed commands to every unit of group g.
func (t Topics) GroupCmd(g string) string { return t.group(g, "cmd") }

// Status is unit id's retained online/offline status (and its last will).
func (t Topics) Status(id string) string { return t.device(id, "status") }

// Reported is unit id's retained reported state.
func (t Topics) Reported(id string) string { return t.device(id, "reported") }

// Events carries unit id's events.
func (t Topics) Events(id string) string { return t.device(id, "events") }

// Audit carries unit id's audit records, one per message.
func (t Topics) Audit(id string) string { return t.device(id, "audit") }

// TokenRequest is where unit id asks fleetd for a conference token.
func (t Topics) TokenRequest(id string) string { return t.device(id, "token-request") }

// Token is where fleetd answers unit id's token requests, sealed to the
// unit's key.
func (t Topics) Token(id string) string { return t.device(id, "token") }

// Schedule is unit id's retained, signed list of upcoming consultations.
func (t Topics) Schedule(id string) string { return t.device(id, "schedule") }

// EnrolRequest is unit id's enrolment request (retained), written with the
// fleet's shared enrolment credential before the unit has its own
// certificate. The broker ACL lets that credential write only the request
// of the client id it connected with, and read only the matching response.
func (t Topics) EnrolRequest(id string) string { return t.prefix() + "/enrol/" + id + "/request" }

// EnrolResponse is the fleet's signed decision on unit id's request
// (retained).
func (t Topics) EnrolResponse(id string) string { return t.prefix() + "/enrol/" + id + "/response" }

// AllEnrolRequests is a subscription filter for every pending request.
func (t Topics) AllEnrolRequests() string { return t.EnrolRequest("+") }

// AllDevices is a subscription filter for one kind of per-device topic of
// every unit, e.g. AllDevices(DeviceStatus) for a fleet dashboard.
func (t Topics) AllDevices(k Kind) string {
	switch k {
	case DeviceConfig:
		return t.device("+", "config")
	case DeviceCmd:
		return t.device("+", "cmd")
	case DeviceStatus:
		return t.device("+", "status")
	case DeviceReported:
		return t.device("+", "reported")
	case DeviceEvents:
		return t.device("+", "events")
	case TokenRequest:
		return t.device("+", "token-request")
	case Token:
		return t.device("+", "token")
	case Schedule:
		return t.device("+", "schedule")
	case DeviceAudit:
		return t.device("+", "audit")
	}
	return ""
}

// Parse says which topic of the tree topic is, and the device id or group
// name in it.
func (t Topics) Parse(topic string) (k Kind, name string, ok bool) {
	rest, found := strings.CutPrefix(topic, t.prefix()+"/")
	if !found {
		return 0, "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || ValidName(parts[1]) != nil {
		return 0, "", false
	}
	name = parts[1]
	switch parts[0] + "/" + parts[2] {
	case "device/config":
		return DeviceConfig, name, true
	case "device/cmd":
		return DeviceCmd, name, true
	case "device/status":
		return DeviceStatus, name, true
	case "device/reported":
		return DeviceReported, name, true
	case "device/events":
		return DeviceEvents, name, true
	case "device/token-request":
		return TokenRequest, name, true
	case "device/token":
		return Token, name, true
	case "device/schedule":
		return Schedule, name, true
	case "device/audit":
		return DeviceAudit, name, true
	case "group/config":
		return GroupConfig, name, true
	case "group/cmd":
		return GroupCmd, name, true
	case "enrol/request":
		return EnrolRequest, name, true
	case "enrol/response":
		return EnrolResponse, name, true
	}
	return 0, "", false
}

// ValidName checks a device id, group name or topic prefix segment. Names end
// up inside topics and inside the broker's ACL file, so anything that could
// change a topic's meaning (/ + #), split an ACL line (spaces, control
// characters) or trip up a broker (NUL, invalid UTF-8) is refused.
func ValidName(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > 128 {
		return fmt.Errorf("name %.20q… longer than 128 bytes", s)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("name %q is not valid UTF-8", s)
	}
	for _, r := range s {
		if r == '/' || r == '+' || r == '#' || r == '%' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("name %q contains %q", s, r)
		}
	}
	return nil
}
