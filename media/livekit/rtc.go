package livekit

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
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
	capt, err := c.openCapture()
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	api, rate, err := c.newAPI(capt, registerReceiveCodecs)
	if err != nil {
		capt.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	player, err := playout.Open(playout.Config{Device: c.opt.Speaker, Transform: c.opt.RecvTransform, OnVideoFrame: c.opt.OnVideoFrame, Log: c.log})
	if err != nil {
		capt.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	call := &RTCCall{
		conn: c, id: newMeetingID(), salt: randBytes(16), api: api, capt: capt, rate: rate, player: player, log: c.log,
		token: tok, others: map[string]string{}, presence: make(chan media.Presence, 64),
		ended: make(chan error, 1), over: make(chan struct{}), grace: c.cfg.DisconnectGrace,
	}
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

func midToTrack(pc *webrtc.PeerConnection) map[string]string {
	m := map[string]string{}
	for _, t := range pc.GetTransceivers() {
		if s := t.Sender(); s != nil && s.Track() != nil && t.Mid() != "" {
			m[t.Mid()] = s.Track().ID()
		}
	}
	return m
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// RTCCall is one meeting joined over LiveKit's signalling.
type RTCCall struct {
	conn   *RTCConnector
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

	presence  chan media.Presence
	connected atomic.Bool
	joining   atomic.Bool // Join is still waiting for the media connection
	resumes   atomic.Int32
	rejoins   atomic.Int32
	restarts  atomic.Int32
	closeOnce sync.Once
	endOnce   sync.Once
	ended     chan error
	over      chan struct{}
	why       error
}

// ID is a random meeting id for events; it says nothing about the room.
func (c *RTCCall) ID() string { return c.id }

// Ended yields once if the call ends by itself; closed when the call is over.
func (c *RTCCall) Ended() <-chan error { return c.ended }

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

// Others is how many far-end participants are in the meeting now.
func (c *RTCCall) Others() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.others)
}

func (c *RTCCall) reason() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.why == nil {
		return errors.New("the call ended")
	}
	return c.why
}

// pseudonym names a participant in events: a keyed hash of the server's
// identity with this call's salt. It cannot be turned back into the
// identity, and it differs from call to call.
func (c *RTCCall) pseudonym(identity string) string {
	m := hmac.New(sha256.New, c.salt)
	m.Write([]byte(identity))
	return "p-" + hex.EncodeToString(m.Sum(nil)[:5])
}

// participant takes the server's news about one participant.
func (c *RTCCall) participant(p *lkp.ParticipantInfo) {
	if p.GetSid() == "" || p.GetIdentity() == c.conn.cfg.Identity {
		return
	}
	c.mu.Lock()
	if p.GetSid() == c.sid {
		c.mu.Unlock()
		return
	}
	_, known := c.others[p.GetSid()]
	var ev *media.Presence
	switch {
	case p.GetState() == lkp.ParticipantInfo_DISCONNECTED && known:
		name := c.others[p.GetSid()]
		delete(c.others, p.GetSid())
		ev = &media.Presence{Participant: name, Joined: false, Others: len(c.others)}
	case p.GetState() != lkp.ParticipantInfo_DISCONNECTED && !known && len(c.others) >= MaxOthers:
		// A server (or a flood of joins) cannot grow the map without limit.
		c.untracked++
		ok, _ := c.farLog.allow(time.Now())
		n := c.untracked
		c.mu.Unlock()
		if ok {
			c.log.Warn("far end: more participants than the unit tracks; not tracked", "max", MaxOthers, "untracked", n)
		}
		return
	case p.GetState() != lkp.ParticipantInfo_DISCONNECTED && !known:
		name := c.pseudonym(p.GetIdentity())
		c.others[p.GetSid()] = name
		ev = &media.Presence{Participant: name, Joined: true, Others: len(c.others)}
	}
	var logIt bool
	var skipped int
	if ev != nil {
		logIt, skipped = c.farLog.allow(time.Now())
	}
	c.mu.Unlock()
	if ev == nil {
		return
	}
	if skipped > 0 {
		c.log.Info("far end: changes not logged (too many)", "count", skipped)
	}
	if logIt {
		c.log.Info("far end", "participant", ev.Participant, "joined", ev.Joined, "others", ev.Others)
	}
	select {
	case <-c.over:
	case c.presence <- *ev:
	default:
		if logIt {
			c.log.Warn("far end: presence event dropped (nobody reading)")
		}
	}
}

