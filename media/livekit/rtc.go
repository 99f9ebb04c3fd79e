package livekit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/icepolicy"
	"github.com/konsult/konsult/media/playout"
	"github.com/konsult/konsult/media/whip"
)

// Encryption is how a published track is announced to the room
// (AddTrackRequest.encryption). Browsers decrypt a participant's media only
// when every track it publishes says GCM.
type Encryption = lkp.Encryption_Type

// EncryptionNone and EncryptionGCM are the announcements the unit can make.
const (
	EncryptionNone = lkp.Encryption_NONE
	EncryptionGCM  = lkp.Encryption_GCM
)

// RTCOptions are what the LiveKit-signalling connector adds to Config and
// Media: the far end's side of the call and the network.
type RTCOptions struct {
	// Speaker is the playout device (playout.Config.Device): "" for ALSA's
	// default, "null" where there is no sound card.
	Speaker string
	// OnVideoFrame receives every remote video frame for the display.
	OnVideoFrame func(playout.VideoFrame)
	// OnMix receives the exact mix handed to the speaker
	// (playout.Config.OnMix): the echo canceller's reference and the
	// simulated room's speaker (audioproc.Tap).
	OnMix func([]float32)
	// Encryption is announced for every published track; the frames must
	// then be encrypted by Media.SendTransform.
	Encryption Encryption
	// RecvTransform changes remote frames before they are played or shown
	// (end-to-end decryption).
	RecvTransform FrameTransform
	// ICEServers (STUN, TURN over UDP or TLS on 443) are used beside those
	// the server hands out in its join response.
	ICEServers []webrtc.ICEServer
	// ForceRelay sends media only through a TURN relay (a clinic network
	// that allows nothing else, and tests of it).
	ForceRelay bool
}

// RTCConnector joins a LiveKit room over LiveKit's own signalling (the
// WebSocket at /rtc/v1): one peer connection that publishes the unit's
// camera and microphone and receives every other participant's tracks as
// they come and go. Unlike WHIP it keeps a channel to the server for the
// whole call, so it can subscribe to people who join after the unit, and
// resume after a network break as the same participant.
type RTCConnector struct {
	*base
	opt    RTCOptions
	dialer *websocket.Dialer

	cur *RTCCall // under base.mu
}

// NewRTC checks the configuration and chooses encoders; it sends nothing.
func NewRTC(cfg Config, m Media, opt RTCOptions, g *gate.Gate, log *slog.Logger) (*RTCConnector, error) {
	b, err := newBase(cfg, m, g, log)
	if err != nil {
		return nil, err
	}
	// The transport policy is checked at each join, as on the WHIP path: a
	// refused server is a fault the room sees on JOIN, not a unit that
	// does not start.
	d := *websocket.DefaultDialer
	d.HandshakeTimeout = 10 * time.Second
	return &RTCConnector{base: b, opt: opt, dialer: &d}, nil
}

// Current is the call in progress, or nil.
func (c *RTCConnector) Current() *RTCCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// LoseDevice injects a device loss into the current call (simulated unit).
func (c *RTCConnector) LoseDevice(k gate.Kind, err error) error {
	cur := c.Current()
	if cur == nil {
		return errors.New("no call: a device can only be lost during a call")
	}
	cur.capt.LoseDevice(k, err)
	return nil
}

// Receive sections offered up front, as livekit-client does: the first
// people to join need no renegotiation before their media flows.
const initialRecvAudio, initialRecvVideo = 3, 3

