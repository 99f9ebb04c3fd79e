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
	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
	"github.com/konsult/konsult/media/gate"
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
	pc, err := api.NewPeerConnection(c.pcConfig(nil))
	if err != nil {
		capt.Close()
		return nil, fmt.Errorf("join: new peer connection: %w", err)
	}
	player, err := playout.Open(playout.Config{Device: c.opt.Speaker, Transform: c.opt.RecvTransform, OnVideoFrame: c.opt.OnVideoFrame, Log: c.log})
	if err != nil {
		_ = pc.Close()
		capt.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	call := &RTCCall{
		conn: c, id: newMeetingID(), salt: randBytes(16), pc: pc, capt: capt, rate: rate, player: player, log: c.log,
		token: tok, others: map[string]string{}, presence: make(chan media.Presence, 64),
		ended: make(chan error, 1), over: make(chan struct{}), grace: c.cfg.DisconnectGrace,
	}
	call.recovery = recovery{grace: c.cfg.DisconnectGrace, over: call.over, end: call.end, restart: call.restartOverSignal, log: c.log.Info}
	var adds []*lkp.AddTrackRequest
	for _, t := range capt.Tracks() {
		if _, err := pc.AddTransceiverFromTrack(boundedUnbind{t}, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			call.close()
			return nil, fmt.Errorf("join: add %s track: %w", t.Kind(), err)
		}
		req := &lkp.AddTrackRequest{Cid: t.ID(), Encryption: c.opt.Encryption}
		if t.Kind() == webrtc.RTPCodecTypeVideo {
			req.Type, req.Source, req.Name = lkp.TrackType_VIDEO, lkp.TrackSource_CAMERA, "camera"
			req.Width, req.Height = uint32(c.media.Width), uint32(c.media.Height)
		} else {
			req.Type, req.Source, req.Name = lkp.TrackType_AUDIO, lkp.TrackSource_MICROPHONE, "microphone"
		}
		adds = append(adds, req)
	}
	if err := call.addReceivers(initialRecvAudio, initialRecvVideo); err != nil {
		call.close()
		return nil, fmt.Errorf("join: %w", err)
	}
	pc.OnTrack(call.onTrack)
	pc.OnICECandidate(call.onCandidate)
	pc.OnConnectionStateChange(call.onState)
	connected := make(chan struct{})
	var connOnce sync.Once
	pc.OnICEConnectionStateChange(func(s webrtc.ICEConnectionState) {
		if s == webrtc.ICEConnectionStateConnected {
			connOnce.Do(func() { close(connected) })
		}
	})
	dtlsUp := make(chan struct{})
	var dtlsOnce sync.Once
	call.onConnected = func() { dtlsOnce.Do(func() { close(dtlsUp) }) }

	// The first offer rides in the join request. It is set as the local
	// description only once the join response has brought the server's
	// TURN servers, so the first gathering already uses them.
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		call.close()
		return nil, fmt.Errorf("join: create offer: %w", err)
	}
	call.offerID = 1
	jr := &lkp.JoinRequest{
		ClientInfo:         clientInfo(),
		ConnectionSettings: &lkp.ConnectionSettings{AutoSubscribe: true},
		AddTrackRequests:   adds,
		PublisherOffer:     &lkp.SessionDescription{Type: "offer", Sdp: offer.SDP, Id: call.offerID, MidToTrackId: midToTrack(pc)},
	}
	tPrep := time.Now()
	sig, first, err := dialSignal(ctx, c.cfg.URL, tok, jr, c.dialer)
	if err != nil {
		call.close()
		return nil, fmt.Errorf("join room: %w", err)
	}
	join := first.GetJoin()
	if join == nil {
		sig.close()
		call.close()
		if l := first.GetLeave(); l != nil {
			return nil, fmt.Errorf("join room: %w: %s", ErrRejected, l.GetReason())
		}
		return nil, fmt.Errorf("join room: %w: unexpected first message %T", ErrRejected, first.GetMessage())
	}
	tJoin := time.Now()
	call.sid = join.GetParticipant().GetSid()
	call.setPing(join.GetPingInterval(), join.GetPingTimeout())
	if err := pc.SetConfiguration(c.pcConfig(join.GetIceServers())); err != nil {
		c.log.Warn("join: the server's ICE servers were not taken", "err", err)
	}
	if join.GetClientConfiguration().GetForceRelay() == lkp.ClientConfigSetting_ENABLED {
		c.log.Info("join: the server asks for relayed media only")
	}
	for _, p := range join.GetOtherParticipants() {
		call.participant(p)
	}
	call.mu.Lock()
	call.sig = sig
	call.negotiating = true // until the answer to the offer in the join request
	call.mu.Unlock()
	if err := pc.SetLocalDescription(offer); err != nil {
		sig.close()
		call.close()
		return nil, fmt.Errorf("join: set local description: %w", err)
	}
	call.joining.Store(true)
	go sig.loop(call.handle)
	go call.watchSignal(sig)
	go call.pinger()

	select {
	case <-dtlsUp:
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
	c.log.Debug("join timings", "prepare", tPrep.Sub(t0), "join_response", tJoin.Sub(tPrep), "ice_dtls", time.Since(tJoin), "total", time.Since(t0))
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

func (c *RTCConnector) pcConfig(fromServer []*lkp.ICEServer) webrtc.Configuration {
	servers := append([]webrtc.ICEServer(nil), c.opt.ICEServers...)
	for _, s := range fromServer {
		servers = append(servers, webrtc.ICEServer{URLs: s.GetUrls(), Username: s.GetUsername(), Credential: s.GetCredential()})
	}
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
	pc     *webrtc.PeerConnection
	capt   *capture.Capture
	rate   *congestion.Controller
	player *playout.Player
	log    *slog.Logger
	grace  time.Duration

	recovery    recovery
	onConnected func()

	mu           sync.Mutex
	sig          *signal
	token        string // refreshed by the server; never logged
	sid          string // our participant SID, to resume as the same participant
	others       map[string]string
	offerID      uint32
	negotiating  bool // an offer is out, its answer not yet in
	again        bool // negotiate once more when the answer is in
	restartICE   bool // the next offer restarts ICE
	pendingCands []webrtc.ICECandidateInit
	pingEvery    time.Duration
	pingTimeout  time.Duration
	lastPong     time.Time

	presence  chan media.Presence
	connected atomic.Bool
	joining   atomic.Bool // Join is still waiting for the media connection
	resumes   atomic.Int32
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

// Resumes counts signalling reconnections; Restarts counts ICE restarts.
func (c *RTCCall) Resumes() int  { return int(c.resumes.Load()) }
func (c *RTCCall) Restarts() int { return int(c.restarts.Load()) }

// Path says how media goes now, from the unit's side of the selected ICE
// pair: "host", "srflx" or "relay" (through TURN), for status and tests.
func (c *RTCCall) Path() string {
	for _, s := range c.pc.GetSenders() {
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
	if p.GetSid() == "" || p.GetSid() == c.sid || p.GetIdentity() == c.conn.cfg.Identity {
		return
	}
	c.mu.Lock()
	_, known := c.others[p.GetSid()]
	var ev *media.Presence
	switch {
	case p.GetState() == lkp.ParticipantInfo_DISCONNECTED && known:
		name := c.others[p.GetSid()]
		delete(c.others, p.GetSid())
		ev = &media.Presence{Participant: name, Joined: false, Others: len(c.others)}
	case p.GetState() != lkp.ParticipantInfo_DISCONNECTED && !known:
		name := c.pseudonym(p.GetIdentity())
		c.others[p.GetSid()] = name
		ev = &media.Presence{Participant: name, Joined: true, Others: len(c.others)}
	}
	c.mu.Unlock()
	if ev == nil {
		return
	}
	c.log.Info("far end", "participant", ev.Participant, "joined", ev.Joined, "others", ev.Others)
	select {
	case <-c.over:
	case c.presence <- *ev:
	default:
		c.log.Warn("far end: presence event dropped (nobody reading)")
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
// in its own goroutine that ends with the track.
func (c *RTCCall) onTrack(t *webrtc.TrackRemote, r *webrtc.RTPReceiver) {
	who := c.nameOf(t.StreamID())
	c.log.Info("far end track", "participant", who, "kind", t.Kind().String(), "codec", t.Codec().MimeType)
	go func() {
		var err error
		if t.Kind() == webrtc.RTPCodecTypeAudio {
			err = c.player.PlayAudio(who, t)
		} else {
			// Frames before a keyframe cannot be shown: ask for one.
			err = c.player.ShowVideo(who, t.Codec().MimeType, t, func() {
				_ = c.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: uint32(t.SSRC())}})
			})
		}
		if err != nil && !errors.Is(err, playout.ErrClosed) {
			c.log.Debug("far end track ended", "participant", who, "err", err)
		}
	}()
}

func (c *RTCCall) addReceivers(audio, video int) error {
	for i := 0; i < audio; i++ {
		if _, err := c.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fmt.Errorf("add audio receiver: %w", err)
		}
	}
	for i := 0; i < video; i++ {
		if _, err := c.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fmt.Errorf("add video receiver: %w", err)
		}
	}
	return nil
}