// syncOthers takes the room as a join response lists it. After a full
// reconnect, whoever left meanwhile is reported gone; those still there
// keep their SIDs, so they are not announced again.
func (c *RTCCall) syncOthers(ps []*lkp.ParticipantInfo) {
	here := map[string]bool{}
	for _, p := range ps {
		here[p.GetSid()] = true
		c.participant(p)
	}
	c.mu.Lock()
	var gone []string
	for sid := range c.others {
		if !here[sid] {
			gone = append(gone, sid)
		}
	}
	c.mu.Unlock()
	for _, sid := range gone {
		c.participant(&lkp.ParticipantInfo{Sid: sid, State: lkp.ParticipantInfo_DISCONNECTED})
	}
}

func (c *RTCCall) nameOf(streamID string) string {
	sid, _, _ := strings.Cut(streamID, "|")
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.others[sid]; ok {
		return n
	}
	return c.pseudonym(sid)
}

// onTrack plays a remote participant's audio and shows their video, each
// in its own goroutine that ends with the track (or its peer connection).
func (c *RTCCall) onTrack(pc *webrtc.PeerConnection, t *webrtc.TrackRemote) {
	who := c.nameOf(t.StreamID())
	c.log.Info("far end track", "participant", who, "kind", t.Kind().String(), "codec", t.Codec().MimeType)
	go func() {
		var err error
		if t.Kind() == webrtc.RTPCodecTypeAudio {
			err = c.player.PlayAudio(who, t)
		} else {
			// Frames before a keyframe cannot be shown: ask for one.
			err = c.player.ShowVideo(who, t.Codec().MimeType, t, func() {
				_ = pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: uint32(t.SSRC())}})
			})
		}
		if err != nil && !errors.Is(err, playout.ErrClosed) {
			c.log.Debug("far end track ended", "participant", who, "err", err)
		}
	}()
}

// ownSenders counts the unit's own tracks of kind on pc.
func ownSenders(pc *webrtc.PeerConnection, kind webrtc.RTPCodecType) int {
	n := 0
	for _, t := range pc.GetTransceivers() {
		if s := t.Sender(); s != nil && s.Track() != nil && t.Kind() == kind {
			n++
		}
	}
	return n
}

func addReceivers(pc *webrtc.PeerConnection, audio, video int) error {
	for i := 0; i < audio; i++ {
		if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fmt.Errorf("add audio receiver: %w", err)
		}
	}
	for i := 0; i < video; i++ {
		if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fmt.Errorf("add video receiver: %w", err)
		}
	}
	return nil
}

func (c *RTCCall) onCandidate(pc *webrtc.PeerConnection, cand *webrtc.ICECandidate) {
	if cand == nil {
		return
	}
	init := cand.ToJSON()
	c.mu.Lock()
	if c.pc != pc { // gathered by a peer connection since replaced
		c.mu.Unlock()
		return
	}
	sig := c.sig
	if sig == nil {
		c.pendingCands = append(c.pendingCands, init)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.sendCandidate(sig, init)
}

func (c *RTCCall) sendCandidate(sig *signal, init webrtc.ICECandidateInit) {
	b, err := json.Marshal(init)
	if err != nil {
		return
	}
	_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Trickle{Trickle: &lkp.TrickleRequest{
		CandidateInit: string(b), Target: lkp.SignalTarget_PUBLISHER,
	}}})
}

