// Package config is the unit's configuration: the schema every key of
// roomd.toml and of a fleet config is decoded into, the built-in defaults,
// the merge of the unit's own file with the fleet's config, and the strict
// validation both are held to. roomd runs on it; the fleet agent and
// fleetctl check configs against it, so a config is judged by one schema.
// README.md "Configuration" documents every key.
package config

import (
	"crypto/ed25519"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/network"
)

// Default is the built-in config (roomd --print-default-config): every key
// with its default and a comment.
//
//go:embed default.toml
var Default string

// Config is roomd's configuration file. README.md documents every key;
// scope.go says which of them a fleet config may set.
type Config struct {
	Unit struct {
		Board string `toml:"board"`
		// NetworkDir is where roomd renders [network] for the root helper;
		// NetworkApply is "helper" (konsult-network.service applies it) or
		// "none" (render only). Both local-only.
		NetworkDir   string `toml:"network_dir"`
		NetworkApply string `toml:"network_apply"`
	} `toml:"unit"`
	// Network is the unit's NetworkManager profiles (README.md "Network").
	Network network.Config    `toml:"network"`
	Pins    map[string]string `toml:"pins"`
	Buttons struct {
		Debounce  Duration `toml:"debounce"`
		LongPress Duration `toml:"long_press"`
		// FactoryResetHold: PRIVACY and JOIN held together this long wipe
		// the unit; 0 = off.
		FactoryResetHold Duration `toml:"factory_reset_hold"`
	} `toml:"buttons"`
	Shutter struct {
		Timeout        Duration `toml:"timeout"`
		RequireSensors bool     `toml:"require_sensors"`
	} `toml:"shutter"`
	Call struct {
		JoinTimeout  Duration `toml:"join_timeout"`
		LeaveTimeout Duration `toml:"leave_timeout"`
		MaxLength    Duration `toml:"max_length"`
		// LeaveWhenAlone: hang up this long after the last far-end
		// participant left (connector "livekit"); 0 = stay.
		LeaveWhenAlone Duration `toml:"leave_when_alone"`
		// EndWithConsultation: a fleet unit in a booked consultation
		// (tokens from fleetd) hangs up at the consultation's end.
		EndWithConsultation bool `toml:"end_with_consultation"`
	} `toml:"call"`
	Conference struct {
		Connector    string   `toml:"connector"`
		URL          string   `toml:"url"`
		Room         string   `toml:"room"`
		Identity     string   `toml:"identity"`
		APIKey       string   `toml:"api_key"`
		APISecret    string   `toml:"api_secret"`
		Token        string   `toml:"token"`
		AllowedHosts []string `toml:"allowed_hosts"`
		// AllowPrivateICE lets the server hand out TURN servers and ICE
		// candidates at loopback, link-local and private addresses; needed
		// only for a media server on the clinic's own network reached by a
		// name (a server URL that is such an IP allows them already).
		AllowPrivateICE  bool   `toml:"allow_private_ice"`
		VideoCodec       string `toml:"video_codec"`
		VideoPassthrough string `toml:"video_passthrough"`
		Camera           string `toml:"camera"`
		Microphone       string `toml:"microphone"`
		Width            int    `toml:"width"`
		Height           int    `toml:"height"`
		FPS              int    `toml:"fps"`
		VideoBitrateKbps int    `toml:"video_bitrate_kbps"`
		AudioBitrateKbps int    `toml:"audio_bitrate_kbps"`
		// Connector "livekit" only: the speaker, TURN/STUN servers beside
		// the server's own, and relay-only media.
		Speaker    string      `toml:"speaker"`
		ICEServers []ICEServer `toml:"ice_servers"`
		ForceRelay bool        `toml:"force_relay"`
		// E2EEKeyFile is a stand-alone unit's end-to-end key (connector
		// "livekit"): 32 bytes raw or base64url, mode 0600, owned by
		// roomd's user (LoadE2EEKey). A fleet unit's consultations bring
		// their own key.
		E2EEKeyFile string `toml:"e2ee_key_file"`
	} `toml:"conference"`
	API struct {
		Socket string `toml:"socket"`
		HTTP   string `toml:"http"`
	} `toml:"api"`
	Log struct {
		Level  string `toml:"level"`
		Format string `toml:"format"`
	} `toml:"log"`
	// Display is the unit's own screen (appliance/screen): a page on
	// loopback that a kiosk browser shows. Local only: the listener and
	// the file the kiosk reads its URL from are set up at start.
	Display struct {
		Enabled bool `toml:"enabled"`
		// Listen is the page's loopback address.
		Listen string `toml:"listen"`
		// URLFile, if set, receives the page's full URL with its secret
		// (mode 0640: the kiosk's group reads it); "" = no secret, the
		// URL is printed (a desktop --sim unit).
		URLFile  string `toml:"url_file"`
		Language string `toml:"language"`
		Room     string `toml:"room_name"`
	} `toml:"display"`
	// Audio switches the microphone's processing (media/audioproc).
	Audio struct {
		AEC bool `toml:"aec"`
		NS  bool `toml:"ns"`
		AGC bool `toml:"agc"`
	} `toml:"audio"`
	Sim struct {
		Travel    Duration `toml:"travel"`
		JoinDelay Duration `toml:"join_delay"`
		Stamp     bool     `toml:"stamp"`
		// Echo feeds the speaker mix back into the simulated microphone
		// (audioproc.EchoPath).
		Echo struct {
			Enabled       bool     `toml:"enabled"`
			Delay         Duration `toml:"delay"`
			AttenuationDB float64  `toml:"attenuation_db"`
			Reverb        Duration `toml:"reverb"`
		} `toml:"echo"`
	} `toml:"sim"`
	Fleet Fleet `toml:"fleet"`
	// Privacy is what the privacy report (appliance/report) declares: the
	// clinic's regions and the region of each media host it allows.
	Privacy struct {
		// Regions are the regions the clinic declares media may go to.
		Regions []string `toml:"regions"`
		// HostRegions maps a media server host (as in conference.url or
		// allowed_hosts) to its declared region.
		HostRegions map[string]string `toml:"host_regions"`
	} `toml:"privacy"`
	// Audit is the unit's audit log's retention (provisioning/audit).
	// Local only: the log is opened once at start.
	Audit struct {
		Retention Duration `toml:"retention"`
		MaxBytes  int64    `toml:"max_bytes"`
	} `toml:"audit"`
	// Update is the unit's side of system updates (docs/UPDATES.md).
	Update Update `toml:"update"`
}