func (c *RTCCall) onCandidate(cand *webrtc.ICECandidate) {
	if cand == nil {
		return
	}
	init := cand.ToJSON()
	c.mu.Lock()
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

// handle takes one message from the server.
func (c *RTCCall) handle(r *lkp.SignalResponse) {
	switch m := r.GetMessage().(type) {
	case *lkp.SignalResponse_Answer:
		c.onAnswer(m.Answer)
	case *lkp.SignalResponse_Offer:
		c.onOffer(m.Offer)
	case *lkp.SignalResponse_Trickle:
		var init webrtc.ICECandidateInit
		if err := json.Unmarshal([]byte(m.Trickle.GetCandidateInit()), &init); err == nil {
			_ = c.pc.AddICECandidate(init)
		}
	case *lkp.SignalResponse_Update:
		for _, p := range m.Update.GetParticipants() {
			c.participant(p)
		}
	case *lkp.SignalResponse_MediaSectionsRequirement:
		// More people publish than the offer has receive sections for: add
		// them and offer again, as livekit-client does.
		if err := c.addReceivers(int(m.MediaSectionsRequirement.GetNumAudios()), int(m.MediaSectionsRequirement.GetNumVideos())); err != nil {
			c.log.Warn("receive sections", "err", err)
		}
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
			c.mu.Lock()
			sig := c.sig
			c.mu.Unlock()
			if sig != nil {
				sig.close() // watchSignal resumes
			}
		default:
			go c.end(fmt.Errorf("the conference server ended the call (%s)", strings.ToLower(strings.TrimPrefix(l.GetReason().String(), "DisconnectReason_"))))
		}
	case *lkp.SignalResponse_Reconnect:
		// Handled by resume, which reads it as the first message.
	}
}

