package livekit

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
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
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"github.com/pion/webrtc/v4"
	"google.golang.org/protobuf/proto"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/icepolicy"
	"github.com/konsult/konsult/media/playout"
)

// Tests of a hostile LiveKit server handing out ICE servers and candidates
// (issue 16, items 3 and 8): a fake /rtc/v1 that joins the unit, answers
// its offer with a real pion answer whose candidates it chooses, and
// trickles more.

// udpSinks are UDP sockets on loopback that count what reaches them: the
// unit's connectivity checks and TURN allocations.
type udpSinks struct {
	conns []*net.UDPConn
	mu    sync.Mutex
	hit   map[int]int
}

func newUDPSinks(t *testing.T, n int) *udpSinks {
	t.Helper()
	s := &udpSinks{hit: map[int]int{}}
	for i := 0; i < n; i++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		s.conns = append(s.conns, c)
		go func(i int) {
			buf := make([]byte, 1500)
			for {
				if _, _, err := c.ReadFromUDP(buf); err != nil {
					return
				}
				s.mu.Lock()
				s.hit[i]++
				s.mu.Unlock()
			}
		}(i)
	}
	return s
}

func (s *udpSinks) port(i int) int { return s.conns[i].LocalAddr().(*net.UDPAddr).Port }

func (s *udpSinks) reached() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.hit)
}

// hostileLK is what the fake server hands out.
type hostileLK struct {
	iceServers []*lkp.ICEServer
	answerCands,
	trickleCands []string // candidate lines without "a="
}

func candLine(i, port int) string {
	return fmt.Sprintf("candidate:%d 1 udp 2130706431 127.0.0.1 %d typ host", 100+i, port)
}

// serve is the fake /rtc/v1.
func (h *hostileLK) serve(t *testing.T) http.Handler {
	up := websocket.Upgrader{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, err := base64.URLEncoding.DecodeString(r.URL.Query().Get("join_request"))
		var wrapped lkp.WrappedJoinRequest
		var jr lkp.JoinRequest
		if err != nil || proto.Unmarshal(raw, &wrapped) != nil || proto.Unmarshal(wrapped.GetJoinRequest(), &jr) != nil {
			http.Error(w, "bad join request", http.StatusBadRequest)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		send := func(m *lkp.SignalResponse) {
			b, _ := proto.Marshal(m)
			_ = ws.WriteMessage(websocket.BinaryMessage, b)
		}
		send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Join{Join: &lkp.JoinResponse{
			Participant: &lkp.ParticipantInfo{Sid: "PA_unit", Identity: "unit-1"},
			IceServers:  h.iceServers, PingInterval: 5, PingTimeout: 30,
		}}})
		ans, err := fakeAnswer(jr.GetPublisherOffer().GetSdp(), h.answerCands)
		if err != nil {
			t.Errorf("fake server: %v", err)
			return
		}
		send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Answer{Answer: &lkp.SessionDescription{Type: "answer", Sdp: ans, Id: 1}}})
		for _, c := range h.trickleCands {
			b, _ := json.Marshal(webrtc.ICECandidateInit{Candidate: c})
			send(&lkp.SignalResponse{Message: &lkp.SignalResponse_Trickle{Trickle: &lkp.TrickleRequest{CandidateInit: string(b), Target: lkp.SignalTarget_PUBLISHER}}})
		}
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})
}

// fakeAnswer answers offer with pion, its own candidates replaced by cands
// (so ICE never connects and keeps checking every pair).
func fakeAnswer(offer string, cands []string) (string, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return "", err
	}
	se := webrtc.SettingEngine{}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	pc, err := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(se)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return "", err
	}
	defer pc.Close()
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", err
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		return "", err
	}
	var out []string
	done := false
	for _, l := range strings.Split(ans.SDP, "\r\n") {
		if l == "" || strings.HasPrefix(l, "a=candidate:") || l == "a=end-of-candidates" {
			continue
		}
		out = append(out, l)
		if !done && strings.HasPrefix(l, "a=ice-pwd:") {
			for _, c := range cands {
				out = append(out, "a="+c)
			}
			done = true
		}
	}
	return strings.Join(out, "\r\n") + "\r\n", nil
}

// startHostile serves h and returns a connector joined to it. remote
// serves it over TLS as https://example.com (a server that is not on the
// local network, so the strict ICE policy applies); else it is
// http://127.0.0.1 (a server on the unit: internal addresses allowed).
func startHostile(t *testing.T, h *hostileLK, remote bool, n ...transport.Net) *RTCConnector {
	t.Helper()
	var srv *httptest.Server
	mux := http.NewServeMux()
	mux.Handle("/rtc/v1", h.serve(t))
	if remote {
		srv = httptest.NewTLSServer(mux)
	} else {
		srv = httptest.NewServer(mux)
	}
	t.Cleanup(srv.Close)
	u := srv.URL
	if remote {
		u = "https://example.com"
	}
	cfg := Config{URL: u, Room: "r", Identity: "unit-1", APIKey: "k", APISecret: "secret-secret-secret-secret-secret"}
	if len(n) > 0 {
		cfg.Net = n[0]
	}
	conn, err := NewRTC(cfg,
		Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000,
			Camera: capture.TestDevice, Microphone: capture.TestDevice},
		RTCOptions{Speaker: playout.DeviceNull}, gate.New(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if remote {
		addr := srv.Listener.Addr().String()
		var d net.Dialer
		conn.dialer.NetDialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}
		conn.dialer.TLSClientConfig = &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	}
	return conn
}

