package agent

import "github.com/konsult/konsult/provisioning/link"

// PublishTokenRequest sends a signed conference token request to fleetd
// over the unit's current link. Safe to call from any goroutine.
func (a *Agent) PublishTokenRequest(b []byte) error {
	a.mu.Lock()
	l := a.link
	a.mu.Unlock()
	if l == nil {
		return link.ErrNotConnected
	}
	return l.PublishTokenRequest(b)
}
