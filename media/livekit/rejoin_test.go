package livekit_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// The real LiveKit server drops the unit's participant (LiveKit's own
// node-failure simulation: the participant and its WebSocket are closed
// without a word). The unit's resume is answered with
// LeaveRequest{action: RECONNECT}; the unit joins again as a new participant
// with a new peer connection, the same capture and the same gate. The call
// goes on: the far end gets the unit's picture again on a new track, the unit
// shows the far end again, and the call never ends (so the unit reports no
// fault). A second full reconnect with the gate shut encodes no camera frame
// and shows the far end nothing but the slate until the gate opens.
func TestRTCFullReconnect(t *testing.T) {
	lk := farend.StartLiveKit(t)
	call, g, conn := joinRTCConn(t, lk, "rejoin", nil, livekit.RTCOptions{})
	w := startTwoWay(t, lk, "rejoin", call)
	fe, who := w.fe, w.who

	unitTracks := func() int { // the unit's video tracks the far end has subscribed to so far
		n := 0
		for _, l := range fe.PageLog() {
			if strings.Contains(l, "subscribed video from unit-1") && !strings.Contains(l, "unsubscribed") {
				n++
			}
		}
		return n
	}
	rejoin := func(n int) time.Time {
		t.Helper()
		if err := call.SimulateNodeFailure(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		for call.Rejoins() < n {
			if time.Since(t0) > 15*time.Second {
				t.Fatalf("no full reconnect %d within 15 s of the server dropping the unit (resumes %d)", n, call.Resumes())
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("full reconnect %d: media up %s after the server dropped the unit", n, time.Since(t0).Round(time.Millisecond))
		return t0
	}

	t0 := rejoin(1)
	s := farWaitT(t, fe, "the unit's picture again, on a new track", 20*time.Second, func(s farend.FarEndStats) bool {
		return unitTracks() >= 2 && s.FPS >= 15 && !s.LastFrameIsUniform && s.LastFrameAt.After(t0)
	})
	t.Logf("far end: the unit's picture back %s after the drop (%.0f fps); unit left and came back: %v", s.ReceivedAt.Sub(t0).Round(time.Millisecond), s.FPS, s.ParticipantsLeft)
	waitPlayout(t, call, "the patient's picture back on the unit", 20*time.Second, func(s playout.Stats) bool {
		v := videoFrom(s, who)
		return v.FPS >= 15 && v.FirstFrameAt.After(t0)
	})

	// The gate shut (PRIVACY) when the server drops the unit again.
	g.Set(gate.State{})
	farWaitT(t, fe, "the slate", 10*time.Second, func(s farend.FarEndStats) bool { return s.LastFrameIsUniform })
	time.Sleep(500 * time.Millisecond)
	n0 := conn.Counters().VideoFrames.Load()
	t1 := rejoin(2)
	time.Sleep(2 * time.Second)
	if n := conn.Counters().VideoFrames.Load() - n0; n != 0 {
		t.Fatalf("%d camera frames reached the encoder with the gate shut across the full reconnect", n)
	}
	if s := fe.Stats(); s.FramesPresented > 0 && !s.LastFrameIsUniform {
		t.Fatalf("the far end shows the room while the gate is shut: %s", s)
	}
	g.Set(gate.State{Video: true, Audio: true})
	farWaitT(t, fe, "the room again once the gate opens", 20*time.Second, func(s farend.FarEndStats) bool {
		return unitTracks() >= 3 && s.FPS >= 15 && !s.LastFrameIsUniform && s.LastFrameAt.After(t1)
	})

	select {
	case err := <-call.Ended():
		t.Fatalf("the call ended: %v", err)
	default:
	}
	ps, err := lk.Participants(context.Background(), "rejoin")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ps)
	if !slices.Equal(ps, []string{"patient", "unit-1"}) {
		t.Fatalf("room after two full reconnects: %v, want the patient and the unit once", ps)
	}
	if call.Others() != 1 {
		t.Fatalf("the unit counts %d others, want 1", call.Others())
	}
}