// Join enters the room and returns once media flows (ICE and DTLS
// connected), or fails with a reason a person can act on.
func (c *RTCConnector) Join(ctx context.Context) (*RTCCall, error) {
	t0 := time.Now()
	tok, err := c.token()
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if err := whip.CheckURL(c.cfg.URL, c.cfg.AllowedHosts); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	key, err := c.joinKey()
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	capt, err := c.openCapture(key)
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	api, rate, err := c.newAPI(capt, registerReceiveCodecs)
	if err != nil {
		capt.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	player, err := playout.Open(playout.Config{Device: c.opt.Speaker, Transform: c.opt.RecvTransform, E2EE: key, OnVideoFrame: c.opt.OnVideoFrame, OnMix: c.opt.OnMix, Log: c.log})
	if err != nil {
		capt.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	call := &RTCCall{
		conn: c, e2ee: key, id: newMeetingID(), salt: randBytes(16), api: api, capt: capt, rate: rate, player: player, log: c.log,
		token: tok, others: map[string]string{}, presence: make(chan media.Presence, 64), grace: c.cfg.DisconnectGrace,
	}
	call.init(call.releaseMedia)
	call.recovery = recovery{grace: c.cfg.DisconnectGrace, over: call.over, end: call.end, restart: call.restartOverSignal, log: c.log.Info}
	call.joining.Store(true) // from here, the call ending wakes Join with the reason
	sess, err := call.connect(ctx, tok, false)
	if err != nil {
		call.joining.Store(false)
		call.close()
		return nil, fmt.Errorf("join room: %w", err)
	}
	call.upAt = time.Now()
	go call.watchSignal(sess.sig)
	go call.pinger()

	select {
	case <-sess.up:
	case <-ctx.Done():
		call.joining.Store(false)
		call.finish(ctx.Err(), false)
		call.leaveQuietly()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("join room: no media connection to the server (ICE/DTLS): check that UDP to the server or a TURN server is allowed: %w", whip.ErrICEFailed)
		}
		return nil, ctx.Err()
	case <-call.over:
		return nil, fmt.Errorf("join room: %w", call.reason())
	}
	if !call.joining.CompareAndSwap(true, false) {
		return nil, fmt.Errorf("join room: %w", call.reason())
	}
	call.connected.Store(true)
	c.log.Debug("join timings", "prepare", sess.dialAt.Sub(t0), "join_response", sess.joinedAt.Sub(sess.dialAt), "ice_dtls", time.Since(sess.joinedAt), "total", time.Since(t0))
	go endOnDeviceLoss(capt, call.over, call.end)
	c.mu.Lock()
	c.cur = call
	c.mu.Unlock()
	return call, nil
}

// session is one participant session on the server: the signalling
// WebSocket of a join, and its peer connection's media coming up.
type session struct {
	sig              *signal
	up               <-chan struct{} // closed when the peer connection is connected (ICE and DTLS)
	dialAt, joinedAt time.Time
}

// connect joins the room as a new participant: a fresh peer connection
// that publishes the call's camera and microphone tracks (the one capture
// pipeline behind the gate, whichever peer connection reads it) and
// receives everyone else, and a join over /rtc/v1. It returns once the
// server has taken the join; session.up says when media flows. The first
// join of a call and a full reconnect both come through here.
//
// On a full reconnect (again) a track whose gate is shut is published only
// once the gate opens (publishWhenOpen): a new peer connection's encoder
// starts on a frame from the capture, and a shut gate gives none after its
// slates, so the join would wait for the gate.
func (c *RTCCall) connect(ctx context.Context, tok string, again bool) (*session, error) {
	pc, err := c.api.NewPeerConnection(c.conn.pcConfig(nil))
	if err != nil {
		return nil, fmt.Errorf("new peer connection: %w", err)
	}
	fail := func(err error) (*session, error) {
		_ = pc.Close()
		return nil, err
	}
	var adds []*lkp.AddTrackRequest
	var later []mediadevices.Track
	for _, t := range c.capt.Tracks() {
		if again && !c.gateOpen(t.Kind()) {
			later = append(later, t)
			continue
		}
		req, err := c.addTrack(pc, t)
		if err != nil {
			return fail(err)
		}
		adds = append(adds, req)
	}
	if err := addReceivers(pc, initialRecvAudio, initialRecvVideo); err != nil {
		return fail(err)
	}
	// Every callback names its own peer connection: one replaced by a full
	// reconnect says nothing about the call any more.
	up := make(chan struct{})
	var upOnce sync.Once
	pc.OnTrack(func(t *webrtc.TrackRemote, _ *webrtc.RTPReceiver) { c.onTrack(pc, t) })
	pc.OnICECandidate(func(cand *webrtc.ICECandidate) { c.onCandidate(pc, cand) })
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			upOnce.Do(func() { close(up) })
		}
		c.onState(pc, s)
	})

	// The first offer rides in the join request. It is set as the local
	// description only once the join response has brought the server's
	// TURN servers, so the first gathering already uses them.
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		return fail(fmt.Errorf("create offer: %w", err))
	}
	jr := &lkp.JoinRequest{
		ClientInfo:         clientInfo(),
		ConnectionSettings: &lkp.ConnectionSettings{AutoSubscribe: true},
		AddTrackRequests:   adds,
		PublisherOffer:     &lkp.SessionDescription{Type: "offer", Sdp: offer.SDP, Id: 1, MidToTrackId: midToTrack(pc)},
	}
	s := &session{up: up, dialAt: time.Now()}
	sig, first, err := dialSignal(ctx, c.conn.cfg.URL, tok, jr, c.conn.dialer)
	if err != nil {
		return fail(err)
	}
	join := first.GetJoin()
	if join == nil {
		sig.close()
		if l := first.GetLeave(); l != nil {
			return fail(fmt.Errorf("%w: %s", ErrRejected, l.GetReason()))
		}
		return fail(fmt.Errorf("%w: unexpected first message %T", ErrRejected, first.GetMessage()))
	}
	s.sig, s.joinedAt = sig, time.Now()
	if err := pc.SetConfiguration(c.conn.pcConfig(join.GetIceServers())); err != nil {
		c.log.Warn("join: the server's ICE servers were not taken", "err", err)
	}
	if join.GetClientConfiguration().GetForceRelay() == lkp.ClientConfigSetting_ENABLED {
		c.log.Info("join: the server asks for relayed media only")
	}
	c.mu.Lock()
	c.pc, c.sig, c.sid = pc, sig, join.GetParticipant().GetSid()
	gone := make(chan struct{})
	c.pcGone = gone
	c.remoteCands = &icepolicy.Candidates{Policy: c.conn.icePolicy()}
	c.offerID = 1
	c.negotiating = true // until the answer to the offer in the join request
	c.again, c.restartICE = false, false
	c.mu.Unlock()
	c.setPing(join.GetPingInterval(), join.GetPingTimeout())
	c.syncOthers(join.GetOtherParticipants())
	if err := pc.SetLocalDescription(offer); err != nil {
		sig.close()
		return fail(fmt.Errorf("set local description: %w", err))
	}
	go sig.loop(func(r *lkp.SignalResponse) { c.handle(sig, r) })
	if len(later) > 0 {
		go c.publishWhenOpen(pc, gone, later)
	}
	return s, nil
}

