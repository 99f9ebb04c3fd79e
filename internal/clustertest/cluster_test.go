package clustertest

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

const unitID = "unit-1"

// join brings the unit (the two-way connector "livekit") into room through
// server, with its gate open, as roomd builds it (the default disconnect
// grace, 10 s).
func join(t *testing.T, server *farend.LiveKit, room string) (*livekit.RTCCall, *gate.Gate, *livekit.RTCConnector) {
	t.Helper()
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{
		URL: server.URL, Room: room, Identity: unitID, APIKey: server.APIKey, APISecret: server.APISecret,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "auto", VideoBitRate: 1_000_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice},
		livekit.RTCOptions{Speaker: playout.DeviceNull}, g,
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
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
	return call, g, conn
}

func farWait(t *testing.T, fe *farend.FarEnd, what string, d time.Duration, cond func(farend.FarEndStats) bool) farend.FarEndStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	s, err := fe.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("far end: %s: %v; last %s", what, err, fe.Stats())
	}
	return s
}

// patientVideo is the far end's picture on the unit (the newest live one).
func patientVideo(call *livekit.RTCCall) playout.VideoStats {
	var best playout.VideoStats
	for _, v := range call.Playout().Stats().Video {
		if !v.Ended && v.FirstFrameAt.After(best.FirstFrameAt) {
			best = v
		}
	}
	return best
}

func unitWait(t *testing.T, call *livekit.RTCCall, what string, d time.Duration, cond func(playout.Stats, playout.VideoStats) bool) playout.VideoStats {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := call.Playout().Stats()
		v := patientVideo(call)
		if cond(s, v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("unit: %s: not within %s; last %+v", what, d, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// privacyWatch checks every far-end report while the gate is shut: the
// far end may show nothing or the slate (a uniform picture), never the
// room. It is fed from the WaitFor conditions, which see every report.
type privacyWatch struct {
	mu     sync.Mutex
	shut   bool
	breach string
}

func (p *privacyWatch) observe(s farend.FarEndStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shut && s.FramesPresented > 0 && !s.LastFrameIsUniform && p.breach == "" {
		p.breach = s.String()
	}
}

func (p *privacyWatch) set(shut bool) {
	p.mu.Lock()
	p.shut = shut
	p.mu.Unlock()
}

func (p *privacyWatch) check(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.breach != "" {
		t.Fatalf("the far end showed the room while the gate was shut: %s", p.breach)
	}
}

// The unit signals through node A, the patient through node B; the room
// lives on one of them and is reached through the other. Each sees and
// hears the other; PRIVACY leaves the patient the slate and encodes no
// camera frame.
func TestCallAcrossNodes(t *testing.T) {
	c := farend.StartLiveKitCluster(t, 2)
	a, b := c.Nodes[0], c.Nodes[1]
	const room = "cross-node"
	call, g, conn := join(t, a, room)
	fe := farend.StartFarEnd(t, b, room, "patient", farend.Publish(), farend.Watch(unitID))
	host := c.RoomNode(room)
	if host == nil {
		t.Fatalf("no node logged hosting room %q", room)
	}
	t.Logf("room on node %s; unit signals through %s, patient through %s", host.NodeID(), a.NodeID(), b.NodeID())

	farWait(t, fe, "sees and hears the unit through the other node", 30*time.Second, func(s farend.FarEndStats) bool {
		return s.VideoFrom == unitID && s.FPS >= 15 && !s.LastFrameIsUniform && s.AudioEnergyPeak > 0.01
	})
	v := unitWait(t, call, "shows and plays the patient through the other node", 30*time.Second, func(s playout.Stats, v playout.VideoStats) bool {
		return v.FPS >= 15 && v.Frames > 30 && s.EnergyPeak > 0.01
	})
	t.Logf("unit plays the patient: %dx%d %.0f fps", v.Width, v.Height, v.FPS)
	for _, n := range c.Nodes {
		ps, err := n.Participants(context.Background(), room)
		if err != nil {
			t.Fatalf("node %s: participants: %v", n.NodeID(), err)
		}
		if !slices.Contains(ps, unitID) || !slices.Contains(ps, "patient") {
			t.Fatalf("node %s lists %v in the room, want the unit and the patient", n.NodeID(), ps)
		}
	}

	var pw privacyWatch
	g.Set(gate.State{})
	farWait(t, fe, "the slate", 10*time.Second, func(s farend.FarEndStats) bool { return s.LastFrameIsUniform })
	time.Sleep(300 * time.Millisecond) // a frame already in the encoder finishes
	pw.set(true)
	n0 := conn.Counters().VideoFrames.Load()
	until := time.Now().Add(2 * time.Second)
	farWait(t, fe, "2 s of the slate", 10*time.Second, func(s farend.FarEndStats) bool {
		pw.observe(s)
		return time.Now().After(until)
	})
	pw.check(t)
	if n := conn.Counters().VideoFrames.Load() - n0; n != 0 {
		t.Fatalf("%d camera frames reached the encoder with the gate shut", n)
	}
}
