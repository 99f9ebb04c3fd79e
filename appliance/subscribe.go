package appliance

// The machine's event stream: what roomctl watch, the fleet agent and the
// screen follow.

// Subscribe returns a stream of events. A subscriber that falls more than
// buf events behind loses the oldest (the stream is for watching, not for
// accounting); cancel ends it.
func (m *Machine) Subscribe(buf int) (<-chan Event, func()) {
	ch := make(chan Event, buf+1)
	m.mu.Lock()
	// Start every stream with where the unit is now, so a watcher needs no
	// separate status call and knows the stream is live.
	st := m.status
	ch <- Event{Seq: m.seq, At: m.cfg.Now(), Type: "hello", State: st.State, Gate: &st.Gate, LED: st.LED}
	m.subs[ch] = struct{}{}
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		if _, ok := m.subs[ch]; ok {
			delete(m.subs, ch)
			close(ch)
		}
		m.mu.Unlock()
	}
}

func (m *Machine) publish(e Event) {
	m.mu.Lock()
	m.seq++
	e.Seq = m.seq
	if e.At.IsZero() {
		e.At = m.cfg.Now()
	}
	for ch := range m.subs {
		for {
			select {
			case ch <- e:
			default:
				select { // full: drop the oldest and retry
				case <-ch:
				default:
				}
				continue
			}
			break
		}
	}
	m.mu.Unlock()
	attrs := []any{"seq", e.Seq, "type", e.Type}
	if e.State != "" {
		attrs = append(attrs, "state", e.State)
	}
	if e.Gate != nil {
		attrs = append(attrs, "video", e.Gate.Video, "audio", e.Gate.Audio)
	}
	for _, kv := range [][2]string{{"led", e.LED}, {"detail", e.Detail}, {"reason", e.Reason}, {"meeting", e.Meeting}} {
		if kv[1] != "" {
			attrs = append(attrs, kv[0], kv[1])
		}
	}
	if e.E2EE != nil {
		attrs = append(attrs, "e2ee", *e.E2EE)
	}
	m.log.Info("event", attrs...)
}