// addTrack adds a camera or microphone track to pc and says how to
// announce it to the room.
func (c *RTCCall) addTrack(pc *webrtc.PeerConnection, t mediadevices.Track) (*lkp.AddTrackRequest, error) {
	if _, err := pc.AddTransceiverFromTrack(newBoundedUnbind(t), webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		return nil, fmt.Errorf("add %s track: %w", t.Kind(), err)
	}
	req := &lkp.AddTrackRequest{Cid: t.ID(), Encryption: c.conn.opt.Encryption}
	if c.e2ee != nil {
		// Browsers decrypt a participant only when every track says GCM;
		// RED and backup codecs would carry frames the transform never saw.
		req.Encryption, req.DisableRed, req.SimulcastCodecs = EncryptionGCM, true, nil
	}
	if t.Kind() == webrtc.RTPCodecTypeVideo {
		req.Type, req.Source, req.Name = lkp.TrackType_VIDEO, lkp.TrackSource_CAMERA, "camera"
		req.Width, req.Height = uint32(c.conn.media.Width), uint32(c.conn.media.Height)
	} else {
		req.Type, req.Source, req.Name = lkp.TrackType_AUDIO, lkp.TrackSource_MICROPHONE, "microphone"
	}
	return req, nil
}

func (c *RTCCall) gateOpen(kind webrtc.RTPCodecType) bool {
	st := c.conn.gate.State()
	if kind == webrtc.RTPCodecTypeVideo {
		return st.Video
	}
	return st.Audio
}

