package livekit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"google.golang.org/protobuf/proto"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/playout"
)

// Tests of a hostile LiveKit signalling server (issue 16, items 2, 4, 9,
// 10): a fake /rtc/v1 that joins the unit for real (a pion peer connection
// answers its offer, so ICE and DTLS connect on loopback) and then runs a
// script of whatever a compromised server may send.

// sigConn is one WebSocket of the unit to the fake server.
type sigConn struct {
	n   int // 1 for the first connection
	ws  *websocket.Conn
	jr  *lkp.JoinRequest
	pc  *webrtc.PeerConnection
	wmu sync.Mutex
	// offers counts the offers the unit sent on this connection.
	offers atomic.Int32
}

func (c *sigConn) send(m *lkp.SignalResponse) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return c.sendRaw(b)
}

func (c *sigConn) sendRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.WriteMessage(websocket.BinaryMessage, b)
}

// sigFake is the fake server. script runs on every connection once the
// join (or resume) has been answered; when it returns the server keeps
// reading until the unit closes the socket.
type sigFake struct {
	t      *testing.T
	script func(c *sigConn)
	// refuse, when set, answers the WebSocket upgrade with this status and
	// body.
	refuse     int
	refuseBody string
	// answerOffers makes the server answer the unit's later offers.
	answerOffers bool
	// loseAnswer, when set and true for a connection, takes the unit's
	// offer into the server's media but never sends the answer: as when
	// the socket breaks between the two.
	loseAnswer func(c *sigConn) bool
	conns      atomic.Int32
	// media is the server's side of the unit's media session, which a
	// resume finds again.
	mu    sync.Mutex
	media *webrtc.PeerConnection
	srv   *httptest.Server
}

func newSigFake(t *testing.T, script func(c *sigConn)) *sigFake {
	f := &sigFake{t: t, script: script}
	mux := http.NewServeMux()
	mux.HandleFunc("/rtc/v1", f.serve)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *sigFake) serve(w http.ResponseWriter, r *http.Request) {
	n := int(f.conns.Add(1))
	if f.refuse != 0 {
		w.WriteHeader(f.refuse)
		_, _ = io.WriteString(w, f.refuseBody)
		return
	}
	raw, err := base64.URLEncoding.DecodeString(r.URL.Query().Get("join_request"))
	var wrapped lkp.WrappedJoinRequest
	var jr lkp.JoinRequest
	if err != nil || proto.Unmarshal(raw, &wrapped) != nil || proto.Unmarshal(wrapped.GetJoinRequest(), &jr) != nil {
		http.Error(w, "bad join request", http.StatusBadRequest)
		return
	}
	up := websocket.Upgrader{}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	c := &sigConn{n: n, ws: ws, jr: &jr}
	if jr.GetReconnect() {
		f.mu.Lock()
		c.pc = f.media
		f.mu.Unlock()
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Reconnect{Reconnect: &lkp.ReconnectResponse{}}})
	} else {
		pc, ans, err := answerer(jr.GetPublisherOffer().GetSdp())
		if err != nil {
			f.t.Errorf("fake server: %v", err)
			return
		}
		// The media outlives the socket, as on a real server: a resume
		// finds it still up.
		f.t.Cleanup(func() { _ = pc.Close() })
		c.pc = pc
		f.mu.Lock()
		f.media = pc
		f.mu.Unlock()
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Join{Join: &lkp.JoinResponse{
			Participant:  &lkp.ParticipantInfo{Sid: fmt.Sprintf("PA_unit%d", n), Identity: "unit-1"},
			PingInterval: 5, PingTimeout: 30,
		}}})
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Answer{Answer: &lkp.SessionDescription{Type: "answer", Sdp: ans, Id: 1}}})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			var req lkp.SignalRequest
			if proto.Unmarshal(b, &req) != nil {
				continue
			}
			if o := req.GetOffer(); o != nil {
				c.offers.Add(1)
			}
			if o := req.GetOffer(); o != nil && c.pc != nil && f.answerOffers {
				if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: o.GetSdp()}); err == nil {
					if ans, err := c.pc.CreateAnswer(nil); err == nil && c.pc.SetLocalDescription(ans) == nil && (f.loseAnswer == nil || !f.loseAnswer(c)) {
						_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Answer{Answer: &lkp.SessionDescription{Type: "answer", Sdp: ans.SDP, Id: o.GetId()}}})
					}
				}
			}
			if tr := req.GetTrickle(); tr != nil && c.pc != nil {
				var init webrtc.ICECandidateInit
				if json.Unmarshal([]byte(tr.GetCandidateInit()), &init) == nil {
					_ = c.pc.AddICECandidate(init)
				}
			}
		}
	}()
	if f.script != nil {
		f.script(c)
	}
	<-done
}

