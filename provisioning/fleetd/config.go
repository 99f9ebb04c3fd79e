// Package fleetd is the fleet service: the daemon on the fleet manager's
// server that holds the conference server's API secret and hands each unit
// a short conference token for its own consultation only, sealed to the
// unit's key; keeps the consultations in SQLite and each unit's schedule on
// the broker; signs the certificate renewals units ask for; and answers
// fleetctl's consult verbs on a local socket.
package fleetd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// MaxTokenTTL is the longest a conference token fleetd issues is valid.
const MaxTokenTTL = 10 * time.Minute

// DefaultLead is how long before its start a consultation is due.
const DefaultLead = 10 * time.Minute

// Config is fleetd.toml (docs/FLEETD.md).
type Config struct {
	// Database is the SQLite file (one file: a backup is a copy).
	Database string `toml:"database"`
	// CADir is the fleet CA folder (fleetctl ca init): fleetd reads its
	// ledger (which units are enrolled, which revoked), and with renew on
	// signs renewals with its CA key and delivers them as commands signed
	// with its fleet.key. Without renew fleetd never reads fleet.key.
	CADir string `toml:"ca_dir"`
	// ScheduleKey is fleetd's own key for signing the units' schedules,
	// made on first start. Units take schedules under it once a fleet
	// config lists its public key in fleet.schedule_keys; it can sign
	// nothing else they accept. Unset, fleetd signs schedules with the
	// fleet key (as before schedule keys: an upgraded fleetd keeps its old
	// config file, and its units have no schedule_keys yet).
	ScheduleKey string `toml:"schedule_key"`
	// Socket is the local socket fleetctl's consult verbs talk to.
	Socket string `toml:"socket"`
	// SocketMode is its permission bits (default 0660: the service's group
	// may run fleetctl consult).
	SocketMode uint32 `toml:"socket_mode"`
	// PatientURL is the base of the patient links (…/join#ID.SECRET).
	PatientURL string `toml:"patient_url"`
	// Renew makes fleetd sign the renewals units ask for (fleetctl renew
	// --watch's job).
	Renew bool `toml:"renew"`

	Broker        BrokerConfig          `toml:"broker"`
	LiveKit       LiveKitConfig         `toml:"livekit"`
	Consultations ConsultationsConfig   `toml:"consultations"`
	Units         map[string]UnitConfig `toml:"units"`
	PatientWeb    PatientWebConfig      `toml:"patient_web"`
	Retention     RetentionConfig       `toml:"retention"`

	dir string
}

// BrokerConfig is how fleetd reaches the broker: the fleet manager's
// listener (8884) with fleetd's own certificate (CN fleetd).
type BrokerConfig struct {
	URL     string `toml:"url"`
	CA      string `toml:"ca"`
	Cert    string `toml:"cert"`
	CertKey string `toml:"cert_key"`
	Prefix  string `toml:"prefix"`
}

// LiveKitConfig is the conference server's API key pair, which only
// fleetd holds.
type LiveKitConfig struct {
	APIKey        string   `toml:"api_key"`
	APISecret     string   `toml:"api_secret"`
	APISecretFile string   `toml:"api_secret_file"`
	TokenTTL      Duration `toml:"token_ttl"`
}

// ConsultationsConfig shapes the consultation window.
type ConsultationsConfig struct {
	// Lead is how long before its start a consultation is due (JOIN enters
	// it, a token is issued for it). Default 10 minutes.
	Lead Duration `toml:"lead"`
	// Skew is how much a unit's clock may differ from fleetd's at the
	// window's edges. Default 2 minutes.
	Skew Duration `toml:"skew"`
}

// RetentionConfig bounds what fleetd keeps (docs/PRIVACY.md).
type RetentionConfig struct {
	// Audit is how long the units' audit records are kept after they
	// arrived (default DefaultAuditRetention). Older records go only as far
	// as a unit's own checkpoint accounts for them, so what stays still
	// verifies; a chain a unit has left (a factory reset started a new
	// one) goes whole once all of it is older.
	Audit Duration `toml:"audit"`
	// Records is how long the log of tokens issued, patient joins and
	// ended consultations is kept (default DefaultRecordRetention).
	Records Duration `toml:"records"`
}

// Retention defaults: a year of audit records (a DPO's yearly review, and
// far past the unit's own 90 days); 90 days of the token and join log.
const (
	DefaultAuditRetention  = 365 * 24 * time.Hour
	DefaultRecordRetention = 90 * 24 * time.Hour
)

// UnitConfig is per unit.
type UnitConfig struct {
	// StandingRoom is the room the unit enters when no consultation is
	// due, if it has a standing meeting.
	StandingRoom string `toml:"standing_room"`
}

