package link

import (
	"strings"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// store is paho's file store with two kinds of message kept off the disk:
//
//   - inbound PUBLISH packets: paho parks incoming QoS 1 messages in its store
//     until they are acknowledged, and configs carry secrets (conference
//     tokens, Wi-Fi passwords) that have no business in a queue directory. The
//     broker redelivers an unacknowledged QoS 1 message anyway.
//   - outbound status and reported state: they are "the latest value", not
//     history. Replayed from the store after a reconnect or restart, an old
//     one could overtake the fresh one the link publishes on connect and
//     leave a stale retained value on the broker. The link republishes the
//     latest value on every connect instead.
//
// Events and anything else outbound go to disk as paho intends, so they
// survive a broker outage and a restart of roomd.
type store struct {
	*mqtt.FileStore
	volatile map[string]bool // outbound topics not to persist

	mu  sync.Mutex
	out map[string]bool // outbound keys on disk: the queue's length
}

func (s *store) Open() {
	s.FileStore.Open()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out = map[string]bool{}
	for _, k := range s.FileStore.All() {
		if strings.HasPrefix(k, "o.") {
			s.out[k] = true
		}
	}
}

func (s *store) Put(key string, m packets.ControlPacket) {
	if p, ok := m.(*packets.PublishPacket); ok {
		// paho's keys are "i.<id>" for inbound and "o.<id>" for outbound.
		if strings.HasPrefix(key, "i.") || s.volatile[p.TopicName] {
			return
		}
	}
	s.FileStore.Put(key, m)
	if strings.HasPrefix(key, "o.") {
		s.mu.Lock()
		if s.out == nil {
			s.out = map[string]bool{}
		}
		s.out[key] = true
		s.mu.Unlock()
	}
}

func (s *store) Del(key string) {
	s.FileStore.Del(key)
	s.mu.Lock()
	delete(s.out, key)
	s.mu.Unlock()
}

func (s *store) Reset() {
	s.FileStore.Reset()
	s.mu.Lock()
	s.out = map[string]bool{}
	s.mu.Unlock()
}

// queued is how many outbound messages wait on disk for the broker's
// acknowledgement.
func (s *store) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.out)
}