func (c *RTCCall) onAnswer(sd *lkp.SessionDescription) {
	c.mu.Lock()
	if sd.GetId() != 0 && sd.GetId() != c.offerID {
		c.mu.Unlock()
		return // the answer to an offer since replaced
	}
	c.mu.Unlock()
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: sd.GetSdp()}); err != nil {
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
func (c *RTCCall) onOffer(sd *lkp.SessionDescription) {
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: sd.GetSdp()}); err != nil {
		c.log.Warn("negotiation: server offer not taken", "err", err)
		return
	}
	ans, err := c.pc.CreateAnswer(nil)
	if err == nil {
		err = c.pc.SetLocalDescription(ans)
	}
	if err != nil {
		c.log.Warn("negotiation: cannot answer the server", "err", err)
		return
	}
	c.mu.Lock()
	sig := c.sig
	c.mu.Unlock()
	if sig != nil {
		_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Answer{Answer: &lkp.SessionDescription{Type: "answer", Sdp: ans.SDP, Id: sd.GetId()}}})
	}
}

// negotiate sends a new offer over the WebSocket; one at a time, and one
// more after the answer if something changed meanwhile.
func (c *RTCCall) negotiate(iceRestart bool) {
	c.mu.Lock()
	if iceRestart {
		c.restartICE = true
	}
	if c.negotiating || c.sig == nil {
		c.again = true
		c.mu.Unlock()
		return
	}
	c.negotiating = true
	restart := c.restartICE
	c.restartICE = false
	c.offerID++
	id := c.offerID
	sig := c.sig
	c.mu.Unlock()
	fail := func(err error) {
		c.log.Warn("negotiation failed", "err", err)
		c.mu.Lock()
		c.negotiating = false
		c.mu.Unlock()
	}
	offer, err := c.pc.CreateOffer(&webrtc.OfferOptions{ICERestart: restart})
	if err != nil {
		fail(err)
		return
	}
	if err := c.pc.SetLocalDescription(offer); err != nil {
		fail(err)
		return
	}
	if err := sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Offer{Offer: &lkp.SessionDescription{
		Type: "offer", Sdp: offer.SDP, Id: id, MidToTrackId: midToTrack(c.pc),
	}}}); err != nil {
		fail(err) // the signal watcher resumes and offers again
		return
	}
	if restart {
		c.restarts.Add(1)
	}
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

