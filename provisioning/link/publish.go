package link

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

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
	if l.store.queued() >= l.opts.MaxQueued {
		return "", fmt.Errorf("link: event %s: %w", ev.Type, ErrQueueFull)
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

// ErrQueueFull is an event or audit record refused because the outgoing
// queue holds Options.MaxQueued messages already.
var ErrQueueFull = errors.New("the outgoing queue is full (the broker has been unreachable for long)")

// Queued is how many events and audit records wait on disk for the
// broker.
func (l *Link) Queued() int { return l.store.queued() }

// PublishAudit queues one audit record (its canonical line) for the fleet
// on the unit's audit topic (QoS 1, kept on disk like events until the
// broker has it). ErrQueueFull: not queued; send it again later.
func (l *Link) PublishAudit(line []byte) error {
	if l.isClosed() {
		return ErrClosed
	}
	if l.store.queued() >= l.opts.MaxQueued {
		return ErrQueueFull
	}
	topic := l.topics.Audit(l.opts.DeviceID)
	tok := l.client.Publish(topic, 1, false, line)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("link: audit record on %s: %w", topic, err)
		}
	default:
	}
	return nil
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