// answerer is the server's side of the media: a pion peer connection on
// loopback that answers offer with every candidate in the answer.
func answerer(offer string) (*webrtc.PeerConnection, string, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return nil, "", err
	}
	se := webrtc.SettingEngine{}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIncludeLoopbackCandidate(true)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	pc, err := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(se)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, "", err
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		pc.Close()
		return nil, "", err
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		pc.Close()
		return nil, "", err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); err != nil {
		pc.Close()
		return nil, "", err
	}
	<-gathered
	return pc, pc.LocalDescription().SDP, nil
}

// countingHandler counts log records by message (and keeps the text).
type countingHandler struct {
	mu   sync.Mutex
	msgs map[string]int
	text bytes.Buffer
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.msgs == nil {
		h.msgs = map[string]int{}
	}
	h.msgs[r.Message]++
	h.text.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&h.text, " %s=%v", a.Key, a.Value)
		return true
	})
	h.text.WriteByte('\n')
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// sigConnector is a connector to the fake server with the test camera and
// microphone, logging into h (nil: discarded).
func sigConnector(t *testing.T, f *sigFake, h slog.Handler, grace time.Duration) (*RTCConnector, *gate.Gate) {
	t.Helper()
	if h == nil {
		h = slog.NewTextHandler(io.Discard, nil)
	}
	g := gate.New()
	conn, err := NewRTC(Config{URL: f.srv.URL, Room: "r", Identity: "unit-1", APIKey: "k", APISecret: "secret-secret-secret-secret-secret", DisconnectGrace: grace},
		Media{Width: 640, Height: 480, FPS: 15, VideoCodec: "auto", VideoBitRate: 300_000, AudioBitRate: 32_000,
			Camera: capture.TestDevice, Microphone: capture.TestDevice},
		RTCOptions{Speaker: playout.DeviceClock}, g, slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	return conn, g
}

func sigJoin(t *testing.T, conn *RTCConnector) *RTCCall {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join the fake server: %v", err)
	}
	t.Cleanup(func() { _ = call.Leave(context.Background()) })
	return call
}

func transceivers(call *RTCCall) int {
	pc := call.peer()
	if pc == nil {
		return 0
	}
	return len(pc.GetTransceivers())
}