// handle takes one message from the server on sig; a socket since
// replaced has nothing more to say.
func (c *RTCCall) handle(sig *signal, r *lkp.SignalResponse) {
	c.mu.Lock()
	pc, current := c.pc, c.sig == sig
	c.mu.Unlock()
	if !current || pc == nil {
		return
	}
	switch m := r.GetMessage().(type) {
	case *lkp.SignalResponse_Answer:
		c.onAnswer(pc, m.Answer)
	case *lkp.SignalResponse_Offer:
		c.onOffer(pc, sig, m.Offer)
	case *lkp.SignalResponse_Trickle:
		var init webrtc.ICECandidateInit
		if err := json.Unmarshal([]byte(m.Trickle.GetCandidateInit()), &init); err == nil {
			if err := c.takeCandidate(init); err != nil {
				c.log.Debug("trickle: candidate of the server dropped", "err", err)
				return
			}
			_ = pc.AddICECandidate(init)
		}
	case *lkp.SignalResponse_Update:
		for _, p := range m.Update.GetParticipants() {
			c.participant(p)
		}
	case *lkp.SignalResponse_MediaSectionsRequirement:
		// More people publish than the offer has receive sections for: add
		// them and offer again, as livekit-client does; never more than the
		// unit can play and show, however many are asked for.
		wantA, wantV := m.MediaSectionsRequirement.GetNumAudios(), m.MediaSectionsRequirement.GetNumVideos()
		roomA, roomV := recvBudget(pc)
		a, v := min(int64(wantA), int64(roomA)), min(int64(wantV), int64(roomV))
		if int64(wantA) > a || int64(wantV) > v {
			c.log.Warn("receive sections: the server asks for more than the unit plays and shows; the rest are not added",
				"audio_asked", wantA, "video_asked", wantV, "audio_added", a, "video_added", v, "max_audio", MaxRecvAudio, "max_video", MaxRecvVideo)
		}
		if err := addReceivers(pc, int(a), int(v)); err != nil {
			c.log.Warn("receive sections", "err", err)
		}
		// Even with nothing added: LiveKit sends 0/0 to have the unit offer
		// again, which binds the track it has just given an existing section.
		c.negotiate(false)
	case *lkp.SignalResponse_RefreshToken:
		c.mu.Lock()
		c.token = m.RefreshToken
		c.mu.Unlock()
	case *lkp.SignalResponse_PongResp:
		c.mu.Lock()
		c.lastPong = time.Now()
		c.mu.Unlock()
	case *lkp.SignalResponse_Pong:
		c.mu.Lock()
		c.lastPong = time.Now()
		c.mu.Unlock()
	case *lkp.SignalResponse_Leave:
		l := m.Leave
		switch l.GetAction() {
		case lkp.LeaveRequest_RESUME:
			c.log.Info("the server asks the unit to resume", "reason", l.GetReason().String())
			sig.close() // watchSignal resumes
		case lkp.LeaveRequest_RECONNECT:
			// The server has closed this participant: join again as a new
			// one, with a new peer connection, the same call.
			c.log.Info("the server asks the unit to reconnect in full", "reason", l.GetReason().String())
			c.mu.Lock()
			c.rejoin = true
			c.mu.Unlock()
			sig.close() // watchSignal rejoins
		default:
			go c.end(fmt.Errorf("the conference server ended the call (%s)", strings.ToLower(strings.TrimPrefix(l.GetReason().String(), "DisconnectReason_"))))
		}
	case *lkp.SignalResponse_Reconnect:
		// Handled by resume, which reads it as the first message.
	}
}

// candidates is the current peer connection's budget of remote candidates.
func (c *RTCCall) candidates() *icepolicy.Candidates {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.remoteCands == nil {
		c.remoteCands = &icepolicy.Candidates{Policy: c.conn.icePolicy()}
	}
	return c.remoteCands
}

// takeCandidate applies the ICE policy to a candidate the server trickled:
// the unit sends connectivity checks to every candidate it takes, so a
// server must not name internal hosts or thousands of addresses.
func (c *RTCCall) takeCandidate(init webrtc.ICECandidateInit) error {
	if strings.TrimSpace(init.Candidate) == "" {
		return nil // end of candidates
	}
	// Counted against the current generation whatever ufrag it claims: only
	// a new remote description starts a new count, else a server could
	// reset it with every trickle.
	return c.candidates().Take("", init.Candidate)
}

