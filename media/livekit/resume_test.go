package livekit_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// tcpCutter forwards TCP to the server and can break every connection at
// once, as a NAT or proxy that forgets its state does: the signalling
// WebSocket drops while the media path stays up.
type tcpCutter struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newTCPCutter(t *testing.T, to string) *tcpCutter {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &tcpCutter{l: l}
	t.Cleanup(func() { l.Close(); c.cut() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	return c
}

func (c *tcpCutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.conns {
		k.Close()
	}
	c.conns = nil
}

// The signalling connection breaks mid-call: the unit resumes the session as
// the same participant (join request with reconnect and its SID), media
// keeps flowing, and the far end never sees the unit leave.
func TestRTCSignallingResumes(t *testing.T) {
	lk := farend.StartLiveKit(t)
	proxy := newTCPCutter(t, fmt.Sprintf("127.0.0.1:%d", lk.HTTPPort))
	via := &farend.LiveKit{URL: "http://" + proxy.l.Addr().String(), APIKey: lk.APIKey, APISecret: lk.APISecret}
	call, _ := joinRTC(t, via, "resume-room", nil, livekit.RTCOptions{})
	fe := farend.StartFarEnd(t, lk, "resume-room", "patient", farend.Publish(), farend.ReportInterval(100*time.Millisecond))
	var pr presence
	watch := func(d time.Duration, what string, cond func(farend.FarEndStats) bool) farend.FarEndStats {
		t.Helper()
		return farWaitT(t, fe, what, d, func(s farend.FarEndStats) bool { pr.observe(s); return cond(s) })
	}
	watch(20*time.Second, "sees the unit", func(s farend.FarEndStats) bool { return s.FPS >= 20 })
	for i := 0; i < 2; i++ {
		proxy.cut()
		deadline := time.Now().Add(10 * time.Second)
		for call.Resumes() <= i {
			if time.Now().After(deadline) {
				t.Fatalf("no resume within 10 s of signalling break %d", i+1)
			}
			time.Sleep(50 * time.Millisecond)
		}
		watch(10*time.Second, "still sees the unit", func(s farend.FarEndStats) bool { return s.FPS >= 15 })
	}
	// The session works after the resume: a newcomer is still announced.
	farend.StartFarEnd(t, lk, "resume-room", "interpreter", farend.Publish())
	for n := 0; n < 2; n++ {
		if p := nextPresence(t, call, 20*time.Second); n == 1 && (!p.Joined || p.Others != 2) {
			t.Fatalf("after resume: %+v", p)
		}
	}
	if pr.gone() {
		t.Fatal("the far end saw the unit leave")
	}
	select {
	case err := <-call.Ended():
		t.Fatalf("the call ended: %v", err)
	default:
	}
	ps, _ := lk.Participants(context.Background(), "resume-room")
	t.Logf("room after 2 signalling breaks: %v (resumes %d)", ps, call.Resumes())
}

// The LiveKit server freezes for 3 s (SIGSTOP, then SIGCONT: to everyone in
// the call a 3 s network break, with the server's state kept). The call
// resumes; the far end never sees the unit leave, and each side gets the
// other's picture back. This test's own server: it is the one frozen.
func TestRTCServerPauseResumes(t *testing.T) {
	lk := farend.StartLiveKit(t)
	call, _ := joinRTC(t, lk, "pause-room", nil, livekit.RTCOptions{})
	w := startTwoWay(t, lk, "pause-room", call)
	fe, who := w.fe, w.who
	watch := func(d time.Duration, what string, cond func(farend.FarEndStats) bool) farend.FarEndStats {
		t.Helper()
		return w.watch(t, d, what, cond)
	}

	if err := lk.Pause(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	s := watch(20*time.Second, "the unit's picture back after the pause", func(s farend.FarEndStats) bool {
		return s.ReceivedAt.After(back) && s.LastFrameAt.After(back) && s.FPS >= 15
	})
	waitPlayout(t, call, "the patient's picture back on the unit", 20*time.Second, func(s playout.Stats) bool {
		v := videoFrom(s, who)
		return v.FPS >= 15 && v.LastFrameAt.After(back)
	})
	// A leave the server decides on late (a timeout that ran while it was
	// frozen) would show within these seconds.
	for settle := time.Now().Add(5 * time.Second); time.Now().Before(settle); {
		watch(5*time.Second, "report", func(farend.FarEndStats) bool { return true })
	}
	t.Logf("server paused 3 s: the far end's picture back %s after SIGCONT; ICE restarts %d, resumes %d, rejoins %d; far end saw leave: %v",
		s.ReceivedAt.Sub(back).Round(time.Millisecond), call.Restarts(), call.Resumes(), call.Rejoins(), fe.Stats().ParticipantsLeft)
	if w.pr.gone() {
		t.Fatalf("the far end saw the unit leave (participants left: %v)", fe.Stats().ParticipantsLeft)
	}
	if call.Rejoins() != 0 {
		t.Fatalf("the unit rejoined as a new participant (%d), not resumed", call.Rejoins())
	}
	select {
	case err := <-call.Ended():
		t.Fatalf("the call ended: %v", err)
	default:
	}
	if ps, _ := lk.Participants(context.Background(), "pause-room"); !slices.Contains(ps, "unit-1") {
		t.Fatalf("unit not in the room after the pause: %v", ps)
	}
}