// Duration is a time.Duration written "10m" (or "365d") in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration, or a whole number of days ("90d").
func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 36500 {
			return fmt.Errorf("duration %q: a whole number of days (90d) or a Go duration (36h)", s)
		}
		d.Duration = time.Duration(n) * 24 * time.Hour
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// LoadConfig reads and checks path. Relative paths in it are relative to
// its folder.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("fleetd config: %w", err)
	}
	var c Config
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		return nil, fmt.Errorf("fleetd config %s is not valid TOML: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("fleetd config %s: unknown key %q (see docs/FLEETD.md)", path, und[0].String())
	}
	c.dir = filepath.Dir(path)
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("fleetd config %s: %w", path, err)
	}
	return &c, nil
}

func (c *Config) abs(p *string) {
	if *p != "" && !filepath.IsAbs(*p) && c.dir != "" {
		*p = filepath.Join(c.dir, *p)
	}
}

// DefaultScheduleKey is where fleetd -schedule-key makes the key when
// schedule_key is not set: beside the database.
func (c *Config) DefaultScheduleKey() string {
	return filepath.Join(filepath.Dir(c.Database), "schedule.key")
}

func (c *Config) check() error {
	for _, p := range []*string{&c.Database, &c.CADir, &c.ScheduleKey, &c.Socket, &c.Broker.CA, &c.Broker.Cert, &c.Broker.CertKey, &c.LiveKit.APISecretFile} {
		c.abs(p)
	}
	if c.Database == "" {
		return errors.New("database is not set: database = \"/var/lib/konsult-fleetd/fleetd.db\"")
	}
	if c.CADir == "" {
		return errors.New("ca_dir is not set: the fleet CA folder from fleetctl ca init")
	}
	if c.SocketMode == 0 {
		c.SocketMode = 0o660
	}
	if c.Broker.Prefix == "" {
		c.Broker.Prefix = link.DefaultPrefix
	}
	if c.Broker.URL == "" {
		return errors.New("[broker] url is not set: the fleet manager's listener, mqtts://HOST:8884")
	}
	if _, useTLS, err := manager.BrokerAddr(c.Broker.URL); err != nil {
		return fmt.Errorf("[broker] url: %w", err)
	} else if useTLS && (c.Broker.CA == "" || c.Broker.Cert == "" || c.Broker.CertKey == "") {
		return errors.New("[broker] needs ca, cert and cert_key: fleetd's own certificate (CN fleetd) from the fleet CA")
	}
	if c.LiveKit.APISecretFile != "" {
		if c.LiveKit.APISecret != "" {
			return errors.New("[livekit] set api_secret or api_secret_file, not both")
		}
		b, err := readSecretFile(c.LiveKit.APISecretFile)
		if err != nil {
			return fmt.Errorf("[livekit] api_secret_file: %w", err)
		}
		c.LiveKit.APISecret = b
	}
	if c.LiveKit.APIKey == "" || c.LiveKit.APISecret == "" {
		return errors.New("[livekit] needs api_key and api_secret (or api_secret_file): fleetd is the one holder of the conference server's key pair")
	}
	if c.LiveKit.TokenTTL.Duration == 0 {
		c.LiveKit.TokenTTL.Duration = MaxTokenTTL
	}
	if c.LiveKit.TokenTTL.Duration < 30*time.Second || c.LiveKit.TokenTTL.Duration > MaxTokenTTL {
		return fmt.Errorf("[livekit] token_ttl %s: between 30s and %s", c.LiveKit.TokenTTL.Duration, MaxTokenTTL)
	}
	if c.Retention.Audit.Duration == 0 {
		c.Retention.Audit.Duration = DefaultAuditRetention
	}
	if c.Retention.Records.Duration == 0 {
		c.Retention.Records.Duration = DefaultRecordRetention
	}
	if c.Retention.Audit.Duration < 24*time.Hour || c.Retention.Records.Duration < 24*time.Hour {
		return fmt.Errorf("[retention] audit %s, records %s: at least 1d each", c.Retention.Audit.Duration, c.Retention.Records.Duration)
	}
	if c.Consultations.Lead.Duration == 0 {
		c.Consultations.Lead.Duration = DefaultLead
	}
	if c.Consultations.Skew.Duration == 0 {
		c.Consultations.Skew.Duration = 2 * time.Minute
	}
	if err := c.checkPatientWeb(); err != nil {
		return err
	}
	for id, u := range c.Units {
		if err := link.ValidName(id); err != nil {
			return fmt.Errorf("[units.%q]: %w", id, err)
		}
		if u.StandingRoom != "" && !validRoom(u.StandingRoom) {
			return fmt.Errorf("[units.%q] standing_room %q: letters, digits, - and _ only, at most 64", id, u.StandingRoom)
		}
	}
	return nil
}

// readSecretFile reads a secret that must not be readable by others.
func readSecretFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %04o): chmod 640 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func validRoom(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func (c *Config) manager() manager.Broker {
	return manager.Broker{URL: c.Broker.URL, CA: c.Broker.CA, Cert: c.Broker.Cert, CertKey: c.Broker.CertKey, Prefix: c.Broker.Prefix, Client: "fleetd"}
}
