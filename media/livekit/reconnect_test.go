package livekit_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/konsult/konsult/media/farend"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
)

// cutNet is the system's network with a switch that drops every UDP packet
// in both directions, as a pulled cable or a Wi-Fi drop-out does: sockets
// stay open, nothing gets through.
type cutNet struct {
	transport.Net
	cut *atomic.Bool
}

func (n cutNet) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	c, err := n.Net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	return cutConn{c, n.cut}, nil
}

type cutConn struct {
	transport.UDPConn
	cut *atomic.Bool
}

func (c cutConn) WriteTo(p []byte, a net.Addr) (int, error) {
	if c.cut.Load() {
		return len(p), nil
	}
	return c.UDPConn.WriteTo(p, a)
}

func (c cutConn) WriteToUDP(p []byte, a *net.UDPAddr) (int, error) {
	if c.cut.Load() {
		return len(p), nil
	}
	return c.UDPConn.WriteToUDP(p, a)
}

func (c cutConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, a, err := c.UDPConn.ReadFrom(p)
		if err != nil || !c.cut.Load() {
			return n, a, err
		}
	}
}

func (c cutConn) ReadFromUDP(p []byte) (int, *net.UDPAddr, error) {
	for {
		n, a, err := c.UDPConn.ReadFromUDP(p)
		if err != nil || !c.cut.Load() {
			return n, a, err
		}
	}
}

func startPublisher(t *testing.T, lk *farend.LiveKit, room string, n transport.Net, grace time.Duration) (*livekit.Call, *gate.Gate) {
	t.Helper()
	g := gate.New()
	conn, err := livekit.NewWHIP(livekit.Config{
		URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret,
		Net: n, DisconnectGrace: grace,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000},
		g, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = call.Leave(ctx)
	})
	g.Set(gate.State{Video: true, Audio: true})
	return call, g
}

// presence watches every report of the far end and remembers whether the
// unit was ever missing from its room once it had been seen.
type presence struct {
	mu         sync.Mutex
	seen, Gone bool
}

func (p *presence) observe(s farend.FarEndStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := slices.Contains(s.RemoteParticipants, "unit-1")
	if in {
		p.seen = true
	} else if p.seen {
		p.Gone = true
	}
}

func (p *presence) gone() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Gone
}

// A network break shorter than the grace time: the far end's picture
// freezes and comes back; the far end never sees the unit leave the room,
// and the call does not end.
func TestNetworkBreakResumes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ time.Duration
	}{
		{"3s break, ICE comes back by itself or by restart", 3 * time.Second},
		{"7s break, past ICE failed: ICE restart", 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lk := farend.StartLiveKit(t)
			var cut atomic.Bool
			sys, err := stdnet.NewNet()
			if err != nil {
				t.Fatal(err)
			}
			call, _ := startPublisher(t, lk, "break-room", cutNet{sys, &cut}, 15*time.Second)
			fe := farend.StartFarEnd(t, lk, "break-room", "patient", farend.ReportInterval(100*time.Millisecond))
			var p presence
			watch := func(d time.Duration, what string, cond func(farend.FarEndStats) bool) farend.FarEndStats {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), d)
				defer cancel()
				s, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { p.observe(s); return cond(s) })
				if err != nil {
					t.Fatalf("far end: %s: %v; last %s", what, err, fe.Stats())
				}
				return s
			}
			before := watch(20*time.Second, "sees the unit's video", func(s farend.FarEndStats) bool { return s.FPS >= 20 })

			cut.Store(true)
			t0 := time.Now()
			frozen := watch(tc.break_+5*time.Second, "picture freezes during the break", func(s farend.FarEndStats) bool { return s.FPS < 5 })
			for time.Since(t0) < tc.break_ {
				watch(tc.break_, "report during the break", func(farend.FarEndStats) bool { return true })
			}
			cut.Store(false)
			restored := time.Now()
			watch(30*time.Second, "a new frame after the break", func(s farend.FarEndStats) bool {
				return s.VideoFramesDecoded > frozen.VideoFramesDecoded
			})
			resumed := time.Since(restored)
			after := watch(30*time.Second, "picture back at full rate", func(s farend.FarEndStats) bool {
				return s.VideoFramesDecoded > frozen.VideoFramesDecoded+30 && s.FPS >= 20
			})
			t.Logf("break %s: frames %d before, %d frozen, %d after; first new frame %s after the network returned (reports every 100 ms); ICE restarts %d",
				tc.break_, before.VideoFramesDecoded, frozen.VideoFramesDecoded, after.VideoFramesDecoded,
				resumed.Round(10*time.Millisecond), call.Restarts())
			select {
			case err := <-call.Ended():
				t.Fatalf("the call ended: %v", err)
			default:
			}
			if p.gone() {
				t.Fatal("the far end saw the unit leave the room during the break")
			}
		})
	}
}

// A break longer than the grace time ends the call with the reason.
func TestNetworkBreakPastGraceEndsCall(t *testing.T) {
	lk := farend.StartLiveKit(t)
	var cut atomic.Bool
	sys, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	call, _ := startPublisher(t, lk, "gone-room", cutNet{sys, &cut}, 4*time.Second)
	time.Sleep(time.Second)
	cut.Store(true)
	select {
	case err := <-call.Ended():
		if err == nil {
			t.Fatal("the call ended without a reason")
		}
		t.Logf("reason: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the call did not end although the network stayed down past the grace time")
	}
}
