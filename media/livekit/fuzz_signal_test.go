package livekit

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/gorilla/websocket"
	lkp "github.com/livekit/protocol/livekit"
	"github.com/pion/webrtc/v4"
	"google.golang.org/protobuf/proto"

	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/gate"
)

var (
	sinkOnce sync.Once
	sinkURL  string
)

// sinkServer is a /rtc/v1 that takes the unit's messages and says nothing:
// the other end of the fuzzed call's signalling.
func sinkServer() string {
	sinkOnce.Do(func() {
		up := websocket.Upgrader{}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ws, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer ws.Close()
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		}))
		sinkURL = srv.URL // lives as long as the test process
	})
	return sinkURL
}

// fuzzCall is a call in progress as the signalling handler sees it: a peer
// connection publishing a camera and a microphone, and a live WebSocket.
func fuzzCall(t *testing.T) (*RTCCall, func()) {
	u := sinkServer()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	conn := &RTCConnector{base: &base{cfg: Config{URL: u, Room: "r", Identity: "unit-1"}, gate: gate.New(), log: log}}
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []webrtc.RTPCodecCapability{{MimeType: webrtc.MimeTypeOpus}, {MimeType: webrtc.MimeTypeVP8}} {
		tr, err := webrtc.NewTrackLocalStaticSample(c, "t", "unit")
		if err == nil {
			_, err = pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(u, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(MaxSignalMessage)
	sig := &signal{ws: ws, done: make(chan struct{})}
	c := &RTCCall{conn: conn, salt: []byte("salt"), log: log, others: map[string]string{}, presence: make(chan media.Presence, 64),
		pc: pc, sig: sig, sid: "PA_unit"}
	c.init(func() {})
	return c, func() {
		c.finish(nil, false)
		_ = ws.Close()
		_ = pc.Close()
	}
}

// FuzzSignalHandler hands random SignalResponse bytes, three times over (a
// server's messages add up), to the handler of a call in progress: it never
// panics, and whatever is asked the unit keeps at most the receive
// sections and participants it can use.
func FuzzSignalHandler(f *testing.F) {
	add := func(m *lkp.SignalResponse) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	add(&lkp.SignalResponse{Message: &lkp.SignalResponse_MediaSectionsRequirement{MediaSectionsRequirement: &lkp.MediaSectionsRequirement{NumAudios: 20000, NumVideos: 20000}}})
	add(&lkp.SignalResponse{Message: &lkp.SignalResponse_Update{Update: &lkp.ParticipantUpdate{Participants: []*lkp.ParticipantInfo{
		{Sid: "PA_a", Identity: "a", State: lkp.ParticipantInfo_ACTIVE}, {Sid: "PA_b", Identity: "b", State: lkp.ParticipantInfo_DISCONNECTED}}}}})
	add(&lkp.SignalResponse{Message: &lkp.SignalResponse_Trickle{Trickle: &lkp.TrickleRequest{CandidateInit: `{"candidate":"candidate:1 1 udp 2130706431 127.0.0.1 9 typ host","sdpMid":"0"}`}}})
	add(&lkp.SignalResponse{Message: &lkp.SignalResponse_Leave{Leave: &lkp.LeaveRequest{Action: lkp.LeaveRequest_RECONNECT}}})
	add(&lkp.SignalResponse{Message: &lkp.SignalResponse_Leave{Leave: &lkp.LeaveRequest{Action: lkp.LeaveRequest_DISCONNECT, Reason: lkp.DisconnectReason_ROOM_DELETED}}})
	add(&lkp.SignalResponse{Message: &lkp.SignalResponse_RefreshToken{RefreshToken: "tok"}})
	add(&lkp.SignalResponse{Message: &lkp.SignalResponse_PongResp{PongResp: &lkp.Pong{}}})
	// A server offer with more video sections than the unit keeps, and an
	// answer to an offer the unit never made.
	if pc, err := webrtc.NewPeerConnection(webrtc.Configuration{}); err == nil {
		for i := 0; i < 12; i++ {
			_, _ = pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		}
		if o, err := pc.CreateOffer(nil); err == nil {
			add(&lkp.SignalResponse{Message: &lkp.SignalResponse_Offer{Offer: &lkp.SessionDescription{Type: "offer", Sdp: o.SDP, Id: 3}}})
			add(&lkp.SignalResponse{Message: &lkp.SignalResponse_Answer{Answer: &lkp.SessionDescription{Type: "answer", Sdp: strings.Replace(o.SDP, "a=sendonly", "a=recvonly", -1)}}})
		}
		_ = pc.Close()
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r lkp.SignalResponse
		if proto.Unmarshal(data, &r) != nil {
			return
		}
		c, done := fuzzCall(t)
		defer done()
		sig := c.sig
		for i := 0; i < 3; i++ {
			c.handle(sig, &r)
		}
		if n, limit := len(c.pc.GetTransceivers()), 2+MaxRecvAudio+MaxRecvVideo; n > limit {
			t.Fatalf("%d transceivers after a %T three times; at most %d", n, r.GetMessage(), limit)
		}
		if n := c.Others(); n > MaxOthers {
			t.Fatalf("%d far-end participants tracked; at most %d", n, MaxOthers)
		}
	})
}