// heapPeak samples the heap in use until stop is called, and returns the
// highest figure.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-quit:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(quit); <-done; return peak.Load() }
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// A 7-byte MediaSectionsRequirement asks for 20,000 receive sections, then
// once more for one of each (they add up). Before the fix the unit added
// every one on its signalling goroutine (a 7.4 MB offer, 428 MB peak).
// Then the server offers 300 video sections of its own: refused whole.
func TestHostileMediaSectionsBounded(t *testing.T) {
	asked := make(chan struct{})
	f := newSigFake(t, func(c *sigConn) {
		if c.n != 1 {
			return
		}
		time.Sleep(300 * time.Millisecond) // the answer is in
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_MediaSectionsRequirement{MediaSectionsRequirement: &lkp.MediaSectionsRequirement{NumAudios: 10_000, NumVideos: 10_000}}})
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_MediaSectionsRequirement{MediaSectionsRequirement: &lkp.MediaSectionsRequirement{NumAudios: 1, NumVideos: 1}}})
		close(asked)
	})
	f.answerOffers = true
	conn, _ := sigConnector(t, f, nil, 10*time.Second)
	call := sigJoin(t, conn)
	before := transceivers(call)
	h0 := heapInUse()
	stop := heapPeak()
	t0 := time.Now()
	<-asked
	want := 2 + MaxRecvAudio + MaxRecvVideo // the unit's camera and microphone, and the receivers
	for transceivers(call) < want && time.Since(t0) < 10*time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // anything more would come now
	peak := stop()
	n := transceivers(call)
	t.Logf("20,000 receive sections asked: transceivers %d -> %d in %s; heap in use %.1f MB, peak %.1f MB",
		before, n, time.Since(t0).Round(time.Millisecond), float64(h0)/1e6, float64(peak)/1e6)
	if n > want {
		t.Fatalf("%d transceivers after the server asked for 20,000 sections, want at most %d (%d audio, %d video receivers and the unit's own two)",
			n, want, MaxRecvAudio, MaxRecvVideo)
	}

}

// Right after the join the server offers 300 video sections of its own:
// each would become a transceiver. The offer is refused whole.
func TestHostileServerOfferBounded(t *testing.T) {
	offered := make(chan struct{})
	f := newSigFake(t, func(c *sigConn) {
		defer close(offered)
		time.Sleep(500 * time.Millisecond) // the answer is in
		for i := 0; i < 300; i++ {
			if _, err := c.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
				t.Error(err)
				return
			}
		}
		offer, err := c.pc.CreateOffer(nil)
		if err == nil {
			err = c.pc.SetLocalDescription(offer)
		}
		if err == nil {
			err = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Offer{Offer: &lkp.SessionDescription{Type: "offer", Sdp: offer.SDP, Id: 7}}})
		}
		if err != nil {
			t.Error(err)
		}
	})
	conn, _ := sigConnector(t, f, nil, 10*time.Second)
	call := sigJoin(t, conn)
	<-offered
	time.Sleep(time.Second)
	want := 2 + MaxRecvAudio + MaxRecvVideo
	t.Logf("the server offered 300 video sections: %d transceivers", transceivers(call))
	if n := transceivers(call); n > want {
		t.Fatalf("%d transceivers after the server offered 300 video sections, want at most %d", n, want)
	}
}

// junkMessage is n bytes the unit would have to read whole before it could
// tell they are not a signalling message.
func junkMessage(n int) []byte { return bytes.Repeat([]byte{0xff}, n) }

// The server sends one 64 MB message mid-call (and would again on every
// resume). Before the fix the unit read each one whole (300 MB took it from
// 42 MB to 837 MB). It must refuse it at the frame header and end the call
// with a reason that says so, without resuming to fetch it again.
func TestHostileSignalMessageOverLimit(t *testing.T) {
	const size = 64 << 20
	junk := junkMessage(size)
	sent := make(chan struct{}, 16)
	f := newSigFake(t, func(c *sigConn) {
		if c.n == 1 {
			time.Sleep(300 * time.Millisecond)
		}
		_ = c.sendRaw(junk) // fails once the unit has closed the socket
		sent <- struct{}{}
	})
	conn, _ := sigConnector(t, f, nil, 3*time.Second)
	call := sigJoin(t, conn)
	h0 := heapInUse()
	stop := heapPeak()
	var reason error
	select {
	case reason = <-call.Ended():
	case <-time.After(15 * time.Second):
		t.Fatal("the call did not end within 15 s of a server that sends only oversized messages")
	}
	peak := stop()
	h1 := heapInUse()
	t.Logf("%d MB messages on %d connections: heap in use %.1f MB before, peak %.1f MB, %.1f MB after; the call ended: %v",
		size>>20, f.conns.Load(), float64(h0)/1e6, float64(peak)/1e6, float64(h1)/1e6, reason)
	if peak > h0+16<<20 {
		t.Errorf("heap in use peaked %.1f MB above the start (%d MB messages): the unit read them", float64(peak-h0)/1e6, size>>20)
	}
	if !errors.Is(reason, ErrMessageTooBig) || !strings.Contains(reason.Error(), "over the 1 MiB limit") {
		t.Errorf("the call ended with %v; want a reason naming the message size limit", reason)
	}
	if n := f.conns.Load(); n != 1 {
		t.Errorf("the unit connected %d times to a server that sends oversized messages; want once (no resume to fetch it again)", n)
	}
}