// publishWhenOpen publishes tracks held back by a full reconnect with the
// gate shut, each once its gate opens: announced to the room, then offered.
// Until then the room has the unit without that track: nothing at all
// leaves for it.
//
// It ends when pc is replaced (gone), not only when the gate next opens: a
// server that makes the unit rejoin again and again while the gate is shut
// would otherwise leave one of these, holding its closed peer connection,
// per rejoin.
func (c *RTCCall) publishWhenOpen(pc *webrtc.PeerConnection, gone <-chan struct{}, ts []mediadevices.Track) {
	for {
		changed := c.conn.gate.Changed()
		var still []mediadevices.Track
		for _, t := range ts {
			if !c.gateOpen(t.Kind()) {
				still = append(still, t)
				continue
			}
			c.mu.Lock()
			sig, current := c.sig, c.pc == pc
			c.mu.Unlock()
			if !current {
				return // replaced by another full reconnect, which publishes its own
			}
			req, err := c.addTrack(pc, t)
			if err == nil && sig != nil {
				err = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_AddTrack{AddTrack: req}})
			}
			if err != nil {
				c.log.Warn("publish after the gate opened", "kind", t.Kind().String(), "err", err)
				continue
			}
			c.negotiate(false)
		}
		if ts = still; len(ts) == 0 {
			return
		}
		select {
		case <-changed:
		case <-gone:
			return
		case <-c.over:
			return
		}
	}
}

// pcConfig is the configuration of a peer connection: the operator's own
// ICE servers, and those of the server's join or reconnect response as far
// as the ICE policy lets them (a count cap, no internal hosts).
func (c *RTCConnector) pcConfig(fromServer []*lkp.ICEServer) webrtc.Configuration {
	var offered []webrtc.ICEServer
	for i, s := range fromServer {
		if i >= icepolicy.MaxServers { // the rest would be dropped anyway: do not copy them
			break
		}
		offered = append(offered, webrtc.ICEServer{URLs: s.GetUrls(), Username: s.GetUsername(), Credential: s.GetCredential()})
	}
	kept, dropped := c.icePolicy().Servers(offered)
	if dropped += max(0, len(fromServer)-icepolicy.MaxServers); dropped > 0 {
		c.log.Warn("ICE servers of the conference server dropped by the ICE policy", "kept", len(kept), "dropped", dropped)
	}
	servers := append(append([]webrtc.ICEServer(nil), c.opt.ICEServers...), kept...)
	cfg := webrtc.Configuration{ICEServers: servers, BundlePolicy: webrtc.BundlePolicyMaxBundle}
	if c.opt.ForceRelay {
		cfg.ICETransportPolicy = webrtc.ICETransportPolicyRelay
	}
	return cfg
}

// registerReceiveCodecs adds what browsers send (VP8, H.264; Opus is always
// there) to the codecs the unit encodes, so any far end can be received.
// Same payload types as mediadevices: a codec already there is kept as is.
func registerReceiveCodecs(me *webrtc.MediaEngine) error {
	for _, c := range []*codec.RTPCodec{codec.NewRTPVP8Codec(90000), codec.NewRTPH264Codec(90000)} {
		if err := me.RegisterCodec(c.RTPCodecParameters, webrtc.RTPCodecTypeVideo); err != nil {
			return err
		}
	}
	return nil
}

