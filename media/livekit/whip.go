package livekit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/transport/v5"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/whip"
)

// Config names the LiveKit server, the room and the unit's credential.
// APIKey/APISecret (preferred) mint a short-lived token for every join;
// Token is a fixed access token instead. Neither is ever logged.
type Config struct {
	URL          string // e.g. https://livekit.clinic.example (or http://127.0.0.1:7880 on the unit itself)
	Room         string
	Identity     string
	APIKey       string
	APISecret    string
	Token        string
	AllowedHosts []string      // if set, the server's host must be on it
	TokenTTL     time.Duration // default 10 minutes
	// DisconnectGrace is how long the unit tries to get a lost connection
	// back (ICE restarts) before the call counts as ended. Default 10 s.
	DisconnectGrace time.Duration
	// Net is the network the media goes over; nil is the system's. Tests
	// put a network that can be cut here.
	Net transport.Net
}

// Media says what to capture and how to encode it.
type Media struct {
	Width, Height, FPS int
	VideoCodec         string // "auto", "H264", "VP8"
	VideoBitRate       int    // bits/s
	AudioBitRate       int
	Stamp              bool // draw the capture time into the picture (capture.Config.Stamp)
	// Camera and Microphone select the devices (capture.Config): "test"
	// for the simulated ones, "" for the first real one.
	Camera, Microphone string
}

// WHIPConnector publishes the unit's camera and microphone into a LiveKit
// room through LiveKit's WHIP endpoint (/whip/v1).
type WHIPConnector struct {
	cfg   Config
	media Media
	gate  *gate.Gate
	log   *slog.Logger
	video encoder.Choice
	audio encoder.Choice

	http *http.Client // shared by every join and warm-up: one kept-alive connection

	mu       sync.Mutex
	counters *capture.Counters
	cur      *Call
}