// TestJoinResponseSize: the largest legitimate message, a join response
// listing MaxOthers participants each with a camera (three simulcast
// layers) and a microphone, fits MaxSignalMessage five times over.
func TestJoinResponseSize(t *testing.T) {
	var ps []*lkp.ParticipantInfo
	for i := 0; i < MaxOthers; i++ {
		var layers []*lkp.VideoLayer
		for q, w := range []uint32{320, 640, 1280} {
			layers = append(layers, &lkp.VideoLayer{Quality: lkp.VideoQuality(q), Width: w, Height: w * 9 / 16, Bitrate: w * 1000, Ssrc: uint32(1000 + q)})
		}
		cam := &lkp.TrackInfo{Sid: fmt.Sprintf("TR_VCam%010d", i), Type: lkp.TrackType_VIDEO, Name: "camera", Source: lkp.TrackSource_CAMERA,
			Width: 1280, Height: 720, MimeType: "video/VP8", Mid: fmt.Sprint(2 * i), Stream: "camera",
			Codecs: []*lkp.SimulcastCodecInfo{{MimeType: "video/VP8", Mid: fmt.Sprint(2 * i), Cid: "e7c1a5b8-4f0d-4c3e-9c1b-2f6a1d3e5b7c", Layers: layers}}}
		mic := &lkp.TrackInfo{Sid: fmt.Sprintf("TR_AMic%010d", i), Type: lkp.TrackType_AUDIO, Name: "microphone", Source: lkp.TrackSource_MICROPHONE,
			MimeType: "audio/red", Mid: fmt.Sprint(2*i + 1), AudioFeatures: []lkp.AudioTrackFeature{lkp.AudioTrackFeature_TF_ECHO_CANCELLATION, lkp.AudioTrackFeature_TF_NOISE_SUPPRESSION},
			Codecs: []*lkp.SimulcastCodecInfo{{MimeType: "audio/red", Mid: fmt.Sprint(2*i + 1), Cid: "0b9d3f2e-6a1c-4e8b-8d7f-3c5e1a9b2d4f"}}}
		ps = append(ps, &lkp.ParticipantInfo{Sid: fmt.Sprintf("PA_%012d", i), Identity: fmt.Sprintf("patient-%08d@clinic.example", i), Name: "A Person With A Long Name",
			State: lkp.ParticipantInfo_ACTIVE, Tracks: []*lkp.TrackInfo{cam, mic}, Metadata: `{"role":"patient","lang":"nl"}`, JoinedAt: 1764633600,
			Version: 12, Permission: &lkp.ParticipantPermission{CanSubscribe: true, CanPublish: true, CanPublishData: true}, Region: "eu-west", IsPublisher: true,
			Attributes: map[string]string{"lk.agent.state": "idle"}})
	}
	jr := &lkp.SignalResponse{Message: &lkp.SignalResponse_Join{Join: &lkp.JoinResponse{
		Room:        &lkp.Room{Sid: "RM_0123456789", Name: "consult-0123456789", NumParticipants: MaxOthers + 1, Metadata: strings.Repeat("m", 200)},
		Participant: ps[0], OtherParticipants: ps, ServerVersion: "1.9.0", ServerRegion: "eu-west",
		IceServers: []*lkp.ICEServer{{Urls: []string{"turn:turn.clinic.example:443?transport=udp", "turns:turn.clinic.example:443?transport=tcp"}, Username: strings.Repeat("u", 64), Credential: strings.Repeat("c", 64)}},
	}}}
	b, err := proto.Marshal(jr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("join response with %d participants: %d bytes (%d per participant); limit %d", MaxOthers, len(b), len(b)/MaxOthers, MaxSignalMessage)
	if 5*len(b) > MaxSignalMessage {
		t.Fatalf("the largest legitimate join response (%d bytes) is more than a fifth of the limit", len(b))
	}
}

// A server that sends Leave{RESUME} right after every resume: before the
// fix the unit came back every 200 ms for ever (80 WebSocket connections
// in 20 s). The pauses must grow, and start short again once a connection
// has stayed up.
func TestHostileLeaveLoopBacksOff(t *testing.T) {
	old := stableAfter
	stableAfter = time.Second
	t.Cleanup(func() { stableAfter = old })
	var mu sync.Mutex
	arrived := map[int]time.Time{}
	left := map[int]time.Time{}
	const flappy = 5 // connections dropped at once; the next one stays up
	f := newSigFake(t, func(c *sigConn) {
		mu.Lock()
		arrived[c.n] = time.Now()
		mu.Unlock()
		switch {
		case c.n == 1:
			time.Sleep(300 * time.Millisecond)
		case c.n == flappy+1:
			time.Sleep(1500 * time.Millisecond) // stable
		case c.n > flappy+2:
			return
		default:
			time.Sleep(20 * time.Millisecond)
		}
		mu.Lock()
		left[c.n] = time.Now()
		mu.Unlock()
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Leave{Leave: &lkp.LeaveRequest{Action: lkp.LeaveRequest_RESUME, Reason: lkp.DisconnectReason_SERVER_SHUTDOWN}}})
	})
	conn, _ := sigConnector(t, f, nil, 15*time.Second)
	call := sigJoin(t, conn)
	deadline := time.Now().Add(20 * time.Second)
	for f.conns.Load() < flappy+3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var gaps []time.Duration
	for n := 1; n <= flappy+1; n++ {
		if arrived[n+1].IsZero() {
			t.Fatalf("connection %d never came (resumes %d)", n+1, call.Resumes())
		}
		gaps = append(gaps, arrived[n+1].Sub(left[n]).Round(time.Millisecond))
	}
	t.Logf("pause before each new connection after a leave: %v (the last after a connection that stayed up %s)", gaps, 1500*time.Millisecond)
	for i := 1; i < flappy; i++ {
		if gaps[i] < gaps[i-1] {
			t.Errorf("pause %d (%s) shorter than the one before (%s): no growing backoff", i+1, gaps[i], gaps[i-1])
		}
	}
	if g := gaps[flappy-1]; g < 800*time.Millisecond {
		t.Errorf("after %d leaves in a row the unit came back within %s; want at least 800 ms", flappy, g)
	}
	if g := gaps[flappy]; g > 600*time.Millisecond {
		t.Errorf("after a connection that stayed up past %s the unit waited %s; want the short first pause again", stableAfter, g)
	}
}

