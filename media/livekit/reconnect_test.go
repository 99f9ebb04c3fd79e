package livekit_test

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/congestion"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
)

// cutNet is the system's network with a switch that drops every UDP packet
// in both directions, as a pulled cable or a Wi-Fi drop-out does: sockets
// stay open, nothing gets through.
type cutNet struct {
	transport.Net
	cut *atomic.Bool
	up  *uplink // nil: no loss, no counting
}

// uplink is a congested link in front of the unit: it carries capKbps and
// queues up to 300 ms beyond that (then drops the newest), as a clinic's
// DSL modem does. It counts the media bytes the unit offers to it, once per
// RTP packet of the streams it carried while the link was free (a
// retransmission, on its own stream or not, is not new media).
type uplink struct {
	capKbps atomic.Int64 // 0: no limit
	mu      sync.Mutex
	busy    time.Time // when the link has sent everything queued so far
	seen    map[uint64]bool
	streams map[uint32]bool
	media   atomic.Int64
}

// admit returns how long to hold the packet before sending, or false to drop it.
func (u *uplink) admit(p []byte) (time.Duration, bool) {
	if u == nil {
		return 0, true
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(p) >= 12 && p[0]>>6 == 2 && (p[1]&0x7f < 64 || p[1]&0x7f > 95) { // RTP, not RTCP
		ssrc := binary.BigEndian.Uint32(p[8:12])
		key := uint64(ssrc)<<16 | uint64(binary.BigEndian.Uint16(p[2:4]))
		if u.seen == nil {
			u.seen, u.streams = map[uint64]bool{}, map[uint32]bool{}
		}
		if u.capKbps.Load() == 0 {
			u.streams[ssrc] = true
		}
		if u.streams[ssrc] && !u.seen[key] {
			u.seen[key] = true
			u.media.Add(int64(len(p)))
		}
	}
	c := u.capKbps.Load()
	if c == 0 {
		return 0, true
	}
	now := time.Now()
	if u.busy.Before(now) {
		u.busy = now
	}
	wait := u.busy.Sub(now)
	if wait > 300*time.Millisecond {
		return 0, false
	}
	u.busy = u.busy.Add(time.Duration(int64(len(p)+28) * 8 * int64(time.Second) / (c * 1000)))
	return wait, true
}

func (n cutNet) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	c, err := n.Net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	return cutConn{c, n.cut, n.up}, nil
}

type cutConn struct {
	transport.UDPConn
	cut *atomic.Bool
	up  *uplink
}

func (c cutConn) WriteTo(p []byte, a net.Addr) (int, error) {
	if c.cut.Load() {
		return len(p), nil
	}
	wait, ok := c.up.admit(p)
	switch {
	case !ok:
		return len(p), nil
	case wait > 0:
		q := append([]byte(nil), p...)
		time.AfterFunc(wait, func() { _, _ = c.UDPConn.WriteTo(q, a) })
		return len(p), nil
	}
	return c.UDPConn.WriteTo(p, a)
}

func (c cutConn) WriteToUDP(p []byte, a *net.UDPAddr) (int, error) { return c.WriteTo(p, a) }

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

