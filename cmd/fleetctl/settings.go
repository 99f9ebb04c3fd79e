package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// getenv reads fleetctl's environment; tests replace it so a developer's own
// FLEETCTL_* settings cannot leak into them.
var getenv = os.Getenv

// brokerSettings is how fleetctl reaches the fleet broker as the fleet
// manager. Each field comes from, in order of precedence: its flag, its
// FLEETCTL_* environment variable, the config file (--config, else
// $FLEETCTL_CONFIG, else $XDG_CONFIG_HOME/konsult/fleetctl.toml, else
// ~/.config/konsult/fleetctl.toml):
//
//	broker   = "mqtts://broker.clinic.example:8884"   # FLEETCTL_BROKER
//	ca       = "fleet-ca.crt"                         # FLEETCTL_CA
//	cert     = "fleet-admin.crt"                      # FLEETCTL_CERT
//	cert_key = "fleet-admin.key"                      # FLEETCTL_CERT_KEY
//	prefix   = "konsult"                              # FLEETCTL_PREFIX
//	ca_dir   = ".."                                   # FLEETCTL_CA_DIR (--ca-dir)
//
// Relative paths in the file are relative to the file. The TLS key is
// --cert-key, not --key: --key is the fleet signing key everywhere in
// fleetctl, and mixing the two up must not be one typo away.
type brokerSettings struct {
	Broker  string `toml:"broker"`
	CA      string `toml:"ca"`
	Cert    string `toml:"cert"`
	CertKey string `toml:"cert_key"`
	Prefix  string `toml:"prefix"`
	// CADir is the fleet CA folder (fleetctl ca init). Only the file sets
	// it here; commands read it with their --ca-dir (caDirFlag).
	CADir string `toml:"ca_dir"`

	configPath *string
	flags      brokerSettingsFlags
}

type brokerSettingsFlags struct{ broker, ca, cert, certKey, prefix *string }

func addBrokerFlags(fs *flag.FlagSet) *brokerSettings {
	s := &brokerSettings{}
	s.flags = brokerSettingsFlags{
		broker:  fs.String("broker", "", "the fleet broker's listener for the fleet manager, mqtts://host[:8884] (8883 is the units'; tcp:// only to this machine, e.g. the demo's broker) [$FLEETCTL_BROKER]"),
		ca:      fs.String("ca", "", "fleet CA certificate that signed the broker's certificate [$FLEETCTL_CA]"),
		cert:    fs.String("cert", "", "the fleet manager's client certificate (CN fleet-admin) [$FLEETCTL_CERT]"),
		certKey: fs.String("cert-key", "", "the private key of --cert (not the fleet signing key) [$FLEETCTL_CERT_KEY]"),
		prefix:  fs.String("prefix", "", "root of the fleet's topic tree (default konsult) [$FLEETCTL_PREFIX]"),
	}
	s.configPath = fs.String("config", "", "settings file (default ~/.config/konsult/fleetctl.toml) [$FLEETCTL_CONFIG]")
	return s
}

