package unit

import (
	"sync"

	"github.com/konsult/konsult/appliance"
)

// Subscribe streams the events of whichever unit is running, across
// re-opens; each new unit's stream starts with its own hello.
func (u *Unit) Subscribe(buf int) (<-chan appliance.Event, func()) {
	s := &sub{out: make(chan appliance.Event, buf+1)}
	u.mu.RLock()
	u.subMu.Lock()
	u.subs[s] = struct{}{}
	if u.p != nil {
		s.attach(u.p.machine)
	}
	u.subMu.Unlock()
	u.mu.RUnlock()
	return s.out, func() {
		u.subMu.Lock()
		delete(u.subs, s)
		u.subMu.Unlock()
		s.close()
	}
}

// sub is one event stream, fed by the current machine's stream.
type sub struct {
	mu     sync.Mutex
	out    chan appliance.Event
	closed bool
	cancel func() // the current machine's subscription
}

func (s *sub) attach(m *appliance.Machine) {
	in, cancel := m.Subscribe(cap(s.out))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return
	}
	s.cancel = cancel
	s.mu.Unlock()
	go func() {
		for ev := range in {
			s.send(ev)
		}
	}()
}

func (s *sub) send(ev appliance.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for { // a subscriber that falls behind loses the oldest, as the machine's own
		select {
		case s.out <- ev:
			return
		default:
		}
		select {
		case <-s.out:
		default:
		}
	}
}

func (s *sub) detach() {
	s.mu.Lock()
	cancel := s.cancel
	s.cancel = nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (s *sub) close() {
	s.detach()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.out)
	}
}
