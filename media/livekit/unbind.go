package livekit

import (
	"fmt"
	"time"

	"github.com/pion/mediadevices"
	"github.com/pion/webrtc/v4"
)

// boundedUnbind wraps a mediadevices track so PeerConnection.Close cannot
// hang on it. mediadevices v0.9.4's unbind deadlocks if the track's encoder
// loop ends on its own (EOF) just as unbind runs: unbind then waits on a
// channel nobody reads. Capture.Stop makes that rare; this makes it
// harmless: after a second the close goes on (the stuck goroutine is left
// behind, and the devices are still released).
type boundedUnbind struct{ mediadevices.Track }

func (t boundedUnbind) Unbind(ctx webrtc.TrackLocalContext) error {
	done := make(chan error, 1)
	go func() { done <- t.Track.Unbind(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Second):
		return fmt.Errorf("unbind %s track: no answer within 1s (mediadevices unbind race)", t.Kind())
	}
}