// filterRemote drops the candidates of a server's SDP that the ICE policy
// refuses.
func (c *RTCCall) filterRemote(sdp string) string {
	out, dropped, why := c.candidates().FilterSDP(sdp)
	if dropped > 0 {
		c.log.Warn("negotiation: candidates of the server dropped by the ICE policy", "dropped", dropped, "why", why)
	}
	return out
}

func (c *RTCCall) onAnswer(pc *webrtc.PeerConnection, sd *lkp.SessionDescription) {
	c.mu.Lock()
	if sd.GetId() != 0 && sd.GetId() != c.offerID {
		c.mu.Unlock()
		return // the answer to an offer since replaced
	}
	c.mu.Unlock()
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: c.filterRemote(sd.GetSdp())}); err != nil {
		c.log.Warn("negotiation: answer not taken", "err", err)
	}
	c.mu.Lock()
	c.negotiating = false
	again := c.again
	c.again = false
	c.mu.Unlock()
	if again {
		c.negotiate(false)
	}
}

// onOffer answers an offer from the server (not used by LiveKit with one
// peer connection today, but part of the protocol).
func (c *RTCCall) onOffer(pc *webrtc.PeerConnection, sig *signal, sd *lkp.SessionDescription) {
	// Every section of an offer becomes a transceiver: an offer with more
	// than the unit can play and show is refused whole.
	if a, v := offerSections(sd.GetSdp()); a > ownSenders(pc, webrtc.RTPCodecTypeAudio)+MaxRecvAudio || v > ownSenders(pc, webrtc.RTPCodecTypeVideo)+MaxRecvVideo {
		c.log.Warn("negotiation: server offer refused: more media sections than the unit plays and shows",
			"audio", a, "video", v, "max_audio", MaxRecvAudio, "max_video", MaxRecvVideo)
		return
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: c.filterRemote(sd.GetSdp())}); err != nil {
		c.log.Warn("negotiation: server offer not taken", "err", err)
		return
	}
	ans, err := pc.CreateAnswer(nil)
	if err == nil {
		err = pc.SetLocalDescription(ans)
	}
	if err != nil {
		c.log.Warn("negotiation: cannot answer the server", "err", err)
		return
	}
	_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Answer{Answer: &lkp.SessionDescription{Type: "answer", Sdp: ans.SDP, Id: sd.GetId()}}})
}

// negotiate sends a new offer over the WebSocket; one at a time, and one
// more after the answer if something changed meanwhile.
func (c *RTCCall) negotiate(iceRestart bool) {
	c.mu.Lock()
	if iceRestart {
		c.restartICE = true
	}
	if c.negotiating || c.sig == nil || c.pc == nil {
		c.again = true
		c.mu.Unlock()
		return
	}
	c.negotiating = true
	restart := c.restartICE
	c.restartICE = false
	c.offerID++
	id, sig, pc := c.offerID, c.sig, c.pc
	c.mu.Unlock()
	fail := func(err error) {
		c.log.Warn("negotiation failed", "err", err)
		c.mu.Lock()
		c.negotiating = false
		c.mu.Unlock()
	}
	offer, restart, err := c.nextOffer(pc, restart)
	if err != nil {
		fail(err)
		return
	}
	if err := sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Offer{Offer: &lkp.SessionDescription{
		Type: "offer", Sdp: offer.SDP, Id: id, MidToTrackId: midToTrack(pc),
	}}}); err != nil {
		fail(err) // the signal watcher resumes and offers again
		return
	}
	if restart {
		c.restarts.Add(1)
	}
}

