package fleetd

import (
	"context"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

// BenchmarkIssue is fleetd's work per token request: verify the unit's
// signature, check the ledger, look the consultation up, mint and seal.
func BenchmarkIssue(b *testing.B) {
	r := newRigB(b)
	u := r.unitKeyOnly("room-1")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		req, _ := fleet.SignTokenRequest(u, fleet.TokenRequest{Device: "room-1", Consultation: fleet.StandingMeeting, Nonce: fleet.NewNonce(), At: time.Now()})
		if _, err := r.svc.Issue(ctx, "room-1", req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTokenRoundTrip is a unit's request through the real broker to
// fleetd and back, answered and opened, one at a time.
func BenchmarkTokenRoundTrip(b *testing.B) {
	r := newRigB(b)
	u := r.unit("room-1")
	for b.Loop() {
		r.grant(u, fleet.StandingMeeting)
	}
}
