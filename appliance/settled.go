package appliance

// Settled is closed once the unit is out of a call: Idle or Fault, the
// states Joining, InCall and Leaving end in. It is closed already if the
// unit is there now. Whoever swaps the unit waits on it for the hang-up to
// finish instead of polling Status.
func (m *Machine) Settled() <-chan struct{} {
	ch := make(chan struct{})
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.status.State; s == Idle || s == Fault {
		close(ch)
		return ch
	}
	m.settled = append(m.settled, ch)
	return ch
}
