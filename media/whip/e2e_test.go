package whip

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

// pionWHIPServer is a minimal in-process WHIP server on pion: it answers
// offers with its own PeerConnection (loopback only), counts RTP packets,
// supports trickle/ICE-restart PATCH and DELETE.
type pionWHIPServer struct {
	t       *testing.T
	mu      sync.Mutex
	pc      *webrtc.PeerConnection
	etag    int
	packets atomic.Int64
	deleted chan struct{}
	auth    atomic.Value // last Authorization header
	restart atomic.Int64
}

func (s *pionWHIPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.auth.Store(r.Header.Get("Authorization"))
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/whip/v1":
		pc, err := loopbackAPI(s.t).NewPeerConnection(webrtc.Configuration{})
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
			for {
				if _, _, err := tr.ReadRTP(); err != nil {
					return
				}
				s.packets.Add(1)
			}
		})
		if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: string(body)}); err != nil {
			_ = pc.Close()
			http.Error(w, "bad offer", http.StatusBadRequest)
			return
		}
		ans, err := pc.CreateAnswer(nil)
		if err != nil {
			_ = pc.Close()
			http.Error(w, "no answer", 500)
			return
		}
		done := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(ans); err != nil {
			_ = pc.Close()
			http.Error(w, "no answer", 500)
			return
		}
		<-done
		s.mu.Lock()
		s.pc = pc
		s.etag = 1
		s.mu.Unlock()
		w.Header().Set("Location", "/whip/v1/room-unit-1")
		w.Header().Set("ETag", `"1"`)
		w.Header().Set("Accept-Patch", "application/trickle-ice-sdpfrag")
		w.Header().Set("Content-Type", "application/sdp")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, pc.LocalDescription().SDP)
	case r.Method == http.MethodPatch && r.URL.Path == "/whip/v1/room-unit-1":
		s.mu.Lock()
		defer s.mu.Unlock()
		if r.Header.Get("If-Match") != "*" {
			w.WriteHeader(http.StatusNoContent) // trickle: candidates are ignored here
			return
		}
		// ICE restart: apply the client's new ICE credentials as a new
		// remote offer, answer, and send back our new fragment.
		frag := parseICEInfo(string(body))
		offer := webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: patchAnswer(s.pc.RemoteDescription().SDP, frag)}
		if err := s.pc.SetRemoteDescription(offer); err != nil {
			s.t.Errorf("server: restart offer: %v", err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		ans, err := s.pc.CreateAnswer(nil)
		if err != nil {
			s.t.Errorf("server: restart answer: %v", err)
			w.WriteHeader(500)
			return
		}
		done := webrtc.GatheringCompletePromise(s.pc)
		if err := s.pc.SetLocalDescription(ans); err != nil {
			s.t.Errorf("server: set restart answer: %v", err)
			w.WriteHeader(500)
			return
		}
		<-done
		info := parseICEInfo(s.pc.LocalDescription().SDP)
		out, err := buildFrag(info, info.candidates, true)
		if err != nil {
			s.t.Errorf("server: frag: %v", err)
		}
		s.etag++
		s.restart.Add(1)
		w.Header().Set("ETag", `"2"`)
		w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, out)
	case r.Method == http.MethodDelete && r.URL.Path == "/whip/v1/room-unit-1":
		s.mu.Lock()
		if s.pc != nil {
			_ = s.pc.Close()
		}
		s.mu.Unlock()
		close(s.deleted)
		w.WriteHeader(http.StatusOK)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

// waitPackets waits until the server has received more than n packets.
func (s *pionWHIPServer) waitPackets(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.packets.Load() <= n {
		if time.Now().After(deadline) {
			t.Fatalf("server received %d RTP packets, want > %d", s.packets.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEndToEndPion(t *testing.T) {
	srvState := &pionWHIPServer{t: t, deleted: make(chan struct{})}
	srv := httptest.NewServer(srvState)
	defer srv.Close()
	defer func() {
		srvState.mu.Lock()
		if srvState.pc != nil {
			_ = srvState.pc.Close()
		}
		srvState.mu.Unlock()
	}()

	c := newClient(t, Config{Endpoint: srv.URL + "/whip/v1"})
	pc, track := newPublisherPC(t)

	ctx := ctxT(t, 10*time.Second)
	sess, err := c.Publish(ctx, pc)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got, _ := srvState.auth.Load().(string); got != "Bearer "+testToken {
		t.Errorf("server saw Authorization %q", got)
	}
	if err := sess.WaitConnected(ctx); err != nil {
		t.Fatalf("WaitConnected: %v", err)
	}

	// Feed VP8 samples until the test ends.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		frame := make([]byte, 300)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = track.WriteSample(media.Sample{Data: frame, Duration: 10 * time.Millisecond})
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	srvState.waitPackets(t, 0)
	srvState.mu.Lock()
	serverState := srvState.pc.ConnectionState()
	srvState.mu.Unlock()
	if serverState != webrtc.PeerConnectionStateConnected {
		t.Errorf("server connection state %s", serverState)
	}

	// Trickle (server accepts and ignores) and an ICE restart: media must
	// keep flowing afterwards.
	if err := sess.Trickle(ctx, webrtc.ICECandidateInit{}); err != nil {
		t.Errorf("Trickle: %v", err)
	}
	if err := sess.RestartICE(ctx); err != nil {
		t.Fatalf("RestartICE: %v", err)
	}
	if srvState.restart.Load() != 1 || sess.ETag() != `"2"` {
		t.Errorf("restart not seen by server or ETag not updated (%q)", sess.ETag())
	}
	if err := sess.WaitConnected(ctx); err != nil {
		t.Fatalf("WaitConnected after restart: %v", err)
	}
	before := srvState.packets.Load()
	srvState.waitPackets(t, before+5)

	if err := sess.Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	select {
	case <-srvState.deleted:
	case <-time.After(2 * time.Second):
		t.Fatal("server did not see DELETE")
	}
	_ = pc.Close()
}
