package manager

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Msg is one message the fleet manager received.
type Msg struct {
	Kind     link.Kind
	Unit     string // device id, or group name for group topics
	Topic    string
	Payload  []byte
	Retained bool
	At       time.Time // when it arrived
	sync     string    // set on the client's own sync marker
	ack      func()    // a persistent session's PUBACK, sent once it is handled
}

// Client is the fleet manager's MQTT connection: a clean session (the
// fleet's state is in retained topics, so there is nothing to resume) that
// resubscribes after a reconnect and hands every message, in the order the
// broker sent it, to Next.
type Client struct {
	c       mqtt.Client
	topics  link.Topics
	host    string
	filters map[string]byte
	syncTop string
	log     *slog.Logger

	mu    sync.Mutex
	queue []Msg
	// handed is the ack of the message Next returned last, on a persistent
	// session: sent when the caller comes back for the next one, so a
	// message the caller had not finished when it stopped is sent again
	// by the broker on the next connect rather than lost.
	handed func()
	queued int           // payload bytes in queue
	wake   chan struct{} // a message was queued
	first  chan error    // the first connect's outcome
	once   sync.Once
}

// maxMessage is the largest message the client reads: a signed config
// envelope, the largest legitimate one (fleet.MaxEnvelopeSize, and the
// shipped broker's message_size_limit).
const maxMessage = fleet.MaxEnvelopeSize

// maxQueued bounds the payload bytes received and not yet handled.
const maxQueued = 512 << 20

// connectTimeout bounds the first connection; a broker that does not answer
// in this time is down or unreachable, and saying so beats hanging.
const connectTimeout = 10 * time.Second

// SyncTimeout bounds Sync; a variable so tests can shorten it.
var SyncTimeout = 10 * time.Second

// MaxPacketSize bounds the remaining length of any MQTT packet the client
// reads, checked before paho reads (and allocates) it: the largest message
// it accepts (maxMessage) plus its topic and packet id, as the unit's link
// allows (link.MaxPacketSize). A larger packet ends the connection.
const MaxPacketSize = link.MaxPacketSize

// Dial connects as the fleet manager and subscribes to filters.
func Dial(ctx context.Context, s Broker, log *slog.Logger, filters ...string) (*Client, error) {
	host, useTLS, err := BrokerAddr(s.URL)
	if err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if useTLS {
		if tlsConf, err = adminTLS(s); err != nil {
			return nil, err
		}
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tag := hex.EncodeToString(rnd[:])
	// A client id of its own for every fleetctl process (watch and a push
	// at once must not close each other's connection), under the prefix
	// the shipped broker requires of every chosen id (deploy/mosquitto).
	name := s.Client
	if name == "" {
		name = "fleetctl"
	}
	id := link.ClientIDPrefix + name + "/" + tag
	if s.Session != "" {
		id = link.ClientIDPrefix + name + "/" + s.Session
	}
	fc := &Client{
		topics:  link.Topics{Prefix: s.Prefix},
		host:    host,
		filters: map[string]byte{},
		log:     log,
		wake:    make(chan struct{}, 1),
		first:   make(chan error, 1),
	}
	// The sync marker travels on a topic of fleetctl's own under the fleet
	// prefix (which the fleet manager's ACL covers) and only this client
	// subscribes to it.
	fc.syncTop = s.Prefix + "/" + name + "/" + tag + "/sync"
	for _, f := range append(filters, fc.syncTop) {
		fc.filters[f] = 1
	}

	o := mqtt.NewClientOptions()
	o.AddBroker("tcp://" + host)
	o.SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
		defer cancel()
		var c net.Conn
		var err error
		if tlsConf == nil {
			var d net.Dialer
			c, err = d.DialContext(dctx, "tcp", host)
		} else {
			d := tls.Dialer{Config: tlsConf}
			c, err = d.DialContext(dctx, "tcp", host)
		}
		if err != nil {
			return nil, err
		}
		// paho allocates a packet's whole remaining length (up to 256 MiB)
		// before anything can look at it: a hostile or misconfigured broker
		// must not get to make fleetctl do that.
		return link.LimitConn(c, MaxPacketSize), nil
	})
	o.SetClientID(id)
	o.SetProtocolVersion(4)
	o.SetCleanSession(s.Session == "")
	// On a persistent session a message is acknowledged only once handled
	// (Next): paho would otherwise acknowledge it as soon as it is queued
	// here, and a process stopping with messages still queued would lose
	// them for good (fleetd's audit store: records a unit sent just before
	// fleetd stopped).
	o.SetAutoAckDisabled(s.Session != "")
	// In order: the sync marker must come after the retained messages the
	// broker sent before it.
	o.SetOrderMatters(true)
	o.SetConnectTimeout(connectTimeout)
	o.SetKeepAlive(30 * time.Second)
	o.SetAutoReconnect(true)
	o.SetMaxReconnectInterval(5 * time.Second)
	o.SetDefaultPublishHandler(fc.onMessage)
	o.SetOnConnectHandler(fc.onConnect)
	o.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		fc.log.Warn("connection to the fleet broker lost, reconnecting", "broker", host, "err", err)
	})
	fc.c = mqtt.NewClient(o)

	tok := fc.c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		fc.c.Disconnect(0)
		return nil, fmt.Errorf("broker %s: %w", host, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("cannot connect to the fleet broker %s: %w: %s", host, err, connectHint(err))
	}
	select {
	case err = <-fc.first:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		fc.c.Disconnect(0)
		return nil, fmt.Errorf("fleet broker %s: %w", host, err)
	}
	return fc, nil
}