func startPublisher(t *testing.T, lk *farend.LiveKit, room string, n transport.Net, grace time.Duration, codec ...string) (*livekit.Call, *gate.Gate) {
	t.Helper()
	g := gate.New()
	vc := "auto"
	if len(codec) > 0 {
		vc = codec[0]
	}
	conn, err := livekit.NewWHIP(livekit.Config{
		URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret,
		Net: n, DisconnectGrace: grace,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: vc, VideoBitRate: 1_000_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice},
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
// unit was ever missing from its room once it had been seen, or reported
// disconnected by livekit-client (which a leave and rejoin between two
// reports would otherwise hide).
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
	if slices.Contains(s.ParticipantsLeft, "unit-1") {
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
			call, _ := startPublisher(t, lk, "break-room", cutNet{Net: sys, cut: &cut}, 15*time.Second)
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
	call, _ := startPublisher(t, lk, "gone-room", cutNet{Net: sys, cut: &cut}, 4*time.Second)
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

// A congested uplink (the link carries 400 kbit/s, the unit is set to
// 1 Mbit/s): the congestion estimate comes down and the video encoder's
// target follows it. That the encoders then produce about their target is
// TestEncoderFollowsBitRate (media/encoder): the test camera's binary-noise
// band makes every keyframe ~100 kB whatever the target, so the far end's
// picture and the bytes offered here say little about a real camera.
func TestBitrateFollowsCongestion(t *testing.T) {
	lk := farend.StartLiveKit(t)
	var cut atomic.Bool
	up := &uplink{}
	sys, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	// VP8: openh264 cannot hold any target on the test camera's noise band
	// (it stops at its highest quantiser: ~7.6 Mbit/s at a 1 Mbit/s target),
	// which would drown the 400 kbit/s link and its feedback altogether.
	call, _ := startPublisher(t, lk, "cc-room", cutNet{Net: sys, cut: &cut, up: up}, 15*time.Second, "VP8")
	fe := farend.StartFarEnd(t, lk, "cc-room", "patient", farend.ReportInterval(200*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.FPS >= 20 }); err != nil {
		t.Fatalf("far end never saw the unit: %v", err)
	}
	rate := func(d time.Duration) float64 {
		b0 := up.media.Load()
		time.Sleep(d)
		return float64(up.media.Load()-b0) * 8 / d.Seconds() / 1000
	}
	clear := rate(2 * time.Second)
	v0 := call.Congestion().Video()
	if v0 != 1_000_000 {
		t.Errorf("video target %d on a free link, want the configured 1000 kbit/s", v0)
	}

	up.capKbps.Store(400)
	deadline := time.Now().Add(15 * time.Second)
	for call.Congestion().Video() > 450_000 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	v1 := call.Congestion().Video()
	h := call.Congestion().History()
	tight := rate(2 * time.Second)
	t.Logf("media offered %.0f kbit/s on a free link (video target %d kbit/s); on a 400 kbit/s link the target fell to %d kbit/s in %d steps (first after %s), media offered %.0f kbit/s",
		clear, v0/1000, v1/1000, len(h), firstChange(h, deadline.Add(-15*time.Second)), tight)
	if v1 > 450_000 {
		t.Fatalf("video target still %d kbit/s after 15 s on a 400 kbit/s link", v1/1000)
	}
}

func firstChange(h []congestion.Change, since time.Time) time.Duration {
	for _, c := range h {
		if c.At.After(since) {
			return c.At.Sub(since).Round(10 * time.Millisecond)
		}
	}
	return 0
}

// onMessage is a slog handler that runs fn on every record it logs.
type onMessage struct {
	slog.Handler
	fn func(slog.Record)
}

func (h onMessage) Handle(ctx context.Context, r slog.Record) error {
	h.fn(r)
	return h.Handler.Handle(ctx, r)
}

// The first ICE attempt of a join finds no path (every UDP packet dropped);
// the network is back when the unit notices: the same press of JOIN still
// ends in a call the far end sees, with no fault to clear.
func TestJoinTriesICEOnceMore(t *testing.T) {
	lk := farend.StartLiveKit(t)
	var cut atomic.Bool
	cut.Store(true)
	sys, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	var failedAt atomic.Int64
	log := slog.New(onMessage{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}), func(r slog.Record) {
		if r.Level == slog.LevelWarn && strings.Contains(r.Message, "trying once more") {
			failedAt.Store(time.Now().UnixNano())
			cut.Store(false)
		}
	}})
	g := gate.New()
	conn, err := livekit.NewWHIP(livekit.Config{
		URL: lk.URL, Room: "retry-room", Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret,
		Net: cutNet{Net: sys, cut: &cut}, DisconnectGrace: 10 * time.Second,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice}, g, log)
	if err != nil {
		t.Fatal(err)
	}
	fe := farend.StartFarEnd(t, lk, "retry-room", "patient", farend.ReportInterval(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join with the first ICE attempt cut off: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = call.Leave(ctx)
	})
	if failedAt.Load() == 0 {
		t.Fatal("the join connected although every UDP packet was dropped: the test's cut did not work")
	}
	g.Set(gate.State{Video: true, Audio: true})
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if _, err := fe.WaitFor(wctx, func(s farend.FarEndStats) bool { return s.VideoFramesDecoded >= 10 }); err != nil {
		t.Fatalf("far end: the unit's video after the second attempt: %v; last %s", err, fe.Stats())
	}
	t.Logf("first ICE attempt failed %.1f s after JOIN; connected on the second, %.1f s after JOIN",
		time.Duration(failedAt.Load()-t0.UnixNano()).Seconds(), time.Since(t0).Seconds())
}
