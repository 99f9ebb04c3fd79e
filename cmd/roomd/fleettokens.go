package main

import "github.com/konsult/konsult/provisioning/link"

// tokenRequests carries an enrolled unit's conference token requests to
// fleetd over the fleet agent's link (nil for a unit that does not enrol:
// it keeps its own api_secret).
func (s *fleetSetup) tokenRequests() func([]byte) error {
	if s == nil || s.prov == nil {
		return nil
	}
	return func(b []byte) error {
		if a := s.agent.Load(); a != nil {
			return a.PublishTokenRequest(b)
		}
		return link.ErrNotConnected
	}
}
