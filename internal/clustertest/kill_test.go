package clustertest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/playout"
)

// The node that hosts the room is killed mid-call (SIGKILL: no one is
// told). The unit and the patient each reach the cluster through a front
// that fails over to the surviving node, as a clinic's load balancer does.
// Both end up in a call again on the survivor: the unit by its own full
// reconnect, the patient by livekit-client's. The gate was shut (PRIVACY)
// before the kill, so the last picture the patient had before the break is
// the slate, and across the break and the new room the patient sees only
// the slate (the unit publishes no new picture while the gate is shut) and
// the unit encodes no camera frame. Opening the gate brings
// the room's picture back. The times are logged (docs/PERFORMANCE.md); the
// test takes about 20 s.
func TestRoomNodeKilled(t *testing.T) {
	c := farend.StartLiveKitCluster(t, 2)
	a, b := c.Nodes[0], c.Nodes[1]
	unitFront := farend.StartFailover(t, a, b)
	patientFront := farend.StartFailover(t, b, a)
	const room = "node-killed"
	call, g, conn := join(t, unitFront, room)
	fe := farend.StartFarEnd(t, patientFront, room, "patient", farend.Publish(), farend.Watch(unitID))
	var pw privacyWatch
	watch := func(what string, d time.Duration, cond func(farend.FarEndStats) bool) farend.FarEndStats {
		t.Helper()
		return farWait(t, fe, what, d, func(s farend.FarEndStats) bool { pw.observe(s); return cond(s) })
	}
	watch("sees the unit", 30*time.Second, func(s farend.FarEndStats) bool {
		return s.VideoFrom == unitID && s.FPS >= 15 && !s.LastFrameIsUniform
	})
	unitWait(t, call, "shows the patient", 30*time.Second, func(_ playout.Stats, v playout.VideoStats) bool { return v.FPS >= 15 })
	host := c.RoomNode(room)
	if host == nil {
		t.Fatalf("no node logged hosting room %q", room)
	}
	survivor := a
	if host == a {
		survivor = b
	}
	who := "the patient's"
	if host == a {
		who = "the unit's"
	}
	t.Logf("room on %s (%s signalling node)", host.NodeID(), who)

	g.Set(gate.State{})
	watch("the slate", 10*time.Second, func(s farend.FarEndStats) bool { return s.LastFrameIsUniform })
	time.Sleep(300 * time.Millisecond)
	pw.set(true)
	n0 := conn.Counters().VideoFrames.Load()
	rejoins0 := call.Rejoins()

	host.Kill()
	killed := time.Now()
	// The unit shows the patient on a new track, and the patient's page is
	// connected with the unit in its room. With the gate shut the unit
	// publishes no new picture: the patient keeps the slate.
	unitWait(t, call, "shows the patient again", 60*time.Second, func(_ playout.Stats, v playout.VideoStats) bool {
		return v.FirstFrameAt.After(killed) && v.FPS >= 10
	})
	unitBack := time.Since(killed)
	s := watch("in the room with the unit again", 30*time.Second, func(s farend.FarEndStats) bool {
		return s.Connected && s.ReceivedAt.After(killed.Add(unitBack)) && slices.Contains(s.RemoteParticipants, unitID)
	})
	farBack := s.ReceivedAt.Sub(killed)
	if n := c.RoomNode(room); n != survivor {
		t.Fatalf("room not on the surviving node after the kill")
	}
	if survivor.Exited() {
		t.Fatal("the surviving node exited")
	}
	if ps, err := survivor.Participants(context.Background(), room); err != nil || !slices.Contains(ps, unitID) || !slices.Contains(ps, "patient") {
		t.Fatalf("the surviving node lists %v in the room (%v), want the unit and the patient", ps, err)
	}
	// A few more seconds of the shut gate on the new room.
	until := time.Now().Add(2 * time.Second)
	watch("the slate on the new room", 10*time.Second, func(farend.FarEndStats) bool { return time.Now().After(until) })
	pw.check(t)
	if n := conn.Counters().VideoFrames.Load() - n0; n != 0 {
		t.Fatalf("%d camera frames reached the encoder with the gate shut across the node's death", n)
	}
	t.Logf("node killed → unit shows the patient again: %s; → patient's page in the room with the unit again: %s; unit full reconnects %d, resumes %d",
		unitBack.Round(time.Millisecond), farBack.Round(time.Millisecond), call.Rejoins()-rejoins0, call.Resumes())

	pw.set(false)
	g.Set(gate.State{Video: true, Audio: true})
	opened := time.Now()
	s = watch("the room's picture once the gate opens", 20*time.Second, func(s farend.FarEndStats) bool {
		return s.FPS >= 15 && !s.LastFrameIsUniform && s.LastFrameAt.After(opened)
	})
	t.Logf("gate opened → the patient sees the room on the survivor: %s", s.ReceivedAt.Sub(opened).Round(time.Millisecond))
}
