package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/konsult/konsult/provisioning/link"
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
	path, explicit := *s.configPath, true
	if path == "" {
		path = getenv("FLEETCTL_CONFIG")
	}
	if path == "" {
		explicit = false
		path = defaultConfigPath()
	}
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
	addr, useTLS, err := brokerAddr(s.Broker)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if _, port, _ := net.SplitHostPort(addr); useTLS && port == unitsPort {
		return fmt.Errorf("%s: --broker %s is the units' port: there the broker names every client after its certificate, so two fleetctl at once would throw each other off; use the fleet manager's port, %s", cmd, s.Broker, withPort(s.Broker, managerPort))
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
		return fmt.Errorf("settings file %s: unknown key %q: the keys are broker, ca, cert, cert_key, prefix", path, und[0].String())
	}
	dir := filepath.Dir(path)
	for _, p := range []*string{&f.CA, &f.Cert, &f.CertKey} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	s.Broker, s.CA, s.Cert, s.CertKey, s.Prefix = f.Broker, f.CA, f.Cert, f.CertKey, f.Prefix
	return nil
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

// brokerAddr returns the host:port to dial and whether to use TLS. It
// follows the unit's rules (provisioning/link): mqtts:// anywhere, plain
// tcp:// only to loopback, never credentials in the URL.
func brokerAddr(broker string) (string, bool, error) {
	u, err := url.Parse(broker)
	if err != nil {
		return "", false, errors.New("--broker is not a URL: use mqtts://HOST:8884")
	}
	if u.User != nil {
		return "", false, errors.New("--broker must not carry a user or password: fleetctl authenticates with its client certificate (--cert, --cert-key)")
	}
	if u.Hostname() == "" {
		return "", false, fmt.Errorf("--broker %q has no host: use mqtts://HOST:8884", u.Redacted())
	}
	port := u.Port()
	switch u.Scheme {
	case "mqtts", "ssl", "tls":
		if port == "" {
			port = managerPort
		}
		return net.JoinHostPort(u.Hostname(), port), true, nil
	case "tcp", "mqtt":
		if port == "" {
			port = "1883"
		}
		if !isLoopback(u.Hostname()) {
			return "", false, fmt.Errorf("refusing plain %s:// to %s: signed configs (secrets included) would cross the network unencrypted; use mqtts:// (tcp:// is only for a broker on this machine)", u.Scheme, u.Host)
		}
		return net.JoinHostPort(u.Hostname(), port), false, nil
	}
	return "", false, fmt.Errorf("--broker scheme %q: use mqtts://HOST:8884 (or tcp:// to a broker on this machine)", u.Scheme)
}

// The shipped broker's listeners (deploy/mosquitto): 8883 for enrolled
// units, where the broker makes each client's id its certificate's CN (so
// every fleetctl would be "fleet-admin" and close the others' connections),
// and 8884 for the fleet manager and enrolling units, where each chooses
// its own.
const (
	unitsPort   = "8883"
	managerPort = "8884"
)

// withPort is broker (an mqtts:// URL) on port; other URLs (the demo's
// tcp:// broker, one listener for all) stay as they are.
func withPort(broker, port string) string {
	u, err := url.Parse(broker)
	if err != nil || u.Hostname() == "" {
		return broker
	}
	switch u.Scheme {
	case "mqtts", "ssl", "tls":
		u.Host = net.JoinHostPort(u.Hostname(), port)
		return u.String()
	}
	return broker
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
