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
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

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
	store  *store // the outgoing queue

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
	l.store = &store{
		FileStore: mqtt.NewFileStore(opts.StoreDir),
		volatile:  map[string]bool{l.topics.Status(id): true, l.topics.Reported(id): true},
	}
	o.SetStore(l.store)
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