// nextOffer is the offer to send: a new one, or, when an earlier offer's
// answer was lost with a signalling socket (the peer connection still
// waits in have-local-offer), that same offer again. pion cannot roll an
// offer back, and a new offer on top of it is refused; without this the
// call stayed in have-local-offer for good, and after an ICE restart the
// server had taken but never answered, media stopped (CI, issue 17 round).
// A restart still wanted is done once the answer is in. It reports
// whether the offer it returns restarts ICE.
func (c *RTCCall) nextOffer(pc *webrtc.PeerConnection, restart bool) (webrtc.SessionDescription, bool, error) {
	if pc.SignalingState() == webrtc.SignalingStateHaveLocalOffer {
		if pend := pc.PendingLocalDescription(); pend != nil {
			c.mu.Lock()
			if restart {
				c.restartICE = true
			}
			c.again = c.again || restart
			c.mu.Unlock()
			return *pend, false, nil
		}
	}
	offer, err := pc.CreateOffer(&webrtc.OfferOptions{ICERestart: restart})
	if err != nil {
		return webrtc.SessionDescription{}, false, err
	}
	if err := pc.SetLocalDescription(offer); err != nil {
		return webrtc.SessionDescription{}, false, err
	}
	return offer, restart, nil
}

func (c *RTCCall) setPing(every, timeout int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pingEvery, c.pingTimeout = time.Duration(every)*time.Second, time.Duration(timeout)*time.Second
	if c.pingEvery <= 0 {
		c.pingEvery = 5 * time.Second
	}
	if c.pingTimeout <= 0 {
		c.pingTimeout = 15 * time.Second
	}
	c.lastPong = time.Now()
}

// pinger keeps the signalling alive as the server asks (it drops a client
// that stays silent past its ping timeout), and treats a server that stops
// answering as a lost connection.
func (c *RTCCall) pinger() {
	for {
		c.mu.Lock()
		every, timeout, last, sig := c.pingEvery, c.pingTimeout, c.lastPong, c.sig
		c.mu.Unlock()
		select {
		case <-c.over:
			return
		case <-time.After(every):
		}
		if sig == nil {
			continue
		}
		if time.Since(last) > timeout+every {
			c.log.Warn("signalling: no pong from the server; reconnecting")
			sig.close()
			continue
		}
		now := time.Now().UnixMilli()
		_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_PingReq{PingReq: &lkp.Ping{Timestamp: now}}})
		_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Ping{Ping: now}})
	}
}

// watchSignal gets the signalling back when the WebSocket drops: it
// resumes the session as the same participant (JoinRequest.reconnect with
// our SID), so the far end sees no one leave; or, when the server asks for
// a full reconnect (LeaveRequest action RECONNECT, on the socket or as the
// answer to a resume), it joins again as a new participant with a new peer
// connection and the same capture behind the same gate. It gives up after
// the grace time, and the call ends with the reason.
func (c *RTCCall) watchSignal(sig *signal) {
	select {
	case <-c.over:
		return
	case <-sig.done:
	}
	c.mu.Lock()
	if c.sig == sig {
		c.sig = nil
	}
	rejoin := c.rejoin
	c.mu.Unlock()
	select {
	case <-c.over:
		return
	default:
	}
	if errors.Is(sig.err, ErrMessageTooBig) {
		// Not a lost connection but a server breaking the protocol (or
		// trying to exhaust the unit): a resume would only fetch it again.
		c.log.Error("signalling: the conference server sent an oversized message; ending the call", "limit", MaxSignalMessage)
		c.end(fmt.Errorf("signalling: %w", sig.err))
		return
	}
	if rejoin {
		c.log.Warn("signalling closed for a full reconnect; joining again")
	} else {
		c.log.Warn("signalling lost; resuming the session", "err", sig.err)
	}
	deadline := time.Now().Add(c.grace)
	c.mu.Lock()
	pause, flaps := cycleBackoff(c.flaps, c.upAt, time.Now(), c.grace)
	c.flaps = flaps
	c.mu.Unlock()
	if flaps > 0 {
		c.log.Info("signalling: lost again soon after coming back; waiting longer before the next attempt", "wait", pause.Round(time.Millisecond), "in_a_row", flaps)
	}
	wait := max(pause, firstBackoff)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.over:
			return
		case <-time.After(pause):
		}
		pause, wait = jitter(wait), min(2*wait, max(2*time.Second, backoffCap(c.grace)))
		c.mu.Lock()
		rejoin := c.rejoin
		c.mu.Unlock()
		var next *signal
		var err error
		if rejoin {
			next, err = c.reconnect(time.Until(deadline))
		} else {
			next, err = c.resume(time.Until(deadline))
		}
		if err != nil {
			last = err
			if errors.Is(err, errFullReconnect) {
				c.log.Info("resume refused: the server asks for a full reconnect", "err", err)
				pause = 0
				continue
			}
			c.log.Warn("reconnect failed; retrying", "rejoin", rejoin, "err", err)
			if errors.Is(err, ErrRejected) || errors.Is(err, ErrMessageTooBig) {
				break
			}
			continue
		}
		if rejoin {
			c.rejoins.Add(1)
		} else {
			c.resumes.Add(1)
		}
		c.mu.Lock()
		c.upAt = time.Now()
		c.mu.Unlock()
		go c.watchSignal(next)
		return
	}
	if last != nil {
		c.end(fmt.Errorf("lost the conference server for more than %s (last attempt: %v): %w", c.grace, last, whip.ErrICEFailed))
		return
	}
	c.end(fmt.Errorf("lost the conference server for more than %s: %w", c.grace, whip.ErrICEFailed))
}

