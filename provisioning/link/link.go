// Package link is a room unit's MQTT connection to its fleet: TLS with the
// unit's client certificate, a persistent session, QoS 1 with a file-backed
// outgoing queue, and exactly the subscriptions the fleet contract gives a
// unit (its own config and cmd topics and those of its groups).
//
// The link moves bytes; it neither verifies signatures nor interprets
// configs. Payloads can carry secrets, so the link logs topics and sizes,
// never payloads.
package link

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

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
}

// Revoked reports whether a connection error is the broker refusing the
// unit's certificate as revoked (TLS alert certificate_revoked, which
// Mosquitto sends when the fleet CA's CRL lists it). crypto/tls does not
// export its alert type for TCP connections, so this reads the alert's
// text, which Go has kept stable since 1.0.
func Revoked(err error) bool {
	return err != nil && strings.Contains(err.Error(), "tls: revoked certificate")
}

// LastError is why the last connection attempt failed (nil once connected).
func (l *Link) LastError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// Message is a message from the fleet on one of the unit's subscriptions.
type Message struct {
	Kind  Kind   // DeviceConfig, GroupConfig, DeviceCmd or GroupCmd
	Group string // the group, for GroupConfig and GroupCmd
	Topic string
	// Payload is the signed envelope, unverified.
	Payload []byte
	// Retained is set for a stored config the broker hands over on
	// (re)subscribing, as opposed to one pushed just now.
	Retained bool
}

// Status is what a unit announces on its retained status topic.
type Status struct {
	Online  bool   `json:"online"`
	State   string `json:"state,omitempty"`
	Version string `json:"version,omitempty"`
	// ConfigGeneration changes whenever the config the unit runs on does.
	ConfigGeneration uint64    `json:"config_generation,omitempty"`
	At               time.Time `json:"at,omitzero"`
}

// Event is one unit → fleet event. ID makes it unique: QoS 1 may deliver an
// event twice, and the fleet drops the copy by ID.
type Event struct {
	ID   string    `json:"id"`
	Type string    `json:"type"`
	At   time.Time `json:"at"`
	Data any       `json:"data,omitempty"`
}

// ConnState is a change of the link's connection.
type ConnState struct {
	Up  bool
	At  time.Time
	Err error // why it went down or could not come up, if known
}

// offlineWill is the last will, published by the broker when the unit's
// connection ends without a DISCONNECT.
const offlineWill = `{"online":false}`

// ErrClosed is returned by a Link that has been closed.
var ErrClosed = errors.New("link: closed")

// Link is a unit's connection to its fleet broker. Its methods are safe for
// concurrent use.
type Link struct {
	opts   Options
	log    *slog.Logger
	topics Topics
	host   string      // host:port to dial
	tls    *tls.Config // nil for plain tcp to loopback
	client mqtt.Client

	ctx    context.Context // ends at Close: aborts dials and backoff waits
	cancel context.CancelFunc

	msgs   chan Message
	states chan ConnState

	mu       sync.Mutex
	closed   bool
	up       bool
	upCh     chan struct{} // closed while up
	gen      uint64        // counts connects and losses, see onConnect
	lastErr  error
	status   Status
	reported []byte
	// heard holds the group config topics that delivered a message since
	// Open; retryGroups re-subscribes the others.
	heard     map[string]bool
	closeOnce sync.Once
}