func (fc *Client) onConnect(c mqtt.Client) {
	err := fc.subscribe(c)
	first := false
	fc.once.Do(func() { first = true; fc.first <- err })
	if err != nil && !first { // the first one is Dial's error
		fc.log.Warn("fleet broker", "err", err)
	}
}

func (fc *Client) subscribe(c mqtt.Client) error {
	tok := c.SubscribeMultiple(fc.filters, nil)
	// paho runs this in a goroutine of its own, so waiting here does not
	// hold up the messages that follow the SUBACK.
	if !tok.WaitTimeout(connectTimeout) {
		return errors.New("no SUBACK from the broker")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for topic, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("the broker refused a subscription to %s: use the fleet manager's certificate (CN fleet-admin), which the ACL lets read the whole tree", topic)
			}
		}
	}
	return nil
}

// onMessage queues without blocking: with ordered delivery paho's reader
// waits for this handler, and a blocked reader would never see the PUBACK
// a publisher is waiting for.
func (fc *Client) onMessage(_ mqtt.Client, m mqtt.Message) {
	// What units and enrolling units write is capped here as well as by
	// the broker (message_size_limit): fleetctl may face another broker.
	// (A skipped message is acknowledged: it would be just as bad again.)
	if len(m.Payload()) > maxMessage {
		m.Ack()
		fc.log.Warn("skipped an oversized message", "topic", m.Topic(), "bytes", len(m.Payload()), "max", maxMessage)
		return
	}
	msg := Msg{Topic: m.Topic(), Payload: m.Payload(), Retained: m.Retained(), At: time.Now(), ack: m.Ack}
	if msg.Topic == fc.syncTop {
		msg.sync = string(msg.Payload)
	} else {
		k, name, ok := fc.topics.Parse(msg.Topic)
		if !ok {
			m.Ack()
			return
		}
		msg.Kind, msg.Unit = k, name
	}
	fc.mu.Lock()
	if fc.queued+len(msg.Payload) > maxQueued {
		fc.mu.Unlock()
		m.Ack()
		fc.log.Warn("skipped a message: fleetctl holds too much unread", "topic", msg.Topic, "max_bytes", maxQueued)
		return
	}
	fc.queued += len(msg.Payload)
	fc.queue = append(fc.queue, msg)
	fc.mu.Unlock()
	select {
	case fc.wake <- struct{}{}:
	default:
	}
}

// Next returns the next message, waiting for one until ctx ends. Asking
// for it says the one before is handled: on a persistent session that is
// when the broker is told it arrived.
func (fc *Client) Next(ctx context.Context) (Msg, error) {
	fc.mu.Lock()
	done := fc.handed
	fc.handed = nil
	fc.mu.Unlock()
	if done != nil {
		done()
	}
	for {
		fc.mu.Lock()
		if len(fc.queue) > 0 {
			m := fc.queue[0]
			fc.queued -= len(m.Payload)
			fc.queue[0] = Msg{}
			fc.queue = fc.queue[1:]
			fc.handed = m.ack
			fc.mu.Unlock()
			return m, nil
		}
		fc.mu.Unlock()
		select {
		case <-fc.wake:
		case <-ctx.Done():
			return Msg{}, ctx.Err()
		}
	}
}

// Sync hands every message to handle until the broker has delivered all
// retained messages of the subscriptions. MQTT has no "end of retained"
// marker; a message fleetctl publishes to itself after subscribing arrives
// after them, because a broker delivers one session's messages in order.
func (fc *Client) Sync(ctx context.Context, handle func(Msg)) error {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	marker := hex.EncodeToString(rnd[:])
	if err := fc.Publish(ctx, fc.syncTop, false, []byte(marker)); err != nil {
		return err
	}
	// A broker whose ACL does not let this client write and read the fleet
	// tree acknowledges the marker and drops it: MQTT 3.1.1 has no way to
	// say "denied". Thousands of retained documents arrive in well under
	// this time.
	sctx, cancel := context.WithTimeout(ctx, SyncTimeout)
	defer cancel()
	for {
		m, err := fc.Next(sctx)
		if err != nil {
			if ctx.Err() == nil {
				return fmt.Errorf("the broker %s did not hand back fleetctl's own message within %s: the client certificate must be the fleet manager's (CN fleet-admin), whom the ACL lets read and write %s/#", fc.host, SyncTimeout, fc.topics.Prefix)
			}
			return fmt.Errorf("reading the fleet's retained state from %s: %w", fc.host, err)
		}
		if m.sync == marker {
			return nil
		}
		if m.sync == "" {
			handle(m)
		}
	}
}

// Publish publishes at QoS 1 and waits for the broker's PUBACK.
func (fc *Client) Publish(ctx context.Context, topic string, retained bool, payload []byte) error {
	tok := fc.c.Publish(topic, 1, retained, payload)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("publish to %s: %w", topic, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	return nil
}

// Close disconnects cleanly.
func (fc *Client) Close() { fc.c.Disconnect(250) }
