// Package congestion makes the unit's video bitrate follow the network's
// send-side congestion estimate (Google Congestion Control over
// transport-wide feedback), so a congested clinic uplink gets a softer
// picture rather than a frozen one.
package congestion

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/cc"
	"github.com/pion/interceptor/pkg/gcc"
	"github.com/pion/webrtc/v4"
)

// Config bounds the video bitrate.
type Config struct {
	MaxVideo int // bits/s: the configured bitrate, never exceeded
	MinVideo int // bits/s: the floor; default MaxVideo/8, at least 100 kbit/s
	Audio    int // bits/s the audio takes out of the estimate
	Log      *slog.Logger
}

// Controller follows one PeerConnection's estimate.
type Controller struct {
	cfg  Config
	set  func(int) error
	mu   sync.Mutex
	last int
	hist []Change
}

// Change is one bitrate the controller set.
type Change struct {
	At       time.Time
	Estimate int // bits/s the network is estimated to carry
	Video    int // bits/s given to the video encoder
}

// Register adds the congestion controller, the transport-wide sequence
// numbers it needs and the keyframe-request throttle to a PeerConnection's
// interceptors; call it after every other interceptor is registered. set is called with
// each new video bitrate; it is wired later with Controller.Bind, because
// the encoder only exists once the track is bound.
func Register(me *webrtc.MediaEngine, ir *interceptor.Registry, cfg Config) (*Controller, error) {
	if cfg.MinVideo == 0 {
		cfg.MinVideo = max(cfg.MaxVideo/8, 100_000)
	}
	cfg.MinVideo = min(cfg.MinVideo, cfg.MaxVideo)
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Controller{cfg: cfg, last: cfg.MaxVideo}
	f, err := cc.NewInterceptor(func() (cc.BandwidthEstimator, error) {
		return gcc.NewSendSideBWE(
			gcc.SendSideBWEInitialBitrate(cfg.MaxVideo+cfg.Audio),
			gcc.SendSideBWEMaxBitrate(cfg.MaxVideo+cfg.Audio),
			gcc.SendSideBWEMinBitrate(cfg.MinVideo+cfg.Audio),
			// No pacer: it would queue the privacy slate behind room frames.
			gcc.SendSideBWEPacer(gcc.NewNoOpPacer()),
		)
	})
	if err != nil {
		return nil, fmt.Errorf("congestion controller: %w", err)
	}
	f.OnNewPeerConnection(func(_ string, e cc.BandwidthEstimator) { e.OnTargetBitrateChange(c.onEstimate) })
	ir.Add(f)
	if err := webrtc.ConfigureTWCCHeaderExtensionSender(me, ir); err != nil {
		return nil, fmt.Errorf("transport-wide sequence numbers: %w", err)
	}
	addKeyFrameThrottle(ir)
	return c, nil
}

// Bind gives the controller the encoder to steer.
func (c *Controller) Bind(set func(bps int) error) {
	c.mu.Lock()
	c.set = set
	c.mu.Unlock()
}

// Video is the video bitrate last set (the configured one until the
// network says otherwise).
func (c *Controller) Video() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// History is every change made, oldest first.
func (c *Controller) History() []Change {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Change(nil), c.hist...)
}

// onEstimate runs on the estimator's goroutine: it must not block.
func (c *Controller) onEstimate(bps int) {
	v := min(max(bps-c.cfg.Audio, c.cfg.MinVideo), c.cfg.MaxVideo)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Small steps are noise; each encoder reconfiguration costs a little.
	if c.set == nil || abs(v-c.last)*20 < c.last {
		return
	}
	if err := c.set(v); err != nil {
		c.cfg.Log.Debug("congestion: video bitrate not changed", "err", err)
		return
	}
	c.cfg.Log.Debug("congestion: video bitrate", "estimate_kbps", bps/1000, "video_kbps", v/1000)
	c.last = v
	c.hist = append(c.hist, Change{At: time.Now(), Estimate: bps, Video: v})
	if len(c.hist) > 256 {
		c.hist = c.hist[len(c.hist)-256:]
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