// Dial opens a link and waits until it is connected and subscribed. If ctx
// ends first, the link is closed and the error says why the broker could not
// be reached: roomd's rollback of a config that lost the broker hangs on
// this. Use Open to keep trying in the background instead.
func Dial(ctx context.Context, opts Options) (*Link, error) {
	l, err := Open(opts)
	if err != nil {
		return nil, err
	}
	if err := l.WaitConnected(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Open starts a link that connects, and keeps reconnecting, in the
// background. Events published before it first connects are queued.
func Open(opts Options) (*Link, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	host, useTLS, err := brokerAddr(opts.Broker)
	if err != nil {
		return nil, err
	}
	l := &Link{
		opts:   opts,
		log:    opts.Logger.With("device", opts.DeviceID),
		topics: Topics{Prefix: opts.Prefix},
		host:   host,
		msgs:   make(chan Message, 64),
		states: make(chan ConnState, 16),
		upCh:   make(chan struct{}),
		status: opts.Status,
		heard:  map[string]bool{},
	}
	if useTLS {
		if l.tls, err = tlsConfig(opts); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(opts.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("link: store: %w", err)
	}
	// An existing directory keeps its mode from MkdirAll; the queue holds
	// events, and only roomd should read them.
	if err := os.Chmod(opts.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("link: store: %w", err)
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())

	id := opts.DeviceID
	o := mqtt.NewClientOptions()
	o.AddBroker("tcp://" + host) // dialled by l.dial, which applies TLS
	o.SetCustomOpenConnectionFn(l.dial)
	// The broker keys the persistent session by the CN, not by this id
	// (deploy/mosquitto: use_username_as_clientid), so no other certificate
	// can take it over.
	o.SetClientID(UnitClientID(id))
	o.SetProtocolVersion(4)
	o.SetCleanSession(false)
	o.SetResumeSubs(false) // onConnect subscribes afresh on every connect
	o.SetOrderMatters(false)
	o.SetStore(&store{
		FileStore: mqtt.NewFileStore(opts.StoreDir),
		volatile:  map[string]bool{l.topics.Status(id): true, l.topics.Reported(id): true},
	})
	o.SetKeepAlive(opts.KeepAlive)
	o.SetPingTimeout(opts.ConnectTimeout)
	o.SetConnectTimeout(opts.ConnectTimeout)
	// Bounds how long a publish can block while paho's writer is stuck on
	// a connection that died without anyone noticing yet.
	o.SetWriteTimeout(5 * time.Second)
	o.SetConnectRetry(true)
	o.SetConnectRetryInterval(opts.MinBackoff)
	o.SetAutoReconnect(true)
	o.SetMaxReconnectInterval(opts.MaxBackoff)
	o.SetBinaryWill(l.topics.Status(id), []byte(offlineWill), 1, true)
	o.SetOnConnectHandler(l.onConnect)
	o.SetConnectionLostHandler(l.onLost)
	o.SetConnectionNotificationHandler(l.onNotify)
	o.SetDefaultPublishHandler(l.onMessage)
	l.client = mqtt.NewClient(o)

	l.log.Info("fleet link starting", "broker", host, "tls", useTLS, "groups", opts.Groups)
	// With ConnectRetry the token completes only once connected; the link
	// reports that through onConnect instead.
	l.client.Connect()
	return l, nil
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

// dial opens the connection for paho. Doing it here rather than in paho
// means Close cancels a dial in progress, and no proxy environment variable
// can reroute the connection.
//
// The connection refuses packets over MaxPacketSize before paho reads them.
func (l *Link) dial(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.opts.ConnectTimeout)
	defer cancel()
	var c net.Conn
	var err error
	if l.tls == nil {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", l.host)
	} else {
		d := tls.Dialer{Config: l.tls}
		c, err = d.DialContext(ctx, "tcp", l.host)
	}
	if err != nil {
		return nil, err
	}
	return newLimitConn(c, MaxPacketSize), nil
}

// Messages delivers the fleet's configs and commands. It is closed by Close.
// Deliver promptly: a full channel drops messages (a retained config comes
// again on the next reconnect; a dropped command is logged).
func (l *Link) Messages() <-chan Message { return l.msgs }

// States reports the connection going up and down. Only the latest changes
// are kept if nobody reads; Connected and WaitConnected give the current
// state. It is closed by Close.
func (l *Link) States() <-chan ConnState { return l.states }

// Connected says whether the link is connected and subscribed.
func (l *Link) Connected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up
}

// WaitConnected returns once the link is connected and subscribed, or with
// an error when ctx ends (wrapping the last connection error, if any) or the
// link is closed.
func (l *Link) WaitConnected(ctx context.Context) error {
	l.mu.Lock()
	ch, closed := l.upCh, l.closed
	l.mu.Unlock()
	if closed {
		return ErrClosed
	}
	select {
	case <-ch:
		return nil
	case <-l.ctx.Done():
		return ErrClosed
	case <-ctx.Done():
		l.mu.Lock()
		last := l.lastErr
		l.mu.Unlock()
		if last != nil {
			return fmt.Errorf("link: broker %s not reached: %w (last attempt: %w)", l.host, ctx.Err(), last)
		}
		return fmt.Errorf("link: broker %s not reached: %w", l.host, ctx.Err())
	}
}

// filters are the unit's subscriptions: its own config and cmd, and its
// groups'. Nothing else, so a wildcard can never hand it someone else's
// messages even on a broker with a loose ACL.
func (l *Link) filters() map[string]byte {
	f := map[string]byte{
		l.topics.DeviceConfig(l.opts.DeviceID): 1,
		l.topics.DeviceCmd(l.opts.DeviceID):    1,
	}
	for _, g := range l.opts.Groups {
		f[l.topics.GroupConfig(g)] = 1
		f[l.topics.GroupCmd(g)] = 1
	}
	return f
}

// subsFile remembers what the unit subscribed to. With a persistent session
// the broker keeps subscriptions across connections, so when the unit leaves
// a group, the old group's filters must be unsubscribed explicitly.
func (l *Link) subsFile() string { return filepath.Join(l.opts.StoreDir, "subscriptions.json") }

func (l *Link) staleFilters(want map[string]byte) []string {
	b, err := os.ReadFile(l.subsFile())
	if err != nil {
		return nil
	}
	var had []string
	if json.Unmarshal(b, &had) != nil {
		return nil
	}
	var stale []string
	for _, f := range had {
		if _, ok := want[f]; !ok {
			stale = append(stale, f)
		}
	}
	return stale
}

func (l *Link) onConnect(c mqtt.Client) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	// paho runs onConnect and onLost in goroutines of their own; gen tells
	// this connect's completion apart from a loss that overtook it.
	l.gen++
	gen := l.gen
	l.mu.Unlock()

	wait := l.opts.ConnectTimeout
	want := l.filters()
	if stale := l.staleFilters(want); len(stale) > 0 {
		t := c.Unsubscribe(stale...)
		if t.WaitTimeout(wait) && t.Error() == nil {
			l.log.Info("fleet link left old subscriptions", "topics", stale)
		}
	}
	tok := c.SubscribeMultiple(want, l.onMessage)
	if !tok.WaitTimeout(wait) {
		l.setDown(gen, fmt.Errorf("link: no SUBACK within %s", wait))
		return
	}
	if err := tok.Error(); err != nil {
		l.setDown(gen, fmt.Errorf("link: subscribe: %w", err))
		return
	}
	var refused []string
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for topic, code := range st.Result() {
			if code != 0x80 {
				continue
			}
			if k, _, _ := l.topics.Parse(topic); k == GroupConfig || k == GroupCmd {
				// The unit's group lines come from fleetctl acl, which the
				// fleet manager runs after approving it: retried below.
				l.log.Warn("fleet link: broker refused a group subscription; retrying with backoff (fleetctl acl, then reload the broker)", "topic", topic)
				refused = append(refused, topic)
				continue
			}
			// Not retried until the next connect: the unit's own topics are
			// in the shipped ACL's %u patterns, so this is a broker ACL that
			// disagrees with the fleet contract, not a glitch.
			l.setDown(gen, fmt.Errorf("link: broker refused subscription to %s (check the broker's ACL for %s)", topic, l.opts.DeviceID))
			return
		}
	}
	topics := slices.Sorted(maps.Keys(want))
	if b, err := json.Marshal(topics); err == nil {
		if err := os.WriteFile(l.subsFile(), b, 0o600); err != nil {
			l.log.Warn("fleet link: cannot remember subscriptions", "err", err)
		}
	}

	l.mu.Lock()
	st := l.status
	rep := l.reported
	l.mu.Unlock()
	st.Online = true
	l.publishState(c, l.topics.Status(l.opts.DeviceID), st)
	if rep != nil {
		l.publishRaw(c, l.topics.Reported(l.opts.DeviceID), rep)
	}
	l.log.Info("fleet link up", "broker", l.host, "subscriptions", topics)
	l.setUp(gen)
	go l.retryGroups(c, gen, refused)
}

