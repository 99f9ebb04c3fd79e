package main

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/network"
)

//go:embed default.toml
var defaultConfig string

// Config is roomd's configuration file. README.md documents every key.
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
		ICEServers []iceServer `toml:"ice_servers"`
		ForceRelay bool        `toml:"force_relay"`
	} `toml:"conference"`
	API struct {
		Socket string `toml:"socket"`
		HTTP   string `toml:"http"`
	} `toml:"api"`
	Log struct {
		Level  string `toml:"level"`
		Format string `toml:"format"`
	} `toml:"log"`
	Sim struct {
		Travel    Duration `toml:"travel"`
		JoinDelay Duration `toml:"join_delay"`
		Stamp     bool     `toml:"stamp"`
	} `toml:"sim"`
	Fleet FleetConfig `toml:"fleet"`
}

// FleetConfig is the [fleet] section: how the unit reaches its fleet. The
// identity and trust keys (device_id, groups, fleet_key, state_dir) come
// from the unit's own config only: a fleet config cannot set them.
type FleetConfig struct {
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

// enrols says whether the unit enrols itself rather than being given its
// certificate by hand.
func (f *FleetConfig) enrols() bool { return f.EnrolCert != "" && f.CertFile == "" }

// enrolBroker is fleet.enrol_broker, or its default derived from
// fleet.broker.
func (f *FleetConfig) enrolBroker() string {
	if f.EnrolBroker != "" {
		return f.EnrolBroker
	}
	return enrol.EnrolBroker(f.Broker)
}

// localOnlyFleetKeys are the [fleet] keys a fleet config may not set.
var localOnlyFleetKeys = []string{"enabled", "device_id", "groups", "fleet_key", "state_dir",
	"identity_dir", "enrol_cert", "enrol_key", "enrol_broker", "claim_code", "claim_file"}

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

// loadConfig reads the embedded defaults, then the file at path (if any) over
// them. Every error is one line that names the key and the fix.
func loadConfig(path string) (*Config, error) {
	local, err := readLocal(path)
	if err != nil {
		return nil, err
	}
	return local.effective(nil)
}

// localConfig is the unit's own config file, read once at start: the fleet's
// effective config is laid over it for each change.
type localConfig struct {
	path string // "" for none
	text string
}

func readLocal(path string) (localConfig, error) {
	if path == "" {
		return localConfig{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return localConfig{}, fmt.Errorf("read config: %w", err)
	}
	return localConfig{path: path, text: string(b)}, nil
}

// effective is the config roomd runs on: built-in defaults < the local file
// < the fleet's effective config (TOML, nil or empty for none). A fleet
// config is held to the same strict schema as the local file, and may not
// set the unit's identity or trust keys.
func (l localConfig) effective(fleetTOML []byte) (*Config, error) {
	var c Config
	if _, err := decodeStrict(defaultConfig, &c); err != nil {
		return nil, fmt.Errorf("built-in defaults: %w", err)
	}
	where := "built-in defaults"
	if l.path != "" {
		if _, err := decodeStrict(l.text, &c); err != nil {
			return nil, fmt.Errorf("config %s: %w", l.path, err)
		}
		where = l.path
	}
	if len(fleetTOML) > 0 {
		where = "fleet config"
		md, err := decodeStrict(string(fleetTOML), &c)
		if err != nil {
			return nil, fmt.Errorf("fleet config: %w", err)
		}
		for _, k := range localOnlyFleetKeys {
			if md.IsDefined("fleet", k) {
				return nil, fmt.Errorf("fleet.%s can only be set in the unit's own config file, not by the fleet: remove it from the fleet config", k)
			}
		}
		for _, k := range []string{"network_dir", "network_apply"} {
			if md.IsDefined("unit", k) {
				return nil, fmt.Errorf("unit.%s can only be set in the unit's own config file, not by the fleet: remove it from the fleet config", k)
			}
		}
		// Who may drive the unit locally is the unit's own business: a
		// fleet config that opened loopback HTTP would hand every local
		// user and browser on the machine the API, and one that moved the
		// socket could point it at a folder others control.
		if md.IsDefined("api") {
			return nil, errors.New("[api] can only be set in the unit's own config file, not by the fleet: remove it from the fleet config")
		}
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", where, err)
	}
	return &c, nil
}

func decodeStrict(text string, c *Config) (toml.MetaData, error) {
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

func (c *Config) validate() error {
	pos := func(name string, d Duration, min, max time.Duration) error {
		if d.Duration < min || d.Duration > max {
			return fmt.Errorf("%s = %q is out of range: use a value from %s to %s", name, d.String(), min, max)
		}
		return nil
	}
	return errors.Join(
		pos("buttons.debounce", c.Buttons.Debounce, time.Millisecond, 500*time.Millisecond),
		pos("buttons.long_press", c.Buttons.LongPress, 200*time.Millisecond, time.Minute),
		resetHoldRange(c.Buttons.FactoryResetHold),
		oneOf("unit.network_apply", c.Unit.NetworkApply, "", "helper", "none"),
		c.Network.Validate(),
		pos("shutter.timeout", c.Shutter.Timeout, 50*time.Millisecond, 30*time.Second),
		pos("call.join_timeout", c.Call.JoinTimeout, time.Second, 5*time.Minute),
		pos("call.leave_timeout", c.Call.LeaveTimeout, 100*time.Millisecond, time.Minute),
		pos("call.max_length", c.Call.MaxLength, 0, 24*time.Hour),
		pos("sim.travel", c.Sim.Travel, 0, 10*time.Second),
		pos("sim.join_delay", c.Sim.JoinDelay, 0, time.Minute),
		oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error"),
		oneOf("conference.connector", c.Conference.Connector, "", "livekit-whip", "livekit"),
		pos("call.leave_when_alone", c.Call.LeaveWhenAlone, 0, 24*time.Hour),
		oneOf("conference.video_codec", c.Conference.VideoCodec, "auto", "H264", "VP8"),
		oneOf("conference.video_passthrough", c.Conference.VideoPassthrough, "auto", "off"),
		intRange("conference.width", c.Conference.Width, 160, 3840),
		intRange("conference.height", c.Conference.Height, 120, 2160),
		intRange("conference.fps", c.Conference.FPS, 1, 60),
		intRange("conference.video_bitrate_kbps", c.Conference.VideoBitrateKbps, 100, 20000),
		intRange("conference.audio_bitrate_kbps", c.Conference.AudioBitrateKbps, 6, 510),
		oneOf("log.format", c.Log.Format, "text", "json"),
		pos("fleet.confirm_timeout", c.Fleet.ConfirmTimeout, time.Second, time.Hour),
		c.Fleet.validate(),
		c.validatePins(),
	)
}

// validatePins checks the board and pin roles as far as the config alone
// can tell (a role on two pins, a role without a pin), so a fleet config
// with such a mistake is refused rather than applied and rolled back.
// Whether each line exists is up to the board, when the unit opens.
func (c *Config) validatePins() error {
	profile, err := board.Lookup(c.Unit.Board)
	if err != nil {
		return fmt.Errorf("unit.board: %w", err)
	}
	overrides := make(map[board.Role]string, len(c.Pins))
	for k, v := range c.Pins {
		overrides[board.Role(k)] = v
	}
	if profile, err = profile.With(overrides); err != nil {
		return fmt.Errorf("[pins]: %w", err)
	}
	if miss := profile.Missing(); len(miss) > 0 {
		return fmt.Errorf("[pins]: role %s has no pin: set it under [pins], e.g. %s = \"GPIO17\"", miss[0], miss[0])
	}
	return nil
}

func (f *FleetConfig) validate() error {
	var errs []error
	if f.DeviceID != "" {
		if err := link.ValidName(f.DeviceID); err != nil {
			errs = append(errs, fmt.Errorf("fleet.device_id: %w", err))
		}
	}
	for _, g := range f.Groups {
		if err := link.ValidName(g); err != nil {
			errs = append(errs, fmt.Errorf("fleet.groups: %w", err))
		}
	}
	if f.EnrolCert != "" || f.EnrolKey != "" {
		if f.EnrolCert == "" || f.EnrolKey == "" {
			errs = append(errs, errors.New("fleet.enrol_cert and fleet.enrol_key go together: set both to the fleet's enrolment credential"))
		}
		if f.Broker == "" || f.CAFile == "" {
			errs = append(errs, errors.New("fleet.enrol_cert is set but fleet.broker or fleet.ca_file is not: enrolment needs the fleet's broker and CA"))
		}
		if f.DeviceID != "" && f.enrols() {
			errs = append(errs, errors.New("fleet.device_id must be empty on a unit that enrols: its id is derived from its own key"))
		}
	}
	if f.RenewBefore.Duration < 0 {
		errs = append(errs, errors.New("fleet.renew_before must not be negative"))
	}
	if f.enrols() {
		return errors.Join(errs...) // device id and fleet key come from enrolment
	}
	if f.Broker != "" && f.DeviceID == "" {
		errs = append(errs, errors.New("fleet.broker is set but fleet.device_id is not: set the unit's device id (the CN of its client certificate)"))
	}
	if f.Broker != "" && f.FleetKey == "" {
		errs = append(errs, errors.New("fleet.broker is set but fleet.fleet_key is not: install the fleet's public key (fleet.pub) and point fleet_key at it"))
	}
	return errors.Join(errs...)
}

func resetHoldRange(d Duration) error {
	if d.Duration != 0 && (d.Duration < 3*time.Second || d.Duration > time.Minute) {
		return fmt.Errorf("buttons.factory_reset_hold = %q: use 0s (off) or 3s to 1m, so a brief press of both buttons can never wipe the unit", d.String())
	}
	return nil
}

func intRange(key string, v, min, max int) error {
	if v < min || v > max {
		return fmt.Errorf("%s = %d is out of range: use a value from %d to %d", key, v, min, max)
	}
	return nil
}

func oneOf(key, v string, valid ...string) error {
	for _, ok := range valid {
		if v == ok {
			return nil
		}
	}
	return fmt.Errorf("%s = %q: use one of %s", key, v, strings.Join(valid, ", "))
}

// iceServer is one [[conference.ice_servers]] entry: a STUN or TURN server
// (turn:host:3478?transport=udp, turns:host:443?transport=tcp for TURN over
// TLS where only 443 gets out). The credential is a secret: never logged.
type iceServer struct {
	URLs       []string `toml:"urls"`
	Username   string   `toml:"username"`
	Credential string   `toml:"credential"`
}