// joinFor joins and gives up after d (the fake server never lets ICE
// connect); it returns the peak goroutine count seen meanwhile.
func joinFor(t *testing.T, conn *RTCConnector, d time.Duration) int {
	t.Helper()
	var peak atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			if n := int64(runtime.NumGoroutine()); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	call, err := conn.Join(ctx)
	close(stop)
	if err == nil {
		_ = call.Leave(context.Background())
		t.Fatal("joined a server that never lets ICE connect")
	}
	t.Logf("join: %v", err)
	return int(peak.Load())
}

// TestHostileJoinICEServersBounded: the join response names 8,000 TURN
// URLs. Before the fix the unit opened a socket and goroutines for every
// one before its first gathering.
func TestHostileJoinICEServersBounded(t *testing.T) {
	sinks := newUDPSinks(t, 40)
	h := &hostileLK{}
	const n = 8000
	for i := 0; i < n; i++ {
		port := 20000 + i
		if i < len(sinks.conns) {
			port = sinks.port(i)
		}
		h.iceServers = append(h.iceServers, &lkp.ICEServer{Urls: []string{fmt.Sprintf("turn:127.0.0.1:%d?transport=udp", port)}, Username: "u", Credential: "c"})
	}
	conn := startHostile(t, h, false)
	runtime.GC()
	g0 := runtime.NumGoroutine()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	peak := joinFor(t, conn, 4*time.Second)
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	t.Logf("%d TURN URLs in the join response: goroutines %d -> peak %d, heap in use %.1f -> %.1f MB, %d of 40 TURN sinks reached",
		n, g0, peak, float64(m0.HeapInuse)/1e6, float64(m1.HeapInuse)/1e6, sinks.reached())
	if r := sinks.reached(); r > icepolicy.MaxURLs {
		t.Errorf("the unit contacted %d server-named TURN addresses, want at most %d", r, icepolicy.MaxURLs)
	}
	if peak-g0 > 600 {
		t.Errorf("goroutines peaked %d above the start, want a bounded few hundred", peak-g0)
	}
}

// TestHostileCandidatesBounded: the answer names 20 addresses and 20 more
// are trickled: the unit checked all 40. At most icepolicy.MaxCandidates.
func TestHostileCandidatesBounded(t *testing.T) {
	sinks := newUDPSinks(t, 40)
	h := &hostileLK{}
	for i := range sinks.conns {
		if i < 20 {
			h.answerCands = append(h.answerCands, candLine(i, sinks.port(i)))
		} else {
			h.trickleCands = append(h.trickleCands, candLine(i, sinks.port(i)))
		}
	}
	joinFor(t, startHostile(t, h, false), 4*time.Second)
	r := sinks.reached()
	t.Logf("40 server candidates (20 in the answer, 20 trickled): %d addresses checked", r)
	if r == 0 {
		t.Fatal("no candidate was checked at all: the test does not see the unit's checks")
	}
	if r > icepolicy.MaxCandidates {
		t.Errorf("the unit sent checks to %d server-named addresses, want at most %d", r, icepolicy.MaxCandidates)
	}
}

// TestHostileInternalTargetsRefused: a server that is not on the local
// network names loopback TURN servers and candidates: nothing may reach
// them.
func TestHostileInternalTargetsRefused(t *testing.T) {
	sinks := newUDPSinks(t, 6)
	h := &hostileLK{
		iceServers: []*lkp.ICEServer{
			{Urls: []string{fmt.Sprintf("turn:127.0.0.1:%d?transport=udp", sinks.port(0)), fmt.Sprintf("stun:127.0.0.1:%d", sinks.port(1))}, Username: "u", Credential: "c"},
			{Urls: []string{fmt.Sprintf("turn:localhost:%d?transport=udp", sinks.port(2))}, Username: "u", Credential: "c"},
		},
		answerCands:  []string{candLine(3, sinks.port(3)), candLine(4, sinks.port(4))},
		trickleCands: []string{candLine(5, sinks.port(5))},
	}
	joinFor(t, startHostile(t, h, true), 4*time.Second)
	sinks.mu.Lock()
	defer sinks.mu.Unlock()
	if len(sinks.hit) != 0 {
		t.Errorf("a remote server aimed the unit at its own loopback: sinks reached %v (0-2 TURN/STUN, 3-5 candidates)", sinks.hit)
	}
}

// fakeDNS is the system's network with one more name: internal.test
// resolves to loopback, as a server's own DNS name may point anywhere.
type fakeDNS struct{ *stdnet.Net }

func (f fakeDNS) ResolveUDPAddr(network, address string) (*net.UDPAddr, error) {
	return f.Net.ResolveUDPAddr(network, strings.Replace(address, "internal.test", "127.0.0.1", 1))
}

func (f fakeDNS) ResolveTCPAddr(network, address string) (*net.TCPAddr, error) {
	return f.Net.ResolveTCPAddr(network, strings.Replace(address, "internal.test", "127.0.0.1", 1))
}

// TestHostileTURNNameResolvingInternalRefused: the literal checks cannot
// see where a name points; a TURN or STUN server whose name resolves to an
// internal address is refused once resolved.
func TestHostileTURNNameResolvingInternalRefused(t *testing.T) {
	sinks := newUDPSinks(t, 2)
	h := &hostileLK{iceServers: []*lkp.ICEServer{{Urls: []string{
		fmt.Sprintf("turn:internal.test:%d?transport=udp", sinks.port(0)), fmt.Sprintf("stun:internal.test:%d", sinks.port(1)),
	}, Username: "u", Credential: "c"}}}
	std, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	joinFor(t, startHostile(t, h, true, fakeDNS{std}), 3*time.Second)
	sinks.mu.Lock()
	defer sinks.mu.Unlock()
	if len(sinks.hit) != 0 {
		t.Errorf("a server's name for a loopback address reached it: sinks %v (0 TURN, 1 STUN)", sinks.hit)
	}
}