// retryGroups re-subscribes, with backoff, to the group config topics that
// have delivered nothing since Open and to the group topics the broker
// refused (SUBACK 0x80), until each has delivered (or, for a refused cmd
// topic, been granted), the connection changes or the link closes.
//
// Why: a newly approved unit subscribes to its groups before the fleet
// manager has added them to the broker's ACL. Mosquitto 2.0 grants such a
// subscription but withholds the retained config (it checks read access
// when delivering), and reloading the ACL does not send it either: only a
// new SUBSCRIBE does. A group that has no config at all costs one
// SUBSCRIBE every RetryMax.
func (l *Link) retryGroups(c mqtt.Client, gen uint64, refused []string) {
	pending := func() map[string]byte {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.closed || gen != l.gen {
			return nil
		}
		f := map[string]byte{}
		for _, g := range l.opts.Groups {
			if t := l.topics.GroupConfig(g); !l.heard[t] {
				f[t] = 1
			}
		}
		for _, t := range refused {
			if k, _, _ := l.topics.Parse(t); k == GroupCmd {
				f[t] = 1
			}
		}
		return f
	}
	wait := l.opts.RetryMin
	for {
		want := pending()
		if len(want) == 0 {
			return
		}
		select {
		case <-time.After(wait):
		case <-l.ctx.Done():
			return
		}
		if want = pending(); len(want) == 0 {
			return
		}
		before := l.heardCount()
		tok := c.SubscribeMultiple(want, l.onMessage)
		if !tok.WaitTimeout(l.opts.ConnectTimeout) || tok.Error() != nil {
			wait = min(2*wait, l.opts.RetryMax)
			continue
		}
		var still []string
		if st, ok := tok.(*mqtt.SubscribeToken); ok {
			for t, code := range st.Result() {
				if code == 0x80 {
					still = append(still, t)
				}
			}
		}
		refused = still
		l.log.Info("fleet link re-subscribed to group topics without a config", "topics", slices.Sorted(maps.Keys(want)), "refused", len(still))
		// The broker sends retained messages right after the SUBACK; give
		// them a moment before judging the attempt.
		select {
		case <-time.After(time.Second):
		case <-l.ctx.Done():
			return
		}
		if l.heardCount() > before {
			wait = l.opts.RetryMin
		} else {
			wait = min(2*wait, l.opts.RetryMax)
		}
	}
}