// publishers counts the goroutines waiting to publish a held-back track.
func publishers() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "livekit.(*RTCCall).publishWhenOpen(")
}

// The server makes the unit rejoin as a new participant (Leave{RECONNECT})
// three times while the gate is shut. Before the fix each rejoin left a
// publishWhenOpen goroutine holding its closed peer connection until the
// gate next opened.
func TestRejoinsWithGateShutLeakNothing(t *testing.T) {
	const rejoins = 3
	f := newSigFake(t, func(c *sigConn) {
		if c.jr.GetReconnect() || c.n > rejoins {
			return
		}
		time.Sleep(500 * time.Millisecond) // media up
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Leave{Leave: &lkp.LeaveRequest{Action: lkp.LeaveRequest_RECONNECT, Reason: lkp.DisconnectReason_STATE_MISMATCH}}})
	})
	conn, g := sigConnector(t, f, nil, 15*time.Second)
	call := sigJoin(t, conn)
	g.Set(gate.State{}) // PRIVACY: shut for the whole test
	p0 := publishers()
	deadline := time.Now().Add(60 * time.Second)
	for call.Rejoins() < rejoins && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if call.Rejoins() < rejoins {
		t.Fatalf("%d rejoins within 60 s, want %d", call.Rejoins(), rejoins)
	}
	time.Sleep(200 * time.Millisecond)
	n := publishers()
	t.Logf("%d rejoins with the gate shut: %d goroutines waiting to publish (before: %d), %d goroutines in all", rejoins, n, p0, runtime.NumGoroutine())
	if n > 1 {
		t.Fatalf("%d goroutines waiting to publish after %d rejoins with the gate shut; want 1 (the current peer connection's)", n, rejoins)
	}
}

