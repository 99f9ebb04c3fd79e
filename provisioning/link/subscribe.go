package link

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

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
	l.fleetdFilters(f)
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

// onMessage hands a message to Messages without blocking: paho acknowledges
// a QoS 1 message when the handler returns.
func (l *Link) onMessage(_ mqtt.Client, m mqtt.Message) {
	topic := m.Topic()
	k, name, ok := l.topics.Parse(topic)
	mine := ok && ((k == DeviceConfig || k == DeviceCmd) && name == l.opts.DeviceID ||
		(k == GroupConfig || k == GroupCmd) && slices.Contains(l.opts.Groups, name))
	if ok && name == l.opts.DeviceID && l.fleetdMessage(k, m) {
		return
	}
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