// NewWHIP checks the configuration and chooses encoders; it sends nothing.
func NewWHIP(cfg Config, m Media, g *gate.Gate, log *slog.Logger) (*WHIPConnector, error) {
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
	if cfg.Token == "" && (cfg.APIKey == "" || cfg.APISecret == "") {
		return nil, errors.New("conference: set api_key and api_secret (preferred) or token")
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 10 * time.Minute
	}
	if cfg.DisconnectGrace == 0 {
		cfg.DisconnectGrace = 10 * time.Second
	}
	vc, err := encoder.Choose(encoder.Video, m.VideoCodec)
	if err != nil {
		return nil, fmt.Errorf("conference: %w", err)
	}
	ac, err := encoder.Choose(encoder.Audio, "opus")
	if err != nil {
		return nil, fmt.Errorf("conference: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	log.Info("encoders chosen", "video", vc.Explain(), "audio", ac.Explain())
	return &WHIPConnector{cfg: cfg, media: m, gate: g, log: log, video: vc, audio: ac, http: whip.NewHTTPClient()}, nil
}

// Encoders reports the encoder choice for doctor.
func (c *WHIPConnector) Encoders() []encoder.Choice { return []encoder.Choice{c.video, c.audio} }

// Counters are what the current (or last) call handed to the encoders.
func (c *WHIPConnector) Counters() *capture.Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counters
}

func (c *WHIPConnector) token() (string, error) {
	if c.cfg.APIKey != "" {
		return JoinToken(c.cfg.APIKey, c.cfg.APISecret, c.cfg.Identity, c.cfg.Room, c.cfg.TokenTTL)
	}
	return c.cfg.Token, nil
}

func (c *WHIPConnector) client(token string) (*whip.Client, error) {
	return whip.New(whip.Config{
		Endpoint:          strings.TrimSuffix(c.cfg.URL, "/") + "/whip/v1",
		Token:             token,
		AllowedHosts:      c.cfg.AllowedHosts,
		Logger:            c.log,
		TrickleCandidates: true,
		HTTPClient:        c.http,
	})
}

// Warm does before the press what reveals nothing to anyone: it resolves
// the server's name and opens the TLS connection the join will use (an
// OPTIONS request, no session, no media), so the press costs only the
// offer/answer and ICE/DTLS. A refusal it meets (certificate, host not
// allowed) is returned, so doctor and the log can say so before anyone
// presses JOIN.
func (c *WHIPConnector) Warm(ctx context.Context) error {
	tok, err := c.token()
	if err != nil {
		return fmt.Errorf("warm up: %w", err)
	}
	client, err := c.client(tok) // checks the URL against the transport policy and allow-list
	if err != nil {
		return fmt.Errorf("warm up: %w", err)
	}
	if _, err := client.Preflight(ctx); err != nil {
		return fmt.Errorf("warm up: %w", err)
	}
	return nil
}

// KeepWarm runs Warm now and then every interval until ctx ends, so the
// connection is open whenever JOIN is pressed (servers close idle
// connections after a minute or two). Failures are logged once per change.
func (c *WHIPConnector) KeepWarm(ctx context.Context, interval time.Duration) {
	var last string
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Warm(wctx)
		cancel()
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != last {
			if err != nil {
				c.log.Warn("conference server not reachable before any call", "err", err)
			} else if last != "" {
				c.log.Info("conference server reachable again")
			}
			last = msg
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// Join publishes into the room and returns once media flows (ICE and DTLS
// connected) or fails with a reason a person can act on.
func (c *WHIPConnector) Join(ctx context.Context) (*Call, error) {
	t0 := time.Now()
	tok, err := c.token()
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	client, err := c.client(tok)
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	vb, err := c.video.Chosen.Video(encoder.Settings{BitRate: c.media.VideoBitRate, KeyFrameInterval: 2 * c.media.FPS})
	if err != nil {
		return nil, fmt.Errorf("join: video encoder: %w", err)
	}
	ab, err := c.audio.Chosen.Audio(encoder.Settings{BitRate: c.media.AudioBitRate})
	if err != nil {
		return nil, fmt.Errorf("join: audio encoder: %w", err)
	}
	capt, err := capture.Open(capture.Config{Gate: c.gate, Width: c.media.Width, Height: c.media.Height, FPS: c.media.FPS, Video: vb, Audio: ab, Stamp: c.media.Stamp,
		Camera: c.media.Camera, Microphone: c.media.Microphone})
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	c.mu.Lock()
	c.counters = capt.Counters
	c.mu.Unlock()
	tCapture := time.Now()

	pc, rate, err := c.newPeerConnection(client, capt)
	if err != nil {
		capt.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	call := &Call{id: newMeetingID(), pc: pc, capt: capt, ended: make(chan error, 1), over: make(chan struct{}), grace: c.cfg.DisconnectGrace, log: c.log, rate: rate}
	pc.OnConnectionStateChange(call.onState)
	tPC := time.Now()
	sess, err := client.Publish(ctx, pc)
	if err != nil {
		call.close()
		return nil, fmt.Errorf("join room: %w", err)
	}
	call.sess = sess
	tPublish := time.Now()
	if err := sess.WaitConnected(ctx); err != nil {
		call.close()
		return nil, fmt.Errorf("join room: %w", err)
	}
	call.connected.Store(true)
	c.log.Debug("join timings", "capture", tCapture.Sub(t0), "peer_connection", tPC.Sub(tCapture),
		"offer_and_post", tPublish.Sub(tPC), "ice_dtls", time.Since(tPublish), "total", time.Since(t0))
	go func() { // a camera or microphone lost mid-call ends the call with the reason
		select {
		case err := <-capt.Lost():
			call.end(err)
		case <-call.over:
		}
	}()
	c.mu.Lock()
	c.cur = call
	c.mu.Unlock()
	return call, nil
}

// LoseDevice injects a device loss into the current call (simulated unit).
func (c *WHIPConnector) LoseDevice(k gate.Kind, err error) error {
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if cur == nil {
		return errors.New("no call: a device can only be lost during a call")
	}
	cur.capt.LoseDevice(k, err)
	return nil
}

func (c *WHIPConnector) newPeerConnection(client *whip.Client, capt *capture.Capture) (*webrtc.PeerConnection, *congestion.Controller, error) {
	me := &webrtc.MediaEngine{}
	capt.Selector().Populate(me)
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
	if c.cfg.Net != nil {
		se.SetNet(c.cfg.Net)
	}
	if isLoopbackURL(c.cfg.URL) {
		// A server on this machine (make run, tests): offer loopback
		// candidates only, and no mDNS names it could not resolve.
		se.SetIncludeLoopbackCandidate(true)
		se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
		se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	}
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{ICEServers: client.ICEServers(), BundlePolicy: webrtc.BundlePolicyMaxBundle})
	if err != nil {
		return nil, nil, fmt.Errorf("new peer connection: %w", err)
	}
	for _, t := range capt.Tracks() {
		if _, err := pc.AddTransceiverFromTrack(boundedUnbind{t}, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			pc.Close()
			return nil, nil, fmt.Errorf("add %s track: %w", t.Kind(), err)
		}
	}
	return pc, rate, nil
}

func isLoopbackURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func newMeetingID() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "m-" + hex.EncodeToString(b[:])
}
