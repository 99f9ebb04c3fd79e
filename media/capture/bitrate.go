package capture

import (
	"errors"
	"fmt"

	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec"
)

// ErrNoRateControl: the video encoder is not running yet, or cannot change
// its bitrate while running.
var ErrNoRateControl = errors.New("video encoder has no live bitrate control")

// SetVideoBitRate changes the running video encoder's target bitrate
// (bits/s), e.g. to follow the congestion estimate.
func (c *Capture) SetVideoBitRate(bps int) error {
	for _, t := range c.stream.GetVideoTracks() {
		vt, ok := t.(*mediadevices.VideoTrack)
		if !ok {
			continue
		}
		brc, ok := vt.EncoderController().(codec.BitRateController)
		if !ok {
			return ErrNoRateControl
		}
		if err := brc.SetBitRate(bps); err != nil {
			return fmt.Errorf("set video bitrate: %w", err)
		}
		return nil
	}
	return ErrNoRateControl
}