func (l *Link) heardCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.heard)
}

func (l *Link) onLost(_ mqtt.Client, err error) {
	l.mu.Lock()
	l.gen++
	gen := l.gen
	l.mu.Unlock()
	l.log.Warn("fleet link lost", "broker", l.host, "err", err)
	l.setDown(gen, err)
}

func (l *Link) onNotify(_ mqtt.Client, n mqtt.ConnectionNotification) {
	switch n := n.(type) {
	case mqtt.ConnectionNotificationConnecting:
		if n.Attempt == 0 && !n.IsReconnect {
			return // boot: connect at once
		}
		select {
		case <-time.After(jitter(n.Attempt, l.opts.MinBackoff, l.opts.MaxBackoff)):
		case <-l.ctx.Done():
		}
	case mqtt.ConnectionNotificationFailed:
		reason := n.Reason
		if l.tls != nil && droppedAfterHandshake(reason) {
			if perr := l.probeTLS(); isTLSAlert(perr) {
				reason = fmt.Errorf("%w; the broker refused this unit's certificate: %w", reason, perr)
			}
		}
		l.mu.Lock()
		l.lastErr = reason
		closed := l.closed
		l.mu.Unlock()
		if !closed {
			l.log.Warn("fleet link: connection attempt failed", "broker", l.host, "err", reason)
			if l.opts.OnConnectError != nil {
				l.opts.OnConnectError(reason)
			}
		}
	}
}