// watchSignal resumes the session when the WebSocket drops, as the same
// participant (JoinRequest.reconnect with our SID): the far end sees no one
// leave. It gives up after the grace time.
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
	c.mu.Unlock()
	select {
	case <-c.over:
		return
	default:
	}
	c.log.Warn("signalling lost; resuming the session", "err", sig.err)
	deadline := time.Now().Add(c.grace)
	wait := 200 * time.Millisecond
	for time.Now().Before(deadline) {
		select {
		case <-c.over:
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
		next, err := c.resume(time.Until(deadline))
		if err != nil {
			c.log.Warn("resume failed; retrying", "err", err)
			if errors.Is(err, ErrRejected) {
				break
			}
			continue
		}
		c.resumes.Add(1)
		go c.watchSignal(next)
		return
	}
	c.end(fmt.Errorf("lost the conference server for more than %s: %w", c.grace, whip.ErrICEFailed))
}

func (c *RTCCall) resume(left time.Duration) (*signal, error) {
	c.mu.Lock()
	tok, sid := c.token, c.sid
	c.mu.Unlock()
	if c.conn.cfg.APIKey != "" { // a fresh token: the call may outlast the first one
		if t, err := c.conn.token(); err == nil {
			tok = t
		}
	}
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
		return nil, fmt.Errorf("%w: the server will not resume the session (%s)", ErrRejected, l.GetReason())
	}
	if rc := first.GetReconnect(); rc != nil {
		if err := c.pc.SetConfiguration(c.conn.pcConfig(rc.GetIceServers())); err != nil {
			c.log.Debug("resume: ICE servers not taken", "err", err)
		}
	}
	c.mu.Lock()
	c.sig = sig
	c.negotiating = false // an answer lost with the old socket never comes
	c.lastPong = time.Now()
	c.mu.Unlock()
	go sig.loop(c.handle)
	// New paths may be needed (the address may have changed): restart ICE.
	c.negotiate(true)
	return sig, nil
}

// onState turns the connection state into recovery or the end of the call.
func (c *RTCCall) onState(s webrtc.PeerConnectionState) {
	if s == webrtc.PeerConnectionStateConnected && c.onConnected != nil {
		c.onConnected()
	}
	if !c.connected.Load() {
		return // Join is still deciding
	}
	if s == webrtc.PeerConnectionStateClosed {
		go c.end(errors.New("the conference server closed the call"))
		return
	}
	c.recovery.onState(s)
}

// restartOverSignal is one ICE restart: an offer with fresh credentials
// over the WebSocket.
func (c *RTCCall) restartOverSignal() error {
	c.mu.Lock()
	c.negotiating = false // a restart replaces any offer still waiting
	c.mu.Unlock()
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
		_ = c.pc.Close()
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
