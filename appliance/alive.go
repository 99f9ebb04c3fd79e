package appliance

import (
	"context"
	"fmt"
)

// inPing travels through the same queue as buttons and actions, so an
// answer proves that the decision loop is still taking events, not merely
// that the process is scheduled.
type inPing struct{ done chan struct{} }

// Alive returns nil once the decision loop has taken a request off its
// queue. roomd feeds the service watchdog only on that answer, so a unit
// whose loop hangs (a stuck shutter worker holding it, a deadlock) is
// restarted by systemd, which releases the pins and so closes the shutter.
func (m *Machine) Alive(ctx context.Context) error {
	p := inPing{done: make(chan struct{})}
	if err := m.post(ctx, p); err != nil {
		return fmt.Errorf("the state machine is not taking events: %w", err)
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the state machine did not answer: %w", ctx.Err())
	}
}