// Fleet is the [fleet] section: how the unit reaches its fleet. The
// identity and trust keys (device_id, groups, fleet_key, state_dir) come
// from the unit's own config only: a fleet config cannot set them.
type Fleet struct {
	Enabled        bool     `toml:"enabled"`
	Broker         string   `toml:"broker"`
	CAFile         string   `toml:"ca_file"`
	CertFile       string   `toml:"cert_file"`
	KeyFile        string   `toml:"key_file"`
	DeviceID       string   `toml:"device_id"`
	Groups         []string `toml:"groups"`
	FleetKey       string   `toml:"fleet_key"`
	StateDir       string   `toml:"state_dir"`
	ConfirmTimeout Duration `toml:"confirm_timeout"`
	// ScheduleKeys are the public keys (base64 Ed25519, as fleetd
	// -schedule-key prints them) the unit takes its consultation schedules
	// from: fleetd's own key, which signs nothing else the unit accepts.
	// Set by a fleet config, so the fleet key authorises it. Empty: the
	// schedules are taken under the fleet key (units from before schedule
	// keys), and doctor says so.
	ScheduleKeys []string `toml:"schedule_keys"`
	// Enrolment (README.md "Enrolment"): with enrol_cert set and cert_file
	// not, the unit makes its own key and enrols with a claim code.
	IdentityDir string `toml:"identity_dir"`
	EnrolCert   string `toml:"enrol_cert"`
	EnrolKey    string `toml:"enrol_key"`
	// EnrolBroker is where the unit enrols: the broker's listener for
	// the shared credential, never the enrolled units' one ("" = the host
	// of broker on port 8884).
	EnrolBroker string   `toml:"enrol_broker"`
	ClaimCode   string   `toml:"claim_code"`
	ClaimFile   string   `toml:"claim_file"`
	RenewBefore Duration `toml:"renew_before"`
}

