// Package manager is the fleet manager's side: the unit view, push jobs,
// commands, renewals, approvals, and its MQTT client. fleetctl is its
// command line; a fleet service daemon can run the same logic.
package manager

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Broker is how the fleet manager reaches the fleet broker: the URL of its
// listener for the fleet manager, the fleet CA, the fleet manager's client
// certificate (CN fleet-admin) and its key, and the topic prefix.
type Broker struct {
	URL     string
	CA      string
	Cert    string
	CertKey string
	Prefix  string
	// Client names the connecting program in its client id and sync topic
	// (konsult/<Client>/…): "fleetctl" if empty, "fleetd" for the fleet
	// service, whose ACL grants it only its own tree.
	Client string
	// Session, if set, makes the connection a persistent session under the
	// fixed client id konsult/<Client>/<Session>: the broker keeps its
	// subscriptions and queues QoS 1 messages for it while it is away
	// (fleetd's audit store must not miss a record a unit sent meanwhile).
	// Only one process may use a given session at a time.
	Session string
}

// The shipped broker's listeners (deploy/mosquitto): 8883 for enrolled
// units, where the broker makes each client's id its certificate's CN (so
// every fleet manager would be "fleet-admin" and close the others'
// connections), and 8884 for the fleet manager and enrolling units, where
// each chooses its own.
const (
	UnitsPort   = "8883"
	ManagerPort = "8884"
)

// BrokerAddr returns the host:port to dial and whether to use TLS. It
// follows the unit's rules (provisioning/link): mqtts:// anywhere, plain
// tcp:// only to loopback, never credentials in the URL.
func BrokerAddr(broker string) (string, bool, error) {
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
			port = ManagerPort
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

// WithPort is broker (an mqtts:// URL) on port; other URLs (the demo's
// tcp:// broker, one listener for all) stay as they are.
func WithPort(broker, port string) string {
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

// connectHint turns the usual ways a fleet manager's connection fails into
// the fix.
func connectHint(err error) string {
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var opErr *net.OpError
	switch {
	case errors.As(err, &unknownCA):
		return "--ca is not the CA that signed the broker's certificate"
	case errors.As(err, &hostErr):
		return "the broker's certificate is not for this host name: use the name it was issued for"
	case errors.Is(err, packets.ErrorRefusedNotAuthorised), errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
		return "the broker refused the client certificate: use the fleet manager's certificate (CN fleet-admin) issued by the fleet CA"
	case errors.As(err, &opErr):
		return "is the broker running and is --broker right?"
	}
	return "check --broker, --ca, --cert and --cert-key"
}

func adminTLS(b Broker) (*tls.Config, error) {
	pem, err := os.ReadFile(b.CA)
	if err != nil {
		return nil, fmt.Errorf("fleet CA (--ca): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("fleet CA %s holds no PEM certificate: give the fleet CA's .crt file", b.CA)
	}
	if fi, err := os.Stat(b.CertKey); err != nil {
		return nil, fmt.Errorf("client key (--cert-key): %w", err)
	} else if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("client key %s has mode %04o, readable by others: run chmod 600 %s", b.CertKey, perm, b.CertKey)
	}
	cert, err := tls.LoadX509KeyPair(b.Cert, b.CertKey)
	if err != nil {
		return nil, fmt.Errorf("client certificate (--cert, --cert-key): %w", err)
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