// resolve fills in the settings from flags, environment and config file, and
// checks them.
func (s *brokerSettings) resolve(cmd string) error {
	path, explicit := settingsPath(*s.configPath)
	if path != "" {
		if err := s.loadFile(path, explicit); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
	}
	for _, f := range []struct {
		dst  *string
		flag *string
		env  string
	}{
		{&s.Broker, s.flags.broker, "FLEETCTL_BROKER"},
		{&s.CA, s.flags.ca, "FLEETCTL_CA"},
		{&s.Cert, s.flags.cert, "FLEETCTL_CERT"},
		{&s.CertKey, s.flags.certKey, "FLEETCTL_CERT_KEY"},
		{&s.Prefix, s.flags.prefix, "FLEETCTL_PREFIX"},
	} {
		if *f.flag != "" {
			*f.dst = *f.flag
		} else if v := getenv(f.env); v != "" {
			*f.dst = v
		}
	}
	if s.Prefix == "" {
		s.Prefix = link.DefaultPrefix
	}
	for _, seg := range strings.Split(s.Prefix, "/") {
		if err := link.ValidName(seg); err != nil {
			return fmt.Errorf("%s: --prefix %q: %w", cmd, s.Prefix, err)
		}
	}
	if s.Broker == "" {
		return fmt.Errorf("%s: no broker: pass --broker mqtts://HOST:8884, set FLEETCTL_BROKER, or put broker = \"...\" in %s", cmd, displayConfigPath(path))
	}
	addr, useTLS, err := manager.BrokerAddr(s.Broker)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if _, port, _ := net.SplitHostPort(addr); useTLS && port == manager.UnitsPort {
		return fmt.Errorf("%s: --broker %s is the units' port: there the broker names every client after its certificate, so two fleetctl at once would throw each other off; use the fleet manager's port, %s", cmd, s.Broker, manager.WithPort(s.Broker, manager.ManagerPort))
	}
	if useTLS && (s.CA == "" || s.Cert == "" || s.CertKey == "") {
		var missing []string
		for _, m := range []struct{ v, name string }{{s.CA, "--ca"}, {s.Cert, "--cert"}, {s.CertKey, "--cert-key"}} {
			if m.v == "" {
				missing = append(missing, m.name)
			}
		}
		return fmt.Errorf("%s: %s needs the fleet CA and the fleet manager's client certificate: give %s (or FLEETCTL_CA, FLEETCTL_CERT, FLEETCTL_CERT_KEY, or ca/cert/cert_key in %s)",
			cmd, s.Broker, strings.Join(missing, ", "), displayConfigPath(path))
	}
	return nil
}

func (s *brokerSettings) loadFile(path string, explicit bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("settings file: %w", err)
	}
	var f brokerSettings
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		return fmt.Errorf("settings file %s is not valid TOML (%v): fix it or pass --config another file", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fmt.Errorf("settings file %s: unknown key %q: the keys are broker, ca, cert, cert_key, prefix, ca_dir", path, und[0].String())
	}
	dir := filepath.Dir(path)
	for _, p := range []*string{&f.CA, &f.Cert, &f.CertKey, &f.CADir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	s.Broker, s.CA, s.Cert, s.CertKey, s.Prefix, s.CADir = f.Broker, f.CA, f.Cert, f.CertKey, f.Prefix, f.CADir
	return nil
}

// settingsPath is the settings file: flag (--config), else
// $FLEETCTL_CONFIG, else the default path; explicit is false for the
// default, which need not exist.
func settingsPath(flag string) (path string, explicit bool) {
	if flag != "" {
		return flag, true
	}
	if p := getenv("FLEETCTL_CONFIG"); p != "" {
		return p, true
	}
	return defaultConfigPath(), false
}

// broker is the resolved settings as the manager takes them.
func (s *brokerSettings) broker() manager.Broker {
	return manager.Broker{URL: s.Broker, CA: s.CA, Cert: s.Cert, CertKey: s.CertKey, Prefix: s.Prefix}
}

// caDirFlag is --ca-dir: the fleet CA folder from fleetctl ca init.
type caDirFlag struct {
	fs  *flag.FlagSet
	dir *string
}

func addCADir(fs *flag.FlagSet) *caDirFlag {
	return addCADirUsage(fs, "the fleet CA directory from fleetctl ca init [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
}

func addCADirUsage(fs *flag.FlagSet, usage string) *caDirFlag {
	return &caDirFlag{fs: fs, dir: fs.String("ca-dir", "", usage)}
}

// resolve returns the CA folder: --ca-dir, else $FLEETCTL_CA_DIR, else
// ca_dir in the settings file (--config where the command has it); "" for
// none.
func (f *caDirFlag) resolve() (string, error) {
	if *f.dir != "" {
		return *f.dir, nil
	}
	if d := getenv("FLEETCTL_CA_DIR"); d != "" {
		return d, nil
	}
	cfg := ""
	if fl := f.fs.Lookup("config"); fl != nil {
		cfg = fl.Value.String()
	}
	path, explicit := settingsPath(cfg)
	if path == "" {
		return "", nil
	}
	var s brokerSettings
	if err := s.loadFile(path, explicit); err != nil {
		return "", err
	}
	return s.CADir, nil
}

func defaultConfigPath() string {
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "konsult", "fleetctl.toml")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "konsult", "fleetctl.toml")
	}
	return ""
}

func displayConfigPath(p string) string {
	if p == "" {
		return "~/.config/konsult/fleetctl.toml"
	}
	return p
}