// A server that refuses the WebSocket with a body of terminal escapes,
// forged log lines and the unit's own token: the fault reason quotes it
// printable, on one line, short, without the token.
func TestHandshakeBodyCleaned(t *testing.T) {
	f := newSigFake(t, nil)
	f.refuse = http.StatusBadRequest
	f.refuseBody = "\x1b[2J\x1b[31mroom closed\r\ntime=2026-12-02 level=ERROR msg=\"shutter open\"\x07\x00" + strings.Repeat("x", 600)
	conn, _ := sigConnector(t, f, nil, 5*time.Second)
	mux := http.NewServeMux()
	mux.HandleFunc("/rtc/v1", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(f.refuse)
		// A body that echoes the unit's own token back, after the escapes.
		_, _ = io.WriteString(w, strings.Replace(f.refuseBody, "room closed", "room closed for "+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), 1))
	})
	f.srv.Config.Handler = mux
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err == nil {
		_ = call.Leave(context.Background())
		t.Fatal("joined a server that refuses the WebSocket")
	}
	msg := err.Error()
	t.Logf("join: %q", msg)
	if strings.ContainsAny(msg, "\x1b\r\n\x07\x00") {
		t.Errorf("the fault reason carries control characters from the server's body: %q", msg)
	}
	if strings.Contains(msg, "eyJ") {
		t.Errorf("the fault reason quotes the token: %q", msg)
	}
	if len(msg) > 400 {
		t.Errorf("the fault reason is %d bytes long: it quotes too much of the server's body", len(msg))
	}
}

// A server announces 5,000 participants that nobody will ever see. Before
// the fix the unit tracked every one and logged a line for each.
func TestFakeParticipantsBounded(t *testing.T) {
	h := &countingHandler{}
	f := newSigFake(t, func(c *sigConn) {
		if c.n != 1 {
			return
		}
		var ps []*lkp.ParticipantInfo
		for i := 0; i < 5000; i++ {
			ps = append(ps, &lkp.ParticipantInfo{Sid: fmt.Sprintf("PA_fake%d", i), Identity: fmt.Sprintf("fake-%d", i), State: lkp.ParticipantInfo_ACTIVE})
			if len(ps) == 500 {
				_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Update{Update: &lkp.ParticipantUpdate{Participants: ps}}})
				ps = nil
			}
		}
		_ = c.send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Update{Update: &lkp.ParticipantUpdate{Participants: []*lkp.ParticipantInfo{{Sid: "PA_last", Identity: "last", State: lkp.ParticipantInfo_ACTIVE}}}}})
	})
	conn, _ := sigConnector(t, f, h, 10*time.Second)
	call := sigJoin(t, conn)
	deadline := time.Now().Add(10 * time.Second)
	for call.Others() < MaxOthers && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	lines := 0
	h.mu.Lock()
	for m, n := range h.msgs {
		if strings.HasPrefix(m, "far end") {
			lines += n
		}
	}
	h.mu.Unlock()
	t.Logf("5,000 fake participants: the unit tracks %d, wrote %d far-end log lines", call.Others(), lines)
	if call.Others() > MaxOthers {
		t.Errorf("the unit tracks %d far-end participants, want at most %d", call.Others(), MaxOthers)
	}
	if lines > 2*logBurst {
		t.Errorf("%d far-end log lines for one flood, want at most %d", lines, 2*logBurst)
	}
}
