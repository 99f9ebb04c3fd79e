package link

import (
	"errors"
	"fmt"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// The unit's side of fleetd's topics: it asks for conference tokens on its
// token-request topic and hears the sealed answers on its token topic, and
// its signed consultation schedule arrives retained on its schedule topic.
// The link only carries bytes; provisioning/fleet signs, seals and
// verifies them.

// fleetdFilters adds the fleetd topics the unit listens to, if it does.
func (l *Link) fleetdFilters(f map[string]byte) {
	if l.opts.OnToken != nil {
		f[l.topics.Token(l.opts.DeviceID)] = 1
	}
	if l.opts.OnSchedule != nil {
		f[l.topics.Schedule(l.opts.DeviceID)] = 1
	}
}

// fleetdMessage hands a message on one of the unit's own fleetd topics to
// its hook and reports whether it was one.
func (l *Link) fleetdMessage(k Kind, m mqtt.Message) bool {
	switch {
	case k == Token && l.opts.OnToken != nil:
		l.opts.OnToken(m.Payload())
		return true
	case k == Schedule && l.opts.OnSchedule != nil:
		l.opts.OnSchedule(m.Payload(), m.Retained())
		return true
	}
	return false
}

// ErrNotConnected is a token request made while the broker is unreachable:
// it would go out late, after the unit stopped waiting.
var ErrNotConnected = errors.New("link: not connected to the fleet broker")

// PublishTokenRequest sends a signed token request to fleetd (QoS 1, not
// retained, not kept for later: a request is only worth its answer now).
func (l *Link) PublishTokenRequest(b []byte) error {
	if l.isClosed() {
		return ErrClosed
	}
	if !l.Connected() {
		return ErrNotConnected
	}
	topic := l.topics.TokenRequest(l.opts.DeviceID)
	tok := l.client.Publish(topic, 1, false, b)
	if tok.WaitTimeout(l.opts.ConnectTimeout) && tok.Error() != nil {
		return fmt.Errorf("link: token request: %w", tok.Error())
	}
	return nil
}