// droppedAfterHandshake says the broker cut the connection rather than
// refusing it (a reset, a broken pipe, an early EOF).
func droppedAfterHandshake(err error) bool {
	if err == nil || isTLSAlert(err) {
		return false
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) {
		return true
	}
	// paho does not always wrap with %w.
	m := err.Error()
	return strings.Contains(m, "connection reset by peer") || strings.Contains(m, "broken pipe") || strings.HasSuffix(m, "EOF")
}

func isTLSAlert(err error) bool {
	return err != nil && strings.Contains(err.Error(), "remote error: tls:")
}

// probeTLS connects again and only reads. With TLS 1.3 the broker checks
// the unit's certificate after the handshake has finished on the unit's
// side; its refusal (an alert, then close) is lost when the unit has
// already written CONNECT and the close resets the socket, so a revoked
// unit saw only "connection reset" (and no fault) whenever it wrote first.
// A connection that writes nothing receives the alert. A broker that
// accepts the certificate waits for CONNECT: the read times out, nil.
func (l *Link) probeTLS() error {
	ctx, cancel := context.WithTimeout(l.ctx, l.opts.ConnectTimeout)
	defer cancel()
	d := tls.Dialer{Config: l.tls}
	c, err := d.DialContext(ctx, "tcp", l.host)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

func (l *Link) setUp(gen uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || gen != l.gen || l.up || !l.client.IsConnectionOpen() {
		return
	}
	l.up = true
	l.lastErr = nil
	close(l.upCh)
	l.notify(ConnState{Up: true, At: time.Now()})
}

func (l *Link) setDown(gen uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.lastErr = err
		if !l.closed && !l.up {
			l.log.Warn("fleet link not up", "err", err)
		}
	}
	if l.closed || gen != l.gen || !l.up {
		return
	}
	l.up = false
	l.upCh = make(chan struct{})
	l.notify(ConnState{Up: false, At: time.Now(), Err: err})
}

// notify queues s, dropping the oldest change if nobody has been reading:
// the latest state is the one that matters. Called with l.mu held.
func (l *Link) notify(s ConnState) {
	for {
		select {
		case l.states <- s:
			return
		default:
		}
		select {
		case <-l.states:
		default:
		}
	}
}

// onMessage hands a message to Messages without blocking: paho acknowledges
// a QoS 1 message when the handler returns.
func (l *Link) onMessage(_ mqtt.Client, m mqtt.Message) {
	topic := m.Topic()
	k, name, ok := l.topics.Parse(topic)
	mine := ok && ((k == DeviceConfig || k == DeviceCmd) && name == l.opts.DeviceID ||
		(k == GroupConfig || k == GroupCmd) && slices.Contains(l.opts.Groups, name))
	if !mine {
		l.log.Warn("fleet link: dropped message on a topic that is not the unit's", "topic", topic, "bytes", len(m.Payload()))
		return
	}
	msg := Message{Kind: k, Topic: topic, Payload: m.Payload(), Retained: m.Retained()}
	if k == GroupConfig || k == GroupCmd {
		msg.Group = name
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	if k == GroupConfig {
		l.heard[topic] = true
	}
	select {
	case l.msgs <- msg:
		l.log.Debug("fleet message", "topic", topic, "bytes", len(msg.Payload), "retained", msg.Retained)
	default:
		l.log.Error("fleet link: message dropped, receiver is not keeping up", "topic", topic, "bytes", len(msg.Payload))
	}
}

// PublishEvent queues ev for the fleet (QoS 1) and returns its id, filling
// in ID and At if empty. It does not wait for the broker: when the broker is
// down the event waits in the store directory and goes out after
// reconnecting, also across a restart of roomd. Delivery is at least once.
func (l *Link) PublishEvent(ev Event) (string, error) {
	if ev.ID == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		ev.ID = hex.EncodeToString(b[:])
	}
	if ev.At.IsZero() {
		ev.At = time.Now().UTC()
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return "", fmt.Errorf("link: event %s: %w", ev.Type, err)
	}
	if l.isClosed() {
		return "", ErrClosed
	}
	topic := l.topics.Events(l.opts.DeviceID)
	// While disconnected paho only writes the message to the store and
	// returns; while connected it hands it to its writer, bounded by the
	// write timeout.
	tok := l.client.Publish(topic, 1, false, b)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return "", fmt.Errorf("link: event %s on %s: %w", ev.Type, topic, err)
		}
	default:
	}
	l.log.Debug("fleet event queued", "topic", topic, "bytes", len(b), "type", ev.Type)
	return ev.ID, nil
}

