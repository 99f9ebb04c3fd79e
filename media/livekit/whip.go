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
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/whip"
)

// Config names the LiveKit server, the room and the unit's credential.
// APIKey/APISecret (preferred) mint a short-lived token for every join;
// Token is a fixed access token instead. Neither is ever logged.
type Config struct {
	URL       string // e.g. https://livekit.clinic.example (or http://127.0.0.1:7880 on the unit itself)
	Room      string
	Identity  string
	APIKey    string
	APISecret string
	Token     string
	// TokenSource, if set, gives the token for each join (a fleet unit's
	// fleetd: see tokensource.go); neither key nor secret is then needed.
	TokenSource func(ctx context.Context) (string, error)
	// E2EESource, if set, gives the end-to-end key of each join; it is
	// asked right after the join's token (a fleet unit's consultation key
	// comes in the same grant). A key encrypts that call as Media.E2EE
	// would; an error refuses the join; nil and no error is Media.E2EE.
	E2EESource   func() (*e2ee.Key, error)
	AllowedHosts []string // if set, the server's host must be on it
	// AllowPrivateICE lets the server hand out TURN servers and candidates
	// at loopback, link-local and private addresses (a media server on the
	// clinic's own network). Without it only a server whose URL is itself
	// such an address may (icepolicy.ForServer).
	AllowPrivateICE bool
	TokenTTL        time.Duration // default 10 minutes
	// PlainWHIP makes URL the full endpoint of any RFC 9725 WHIP server
	// (connector "whip", e.g. MediaMTX): the WHIP connector posts to it as
	// it is, with Token as the bearer token if set, else with none.
	PlainWHIP bool
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
	// SendTransform, if set, changes every encoded frame before it is
	// packetised (end-to-end encryption); see FrameTransform.
	SendTransform FrameTransform
	// E2EE, if set, encrypts every frame the unit sends and decrypts every
	// frame it receives end to end (media/e2ee, livekit-client's format):
	// tracks are announced Encryption GCM without RED, frames that do not
	// decrypt are dropped and counted (playout.Stats.E2EEDecryptFailures).
	// Only the /rtc/v1 connector can do it; the WHIP connector refuses to
	// join (ErrE2EENeedsRTC). nil is a call encrypted hop by hop only.
	E2EE *e2ee.Key
	// PassThrough says whether a camera that codes H.264 itself is sent
	// without re-encoding (the encoder choice, "uvc-h264", says).
	PassThrough encoder.PassThroughConfig
	// Processor cleans the microphone after the gate (audioproc.Processor);
	// Room is the simulated room's echo path (audioproc.EchoPath). Both may
	// be nil. Their speaker side is RTCOptions.OnMix.
	Processor capture.AudioProcessor
	Room      capture.RoomEcho
	// SelfView, if set, gets the encoder's frames for the unit's own
	// screen, only while the gate lets video out (invariant 9).
	SelfView *capture.Tap
}

// WHIPConnector publishes the unit's camera and microphone into a LiveKit
// room through LiveKit's WHIP endpoint (/whip/v1).
type WHIPConnector struct {
	*base
	http *http.Client // shared by every join and warm-up: one kept-alive connection
	cur  *Call        // under base.mu
}

// NewWHIP checks the configuration and chooses encoders; it sends nothing.
func NewWHIP(cfg Config, m Media, g *gate.Gate, log *slog.Logger) (*WHIPConnector, error) {
	b, err := newBase(cfg, m, g, log)
	if err != nil {
		return nil, err
	}
	return &WHIPConnector{base: b, http: whip.NewHTTPClient()}, nil
}

func (c *WHIPConnector) client(token string) (*whip.Client, error) {
	pol := c.icePolicy()
	return whip.New(whip.Config{
		Endpoint:          c.endpoint(),
		Token:             token,
		AllowedHosts:      c.cfg.AllowedHosts,
		Logger:            c.log,
		TrickleCandidates: true,
		HTTPClient:        c.http,
		ICEPolicy:         &pol,
	})
}

// endpoint is where the offer goes: LiveKit's /whip/v1, or URL itself for
// a plain WHIP server.
func (c *WHIPConnector) endpoint() string {
	if c.cfg.PlainWHIP {
		return c.cfg.URL
	}
	return strings.TrimSuffix(c.cfg.URL, "/") + "/whip/v1"
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
//
// When ICE finds no path it tries once more with a fresh session, if ctx
// leaves time: a single lost burst of connectivity checks (seen through
// QEMU's user network in the hardware lab) should not turn a press of JOIN
// into a fault the staff must clear. A second ICE failure is the answer.
func (c *WHIPConnector) Join(ctx context.Context) (*Call, error) {
	if c.media.E2EE != nil {
		return nil, fmt.Errorf("join: %w", ErrE2EENeedsRTC)
	}
	call, err := c.join(ctx)
	if err == nil || !errors.Is(err, whip.ErrICEFailed) || ctx.Err() != nil {
		return call, err
	}
	c.log.Warn("join: no media path to the server, trying once more with a new session", "err", err)
	return c.join(ctx)
}

func (c *WHIPConnector) join(ctx context.Context) (*Call, error) {
	t0 := time.Now()
	tok, err := c.token()
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if key, err := c.joinKey(); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	} else if key != nil {
		return nil, fmt.Errorf("join: %w", ErrE2EENeedsRTC)
	}
	client, err := c.client(tok)
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	capt, err := c.openCapture(nil)
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	tCapture := time.Now()

	pc, rate, err := c.newPeerConnection(client, capt)
	if err != nil {
		capt.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	call := &Call{id: newMeetingID(), pc: pc, capt: capt, log: c.log, rate: rate}
	call.init(call.releaseMedia)
	call.recovery = recovery{grace: c.cfg.DisconnectGrace, over: call.over, end: call.end, restart: call.restartICE, log: c.log.Info}
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
	go endOnDeviceLoss(capt, call.over, call.end)
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
	api, rate, err := c.newAPI(capt)
	if err != nil {
		return nil, nil, err
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{ICEServers: client.ICEServers(), BundlePolicy: webrtc.BundlePolicyMaxBundle})
	if err != nil {
		return nil, nil, fmt.Errorf("new peer connection: %w", err)
	}
	for _, t := range capt.Tracks() {
		if _, err := pc.AddTransceiverFromTrack(newBoundedUnbind(t), webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
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
