package livekit

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/transport/v5/stdnet"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/icepolicy"
)

// base is what every LiveKit connector shares, whatever its signalling:
// the checked configuration, the encoder choice, and the one media pipeline
// (capture behind the privacy gate, congestion control). A connector adds
// only how it talks to the server.
type base struct {
	cfg   Config
	media Media
	gate  *gate.Gate
	log   *slog.Logger
	video encoder.Choice
	audio encoder.Choice

	mu       sync.Mutex
	counters *capture.Counters
}

func newBase(cfg Config, m Media, g *gate.Gate, log *slog.Logger) (*base, error) {
	if cfg.URL == "" || cfg.Room == "" || cfg.Identity == "" {
		return nil, errors.New("conference: url, room and identity are all needed")
	}
	// Invariant 7: the URL is shown (doctor, errors); it must carry no secret.
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("conference: url is not a URL: write it like https://livekit.clinic.example")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("conference: url must not carry credentials or parameters: put the credential in api_key/api_secret or token")
	}
	if cfg.Token == "" && cfg.TokenSource == nil && (cfg.APIKey == "" || cfg.APISecret == "") && !cfg.PlainWHIP {
		return nil, errors.New("conference: set api_key and api_secret (preferred) or token")
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 10 * time.Minute
	}
	if cfg.DisconnectGrace == 0 {
		cfg.DisconnectGrace = 10 * time.Second
	}
	vc, err := encoder.Choose(encoder.Video, m.VideoCodec, m.videoSettings())
	if err != nil {
		return nil, fmt.Errorf("conference: %w", err)
	}
	ac, err := encoder.Choose(encoder.Audio, "opus", m.audioSettings())
	if err != nil {
		return nil, fmt.Errorf("conference: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	log.Info("encoders chosen", "video", vc.Explain(), "audio", ac.Explain())
	return &base{cfg: cfg, media: m, gate: g, log: log, video: vc, audio: ac}, nil
}

func (m Media) videoSettings() encoder.Settings {
	return encoder.Settings{BitRate: m.VideoBitRate, KeyFrameInterval: 2 * m.FPS, PassThrough: m.PassThrough}
}

func (m Media) audioSettings() encoder.Settings { return encoder.Settings{BitRate: m.AudioBitRate} }

// icePolicy is what the server may hand out over ICE (icepolicy.ForServer).
func (c *base) icePolicy() icepolicy.Policy {
	return icepolicy.ForServer(c.cfg.URL, c.cfg.AllowPrivateICE)
}

// Encoders reports the encoder choice for doctor.
func (c *base) Encoders() []encoder.Choice { return []encoder.Choice{c.video, c.audio} }

// Counters are what the current (or last) call handed to the encoders.
func (c *base) Counters() *capture.Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counters
}

func (c *base) token() (string, error) {
	if c.cfg.TokenSource != nil {
		return c.sourcedToken()
	}
	if c.cfg.APIKey != "" {
		return JoinToken(c.cfg.APIKey, c.cfg.APISecret, c.cfg.Identity, c.cfg.Room, c.cfg.TokenTTL)
	}
	return c.cfg.Token, nil
}

// joinKey is the join's end-to-end key: Config.E2EESource's, else
// Media.E2EE (nil: hop by hop only).
func (c *base) joinKey() (*e2ee.Key, error) {
	if c.cfg.E2EESource != nil {
		k, err := c.cfg.E2EESource()
		if err != nil {
			return nil, fmt.Errorf("end-to-end encryption: %w", err)
		}
		if k != nil {
			return k, nil
		}
	}
	return c.media.E2EE, nil
}

// openCapture opens camera and microphone behind the gate with fresh
// encoders, for one call; key (if any) encrypts every frame end to end.
func (c *base) openCapture(key *e2ee.Key) (*capture.Capture, error) {
	vb, err := c.video.Chosen.Video(c.media.videoSettings())
	if err != nil {
		return nil, fmt.Errorf("video encoder: %w", err)
	}
	ab, err := c.audio.Chosen.Audio(c.media.audioSettings())
	if err != nil {
		return nil, fmt.Errorf("audio encoder: %w", err)
	}
	// The self-view sees the frames as coded, before any transform: what
	// the gate let out, in the clear, for the unit's own screen only.
	vb = c.media.SelfView.Wrap(vb)
	send := c.media.SendTransform
	if key != nil {
		send = e2eeSend(key, c.video.Chosen.Codec, send)
	}
	vb = transformVideo(vb, send)
	ab = transformAudio(ab, send)
	capt, err := capture.Open(capture.Config{Gate: c.gate, Width: c.media.Width, Height: c.media.Height, FPS: c.media.FPS, Video: vb, Audio: ab, Stamp: c.media.Stamp,
		Camera: c.media.Camera, Microphone: c.media.Microphone, Processor: c.media.Processor, Room: c.media.Room})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.counters = capt.Counters
	c.mu.Unlock()
	return capt, nil
}

// newAPI builds the WebRTC API for one call: the capture's codecs, the
// default interceptors, congestion control bound to the video encoder, and
// the ICE settings both connectors need.
func (c *base) newAPI(capt *capture.Capture, codecs ...func(*webrtc.MediaEngine) error) (*webrtc.API, *congestion.Controller, error) {
	me := &webrtc.MediaEngine{}
	capt.Selector().Populate(me)
	for _, reg := range codecs {
		if err := reg(me); err != nil {
			return nil, nil, fmt.Errorf("webrtc codecs: %w", err)
		}
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		return nil, nil, fmt.Errorf("webrtc interceptors: %w", err)
	}
	rate, err := congestion.Register(me, ir, congestion.Config{MaxVideo: c.media.VideoBitRate, Audio: c.media.AudioBitRate, Log: c.log})
	if err != nil {
		return nil, nil, err
	}
	rate.Bind(capt.SetVideoBitRate)

	se := webrtc.SettingEngine{}
	// Notice a dead path within 2 s (consent checks every 500 ms) so the
	// call's recovery starts early; "failed" after 5 s only means the
	// recovery restarts ICE, not that the call ends.
	se.SetICETimeouts(2*time.Second, 5*time.Second, 500*time.Millisecond)
	// STUN and TURN servers named by a host name are checked once resolved
	// (icepolicy.GuardNet): a server's "turn.example" may point at the
	// clinic's own network.
	n := c.cfg.Net
	if n == nil {
		std, err := stdnet.NewNet()
		if err != nil {
			return nil, nil, fmt.Errorf("network: %w", err)
		}
		n = std
	}
	se.SetNet(icepolicy.GuardNet(n, c.icePolicy(), nil))
	if isLoopbackURL(c.cfg.URL) {
		// A server on this machine (make run, tests): offer loopback
		// candidates only, and no mDNS names it could not resolve.
		se.SetIncludeLoopbackCandidate(true)
		se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
		se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)), rate, nil
}

// endOnDeviceLoss ends the call with the reason when the camera or the
// microphone is lost mid-call; it returns when the call is over.
func endOnDeviceLoss(capt *capture.Capture, over <-chan struct{}, end func(error)) {
	select {
	case err := <-capt.Lost():
		end(err)
	case <-over:
	}
}