// PublishStatus sets what the unit announces on its retained status topic
// (Online is set by the link) and publishes it now if connected; otherwise
// on the next connect.
func (l *Link) PublishStatus(s Status) error {
	if s.At.IsZero() {
		s.At = time.Now().UTC()
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.status = s
	up := l.up
	l.mu.Unlock()
	if up {
		s.Online = true
		l.publishState(l.client, l.topics.Status(l.opts.DeviceID), s)
	}
	return nil
}

// PublishReported sets the unit's retained reported state (any JSON value)
// and publishes it now if connected; otherwise on the next connect. Like
// events, it must name no secrets.
func (l *Link) PublishReported(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("link: reported state: %w", err)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.reported = b
	up := l.up
	l.mu.Unlock()
	if up {
		l.publishRaw(l.client, l.topics.Reported(l.opts.DeviceID), b)
	}
	return nil
}

func (l *Link) publishState(c mqtt.Client, topic string, s Status) {
	b, err := json.Marshal(s)
	if err != nil { // cannot happen for Status
		l.log.Error("fleet link: status", "err", err)
		return
	}
	l.publishRaw(c, topic, b)
}

// publishRaw publishes retained state without waiting; a failure is logged
// from a goroutine and healed by the republish on the next connect.
func (l *Link) publishRaw(c mqtt.Client, topic string, b []byte) {
	tok := c.Publish(topic, 1, true, b)
	go func() {
		if tok.WaitTimeout(l.opts.ConnectTimeout) && tok.Error() != nil {
			l.log.Warn("fleet link: publish failed", "topic", topic, "bytes", len(b), "err", tok.Error())
		}
	}()
	l.log.Debug("fleet state published", "topic", topic, "bytes", len(b))
}

func (l *Link) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// Close announces the unit offline (if connected), disconnects cleanly and
// closes Messages and States. Events still queued stay in the store
// directory for the next Open with the same directory.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		up := l.up
		st := l.status
		l.mu.Unlock()
		if up {
			st.Online = false
			st.At = time.Now().UTC()
			b, _ := json.Marshal(st)
			tok := l.client.Publish(l.topics.Status(l.opts.DeviceID), 1, true, b)
			// Without the broker's PUBACK the offline status may not have
			// arrived, and a clean DISCONNECT would suppress the will; the
			// keepalive then ends the session and the broker publishes the
			// will instead.
			if !tok.WaitTimeout(2*time.Second) || tok.Error() != nil {
				l.log.Warn("fleet link: offline status not acknowledged")
			}
		}
		l.mu.Lock()
		l.closed = true
		l.up = false
		l.mu.Unlock()
		l.cancel()
		l.client.Disconnect(250)

		l.mu.Lock()
		close(l.msgs)
		close(l.states)
		l.mu.Unlock()
		l.log.Info("fleet link closed", "broker", l.host)
	})
	return nil
}