// ScheduleKeyList parses fleet.schedule_keys.
func (f *Fleet) ScheduleKeyList() ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for i, s := range f.ScheduleKeys {
		k, err := fleet.ParseScheduleKey(s)
		if err != nil {
			return nil, fmt.Errorf("fleet.schedule_keys[%d]: %w", i, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Enrols says whether the unit enrols itself rather than being given its
// certificate by hand.
func (f *Fleet) Enrols() bool { return f.EnrolCert != "" && f.CertFile == "" }

// EnrolmentBroker is fleet.enrol_broker, or its default derived from
// fleet.broker.
func (f *Fleet) EnrolmentBroker() string {
	if f.EnrolBroker != "" {
		return f.EnrolBroker
	}
	return enrol.EnrolBroker(f.Broker)
}

// ICEServer is one [[conference.ice_servers]] entry: a STUN or TURN server
// (turn:host:3478?transport=udp, turns:host:443?transport=tcp for TURN over
// TLS where only 443 gets out). The credential is a secret: never logged.
type ICEServer struct {
	URLs       []string `toml:"urls"`
	Username   string   `toml:"username"`
	Credential string   `toml:"credential"`
}

// Duration is a time.Duration written as "30ms", "2s".
type Duration struct{ time.Duration }

// UnmarshalText parses Go duration syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration: write it like \"30ms\" or \"2s\"", string(b))
	}
	d.Duration = v
	return nil
}

// MarshalText writes Go duration syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Load reads the embedded defaults, then the file at path (if any) over
// them. Every error is one line that names the key and the fix.
func Load(path string) (*Config, error) {
	local, err := ReadLocal(path)
	if err != nil {
		return nil, err
	}
	return local.Effective(nil)
}

// Local is the unit's own config file, read once at start: the fleet's
// effective config is laid over it for each change.
type Local struct {
	path string // "" for none
	text string
}

// ReadLocal reads the unit's config file; path "" is none (the built-in
// defaults alone).
func ReadLocal(path string) (Local, error) {
	if path == "" {
		return Local{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Local{}, fmt.Errorf("read config: %w", err)
	}
	return Local{path: path, text: string(b)}, nil
}

// Effective is the config roomd runs on: built-in defaults < the local file
// < the fleet's effective config (TOML, nil or empty for none). A fleet
// config is held to the same strict schema as the local file, and may set
// only the keys the unit applies live (scope.go).
func (l Local) Effective(fleetTOML []byte) (*Config, error) {
	var c Config
	if _, err := DecodeStrict(Default, &c); err != nil {
		return nil, fmt.Errorf("built-in defaults: %w", err)
	}
	where := "built-in defaults"
	if l.path != "" {
		if _, err := DecodeStrict(l.text, &c); err != nil {
			return nil, fmt.Errorf("config %s: %w", l.path, err)
		}
		where = l.path
	}
	if len(fleetTOML) > 0 {
		where = "fleet config"
		md, err := DecodeStrict(string(fleetTOML), &c)
		if err != nil {
			return nil, fmt.Errorf("fleet config: %w", err)
		}
		if err := refuseLocalOnly(md); err != nil {
			return nil, err
		}
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", where, err)
	}
	return &c, nil
}

// DecodeStrict decodes text over c, refusing a key the schema does not
// have. Its errors name the line and key, never the value.
func DecodeStrict(text string, c *Config) (toml.MetaData, error) {
	md, err := toml.Decode(text, c)
	if err != nil {
		// By line and key only: the parser quotes the offending text, and
		// in a config that is often a secret (api_secret = s3cret, unquoted).
		return md, errors.New(fleet.DescribeTOMLErrorIn(err, []byte(text)))
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, 0, len(und))
		for _, k := range und {
			keys = append(keys, k.String())
		}
		sort.Strings(keys)
		return md, fmt.Errorf("unknown key %s: remove it, or check its spelling against README.md \"Configuration\"", strings.Join(keys, ", "))
	}
	return md, nil
}

// IdentityDir is where the unit keeps its key and certificates
// (fleet.identity_dir). A simulated unit keeps them next to its API socket,
// so each (and each test) has its own.
func (c *Config) IdentityDir(simulate bool) string {
	if c.Fleet.IdentityDir != "" {
		return c.Fleet.IdentityDir
	}
	if simulate {
		return filepath.Join(filepath.Dir(c.API.Socket), "sim-identity")
	}
	return "/var/lib/konsult/identity"
}

// StateDir is where the unit keeps its fleet state (fleet.state_dir); a
// simulated unit, next to its API socket.
func (c *Config) StateDir(simulate bool) string {
	if c.Fleet.StateDir != "" {
		return c.Fleet.StateDir
	}
	if simulate {
		return filepath.Join(filepath.Dir(c.API.Socket), "sim-fleet")
	}
	return "/var/lib/konsult/fleet"
}

// NetworkDir is where roomd renders [network]'s profiles for the root
// helper (unit.network_dir); a simulated unit, next to its API socket.
func (c *Config) NetworkDir(simulate bool) string {
	if c.Unit.NetworkDir != "" {
		return c.Unit.NetworkDir
	}
	if simulate {
		return filepath.Join(filepath.Dir(c.API.Socket), "sim-network")
	}
	return "/var/lib/konsult/network"
}

// NetworkViaHelper says whether [network] is handed to the root helper
// (konsult-network.service) rather than only rendered: unit.network_apply
// "helper", or by default on a real unit.
func (c *Config) NetworkViaHelper(simulate bool) bool {
	return c.Unit.NetworkApply == "helper" || c.Unit.NetworkApply == "" && !simulate
}

// ScreenRoom is the room name the unit's screen shows: display.room_name,
// or the conference's room.
func (c *Config) ScreenRoom() string {
	if c.Display.Room != "" {
		return c.Display.Room
	}
	return c.Conference.Room
}

// LogLevel is log.level (validated; info if it is empty).
func (c *Config) LogLevel() slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.Log.Level))
	return l
}