func clientInfo() *lkp.ClientInfo {
	return &lkp.ClientInfo{Sdk: lkp.ClientInfo_GO, Version: "konsult-roomd", Protocol: 16, Os: runtime.GOOS}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// RTCCall is one meeting joined over LiveKit's signalling.
type RTCCall struct {
	conn   *RTCConnector
	e2ee   *e2ee.Key // this call's end-to-end key; nil: hop by hop only
	id     string
	salt   []byte // per call: the same person has another pseudonym next call
	api    *webrtc.API
	capt   *capture.Capture
	rate   *congestion.Controller
	player *playout.Player
	log    *slog.Logger
	grace  time.Duration

	recovery recovery

	mu           sync.Mutex
	pc           *webrtc.PeerConnection // nil while a full reconnect replaces it
	sig          *signal
	rejoin       bool   // the server asked for a full reconnect: rejoin rather than resume
	token        string // refreshed by the server; never logged
	sid          string // our participant SID, to resume as the same participant
	others       map[string]string
	offerID      uint32
	negotiating  bool // an offer is out, its answer not yet in
	again        bool // negotiate once more when the answer is in
	restartICE   bool // the next offer restarts ICE
	pendingCands []webrtc.ICECandidateInit
	untracked    int                   // far-end participants over MaxOthers
	farLog       lineBudget            // far-end join/leave lines
	pcGone       chan struct{}         // closed when pc is replaced: its helpers stop
	upAt         time.Time             // when the signalling last came up
	flaps        int                   // leave/rejoin cycles in a row shorter than stableAfter
	remoteCands  *icepolicy.Candidates // the server's candidates for pc, per ICE generation
	pingEvery    time.Duration
	pingTimeout  time.Duration
	lastPong     time.Time

	presence chan media.Presence
	lifecycle
	resumes  atomic.Int32
	rejoins  atomic.Int32
	restarts atomic.Int32
}

// ID is a random meeting id for events; it says nothing about the room.
func (c *RTCCall) ID() string { return c.id }

// Presence reports far-end participants joining and leaving, by pseudonym.
// Read it until Ended is closed.
func (c *RTCCall) Presence() <-chan media.Presence { return c.presence }

// Playout is the far end's sound and picture on the unit.
func (c *RTCCall) Playout() *playout.Player { return c.player }

// Congestion is the controller that sets the video bitrate.
func (c *RTCCall) Congestion() *congestion.Controller { return c.rate }

// Resumes counts signalling reconnections as the same participant;
// Rejoins counts full reconnects (a new participant, a new peer
// connection, the same call); Restarts counts ICE restarts.
func (c *RTCCall) Resumes() int  { return int(c.resumes.Load()) }
func (c *RTCCall) Rejoins() int  { return int(c.rejoins.Load()) }
func (c *RTCCall) Restarts() int { return int(c.restarts.Load()) }

// peer is the peer connection in use, or nil during a full reconnect.
func (c *RTCCall) peer() *webrtc.PeerConnection {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pc
}

// Path says how media goes now, from the unit's side of the selected ICE
// pair: "host", "srflx" or "relay" (through TURN), for status and tests.
func (c *RTCCall) Path() string {
	pc := c.peer()
	if pc == nil {
		return ""
	}
	for _, s := range pc.GetSenders() {
		if t := s.Transport(); t != nil {
			if p, err := t.ICETransport().GetSelectedCandidatePair(); err == nil && p != nil && p.Local != nil {
				return p.Local.Typ.String()
			}
		}
	}
	return ""
}

// E2EE says whether this call is encrypted end to end (its frames carry
// livekit-client's AES-GCM frame encryption), not only hop by hop.
func (c *RTCCall) E2EE() bool { return c.e2ee != nil }
