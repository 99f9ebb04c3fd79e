package link

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// DefaultMaxQueued is Options.MaxQueued's default: 10,000 messages, a few
// MB on disk, days of a unit's events while its broker is away.
const DefaultMaxQueued = 10000

// Options configures a Link.
type Options struct {
	// Broker is mqtts://host[:port] (or ssl://, the same; port 8883 by
	// default). Plain tcp://host[:port] (or mqtt://) is accepted only for a
	// broker on this machine, such as the demo's embedded broker.
	Broker string
	// CAFile holds the fleet CA that signed the broker's certificate. Only
	// this CA is trusted, not the system's roots.
	CAFile string
	// CertFile and KeyFile are the unit's client certificate, whose CN must
	// be DeviceID. They are read again at every connection attempt, so a
	// renewed certificate is picked up without restarting.
	CertFile, KeyFile string
	// DeviceID is the unit's id; its MQTT client id is UnitClientID(DeviceID),
	// which the shipped broker replaces with the certificate's CN.
	DeviceID string
	// Groups are the groups whose config and commands the unit follows.
	Groups []string
	// Prefix is the root of the fleet's topic tree (DefaultPrefix if empty).
	Prefix string
	// StoreDir keeps outgoing QoS 1 messages (events) that the broker has not
	// acknowledged yet, across broker outages and restarts of roomd. Required;
	// created with mode 0700.
	StoreDir string

	// KeepAlive bounds how long a silently dead connection goes unnoticed
	// (default 30 s; the broker fires the last will after 1.5×).
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt, TLS and CONNACK
	// included (default 10 s).
	ConnectTimeout time.Duration
	// MinBackoff and MaxBackoff shape reconnection: waits double from
	// MinBackoff up to MaxBackoff, each with random jitter (defaults 1 s and
	// 60 s). See jitter.
	MinBackoff, MaxBackoff time.Duration
	// MaxQueued bounds the outgoing queue (events and audit records
	// waiting on disk for the broker; DefaultMaxQueued if 0). When it is
	// full a new event is dropped (the newest goes, ErrQueueFull; the
	// oldest are what the fleet lacks most) and an audit record is not
	// taken: the audit log keeps it and the agent sends it later.
	MaxQueued int
	// RetryMin and RetryMax shape the re-subscription of group config
	// topics that have delivered nothing since the link opened (see
	// retryGroups): waits double from RetryMin up to RetryMax (defaults
	// 5 s and 5 min).
	RetryMin, RetryMax time.Duration
	// Status is announced (online) on every connect until PublishStatus
	// replaces it.
	Status Status
	// Logger receives connection changes, topics and sizes (slog.Default()
	// if nil).
	Logger *slog.Logger
	// OnConnectError, if set, hears why each connection attempt failed
	// (from paho's goroutine; it must not block). Revoked tells a
	// certificate the fleet revoked apart from a network problem.
	OnConnectError func(error)
	// OnToken and OnSchedule, if set, subscribe the unit to fleetd's
	// answers to its token requests and to its consultation schedule, and
	// hear them (from paho's goroutine; they must not block). See
	// fleetd.go.
	OnToken    func(payload []byte)
	OnSchedule func(payload []byte, retained bool)
}

func (o *Options) defaults() error {
	if err := ValidName(o.DeviceID); err != nil {
		return fmt.Errorf("link: device id: %w", err)
	}
	for _, g := range o.Groups {
		if err := ValidName(g); err != nil {
			return fmt.Errorf("link: group: %w", err)
		}
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	for _, seg := range strings.Split(o.Prefix, "/") {
		if err := ValidName(seg); err != nil {
			return fmt.Errorf("link: prefix %q: %w", o.Prefix, err)
		}
	}
	if o.StoreDir == "" {
		return errors.New("link: no store directory: queued events would not survive a restart")
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = DefaultMaxQueued
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 5 * time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = o.RetryMin
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Groups = slices.Clone(o.Groups)
	return nil
}

// brokerAddr returns the host:port to dial and whether to use TLS.
func brokerAddr(broker string) (string, bool, error) {
	u, err := url.Parse(broker)
	if err != nil {
		return "", false, fmt.Errorf("link: broker URL: %w", err)
	}
	if u.User != nil {
		// The unit authenticates with its certificate; a password in the URL
		// would end up in logs.
		return "", false, errors.New("link: broker URL must not carry credentials")
	}
	if u.Hostname() == "" {
		return "", false, fmt.Errorf("link: broker URL %q has no host", u.Redacted())
	}
	port := u.Port()
	var useTLS bool
	switch u.Scheme {
	case "mqtts", "ssl", "tls":
		useTLS = true
		if port == "" {
			port = "8883"
		}
	case "tcp", "mqtt":
		if port == "" {
			port = "1883"
		}
		if !isLoopback(u.Hostname()) {
			return "", false, fmt.Errorf("link: refusing plain %s:// to %s: configs, commands and events would cross the network unencrypted; use mqtts:// (plain tcp:// is only for a broker on this machine)", u.Scheme, u.Host)
		}
	default:
		return "", false, fmt.Errorf("link: broker URL scheme %q: want mqtts:// (or tcp:// to loopback)", u.Scheme)
	}
	return net.JoinHostPort(u.Hostname(), port), useTLS, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func tlsConfig(o Options) (*tls.Config, error) {
	if o.CAFile == "" || o.CertFile == "" || o.KeyFile == "" {
		return nil, errors.New("link: mqtts needs a CA file, a client certificate and its key")
	}
	pem, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("link: fleet CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("link: fleet CA %s: no PEM certificate", o.CAFile)
	}
	// Checked once up front: a certificate whose CN is not the device id
	// connects fine and is then silently denied every topic by the ACL.
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("link: client certificate: %w", err)
	}
	if cn := cert.Leaf.Subject.CommonName; cn != o.DeviceID {
		return nil, fmt.Errorf("link: client certificate is for %q, not device %q", cn, o.DeviceID)
	}
	certFile, keyFile := o.CertFile, o.KeyFile
	return &tls.Config{
		RootCAs:    roots,
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("link: client certificate: %w", err)
			}
			return &c, nil
		},
	}, nil
}