// errFullReconnect: the server will not resume the session and asks for a
// full reconnect instead (it has closed the participant).
var errFullReconnect = errors.New("the conference server asks for a full reconnect")

// freshToken is the token for a resume or a rejoin: a new one where the
// unit signs its own (the call may outlast the first), else the server's
// latest refresh.
func (c *RTCCall) freshToken() string {
	if c.conn.cfg.APIKey != "" {
		if t, err := c.conn.token(); err == nil {
			return t
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

func (c *RTCCall) resume(left time.Duration) (*signal, error) {
	tok := c.freshToken()
	c.mu.Lock()
	sid := c.sid
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), min(left, 5*time.Second))
	defer cancel()
	jr := &lkp.JoinRequest{
		ClientInfo:         clientInfo(),
		ConnectionSettings: &lkp.ConnectionSettings{AutoSubscribe: true},
		Reconnect:          true,
		ReconnectReason:    lkp.ReconnectReason_RR_SIGNAL_DISCONNECTED,
		ParticipantSid:     sid,
	}
	sig, first, err := dialSignal(ctx, c.conn.cfg.URL, tok, jr, c.conn.dialer)
	if err != nil {
		return nil, err
	}
	if l := first.GetLeave(); l != nil {
		sig.close()
		if l.GetAction() == lkp.LeaveRequest_RECONNECT {
			c.mu.Lock()
			c.rejoin = true
			c.mu.Unlock()
			return nil, fmt.Errorf("%w (%s)", errFullReconnect, l.GetReason())
		}
		return nil, fmt.Errorf("%w: the server will not resume the session (%s)", ErrRejected, l.GetReason())
	}
	c.mu.Lock()
	pc := c.pc
	c.mu.Unlock()
	if rc := first.GetReconnect(); rc != nil && pc != nil {
		if err := pc.SetConfiguration(c.conn.pcConfig(rc.GetIceServers())); err != nil {
			c.log.Debug("resume: ICE servers not taken", "err", err)
		}
	}
	c.mu.Lock()
	c.sig = sig
	c.negotiating = false // an answer lost with the old socket never comes
	c.lastPong = time.Now()
	c.mu.Unlock()
	go sig.loop(func(r *lkp.SignalResponse) { c.handle(sig, r) })
	// New paths may be needed (the address may have changed): restart ICE.
	c.negotiate(true)
	return sig, nil
}

// rejoinWait bounds one full-reconnect attempt: the join and the new media
// connection.
const rejoinWait = 10 * time.Second

// reconnect is one full-reconnect attempt: the old peer connection goes
// (its senders let go of the camera and microphone tracks; the capture
// keeps running behind the gate), and connect joins again. It returns once
// media flows on the new peer connection.
func (c *RTCCall) reconnect(left time.Duration) (*signal, error) {
	ctx, cancel := context.WithTimeout(context.Background(), min(left, rejoinWait))
	defer cancel()
	c.mu.Lock()
	old := c.pc
	c.pc = nil // its callbacks are not the call's news any more
	if c.pcGone != nil {
		close(c.pcGone)
		c.pcGone = nil
	}
	c.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	s, err := c.connect(ctx, c.freshToken(), true)
	if err != nil {
		return nil, fmt.Errorf("rejoin: %w", err)
	}
	select {
	case <-s.up:
	case <-ctx.Done():
		s.sig.close()
		c.mu.Lock()
		if c.sig == s.sig {
			c.sig = nil
		}
		c.mu.Unlock()
		return nil, fmt.Errorf("rejoin: no media connection within %s: %w", min(left, rejoinWait), whip.ErrICEFailed)
	case <-c.over:
		return nil, fmt.Errorf("rejoin: %w", c.reason())
	}
	c.mu.Lock()
	c.rejoin = false
	c.mu.Unlock()
	c.log.Info("rejoined the room as a new participant")
	return s.sig, nil
}

// onState turns the connection state of the call's peer connection into
// recovery or the end of the call.
func (c *RTCCall) onState(pc *webrtc.PeerConnection, s webrtc.PeerConnectionState) {
	if !c.connected.Load() || c.peer() != pc {
		return // Join is still deciding, or pc has been replaced
	}
	if s == webrtc.PeerConnectionStateClosed {
		// The server closed the media session (DTLS close): as when it
		// closes the participant for a full reconnect. The signalling says
		// what comes next (a leave ends the call, a resume may be answered
		// with a full reconnect); until then it is a lost path, and the
		// call ends if nothing brings it back within the grace time.
		c.log.Warn("the conference server closed the media connection; waiting for the signalling")
		s = webrtc.PeerConnectionStateFailed
	}
	c.recovery.onState(s)
}

// restartOverSignal is one ICE restart: an offer with fresh credentials
// over the WebSocket.
func (c *RTCCall) restartOverSignal() error {
	c.mu.Lock()
	pc := c.pc
	c.negotiating = false // a restart replaces any offer still waiting
	c.mu.Unlock()
	if pc != nil && pc.ConnectionState() == webrtc.PeerConnectionStateClosed {
		return errNoRestart // only a full reconnect brings a closed one back
	}
	c.negotiate(true)
	return nil
}

// Leave tells the server the unit leaves (the far end sees it go at once)
// and releases camera, microphone and speaker.
func (c *RTCCall) Leave(context.Context) error {
	c.connected.Store(false)
	c.joining.Store(false)
	c.finish(nil, false) // first: the watchers see the call over, not a lost socket
	c.leaveQuietly()
	return nil
}

func (c *RTCCall) leaveQuietly() {
	c.mu.Lock()
	sig := c.sig
	c.sig = nil
	c.mu.Unlock()
	if sig != nil {
		_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Leave{Leave: &lkp.LeaveRequest{
			Reason: lkp.DisconnectReason_CLIENT_INITIATED, Action: lkp.LeaveRequest_DISCONNECT,
		}}})
		sig.close()
	}
	c.close()
}

// close ends the pipelines, then the peer connection (which stops the
// encoders reading), and only then releases camera, microphone, speaker.
func (c *RTCCall) close() {
	c.closeOnce.Do(func() {
		c.capt.Stop(time.Second)
		if pc := c.peer(); pc != nil {
			_ = pc.Close()
		}
		c.capt.Close()
		c.player.Close()
		c.conn.mu.Lock()
		if c.conn.cur == c {
			c.conn.cur = nil
		}
		c.conn.mu.Unlock()
	})
}

func (c *RTCCall) finish(err error, byItself bool) {
	c.endOnce.Do(func() {
		c.mu.Lock()
		c.why = err
		c.mu.Unlock()
		if byItself {
			c.ended <- err
		}
		close(c.ended)
		close(c.over)
	})
}

// end is the call ending by itself; the first reason wins.
func (c *RTCCall) end(err error) {
	if c.connected.CompareAndSwap(true, false) {
		c.finish(err, true)
		c.leaveQuietly()
		return
	}
	if c.joining.CompareAndSwap(true, false) { // wake Join with the reason
		c.finish(err, false)
		c.leaveQuietly()
	}
}
