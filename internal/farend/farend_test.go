package farend

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTokenIsHS256JWT(t *testing.T) {
	lk := &LiveKit{APIKey: "devkey", APISecret: "secret-secret-secret-secret-secret"}
	parts := strings.Split(lk.Token("alice", "room1", true, false, time.Minute), ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Iss, Sub string
		Exp, Nbf int64
		Video    map[string]any
	}
	if err := json.Unmarshal(raw, &claims); err != nil {
		t.Fatal(err)
	}
	if claims.Iss != "devkey" || claims.Sub != "alice" || claims.Video["room"] != "room1" ||
		claims.Video["roomJoin"] != true || claims.Video["canPublish"] != true || claims.Video["canSubscribe"] != false ||
		claims.Exp <= time.Now().Unix() || claims.Nbf > time.Now().Unix() {
		t.Fatalf("claims = %s", raw)
	}
}

// TestBrowserToBrowser: far end A publishes Chromium's fake camera+mic, far
// end B (subscribe only) must see A, decode A's video at >= 15 fps and hear
// its audio; LiveKit must list both.
func TestBrowserToBrowser(t *testing.T) {
	began := time.Now()
	lk := StartLiveKit(t)
	t.Logf("livekit ready in %v at %s (udp %d)", lk.StartTook, lk.URL, lk.UDPPort)

	const room = "consult-1"
	a := StartFarEnd(t, lk, room, "clinic-fake", Publish())
	b := StartFarEnd(t, lk, room, "patient", Watch("clinic-fake"))

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	if _, err := a.WaitFor(ctx, func(s FarEndStats) bool { return s.Published || len(s.Errors) > 0 }); err != nil {
		t.Fatalf("publisher: %v", err)
	}
	if s := a.Stats(); len(s.Errors) > 0 {
		t.Fatalf("publisher errors: %q", s.Errors)
	}
	t.Logf("A published %v after chromium start", time.Since(a.Started))

	first, err := b.WaitFor(ctx, func(s FarEndStats) bool { return !s.FirstFrameAt.IsZero() })
	if err != nil {
		t.Fatalf("no first frame at B: %v", err)
	}
	t.Logf("B first frame reported %v after B's chromium start (%v after A's)",
		first.FirstFrameAt.Sub(b.Started), first.FirstFrameAt.Sub(a.Started))

	// Let the frame rate settle over a full second window.
	s, err := b.WaitFor(ctx, func(s FarEndStats) bool {
		return s.FPS >= 15 && time.Since(s.FirstFrameAt) > 1500*time.Millisecond
	})
	if err != nil {
		t.Fatalf("B never reached 15 fps: %v", err)
	}
	t.Logf("B video: %s", s)
	t.Logf("B first frame painted (page clock) %v after B's chromium start", s.FirstFramePageAt.Sub(b.Started))
	if s.FrameWidth == 0 || s.FrameHeight == 0 {
		t.Errorf("no frame size: %s", s)
	}
	if s.VideoFrom != "clinic-fake" {
		t.Errorf("video from %q", s.VideoFrom)
	}
	if s.LastFrameIsUniform {
		t.Errorf("fake camera pattern reported as uniform: %s", s)
	}
	if !slices.Contains(s.RemoteParticipants, "clinic-fake") {
		t.Errorf("B does not see A: %v", s.RemoteParticipants)
	}

	s, err = b.WaitFor(ctx, func(s FarEndStats) bool { return s.AudioEnergy > 0 && s.AudioPacketsReceived > 0 })
	if err != nil {
		t.Fatalf("B hears nothing: %v", err)
	}
	t.Logf("B audio: energy=%.4f peak=%.4f packets=%d", s.AudioEnergy, s.AudioEnergyPeak, s.AudioPacketsReceived)

	ids, err := lk.Participants(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"clinic-fake", "patient"}) {
		t.Errorf("LiveKit participants = %v", ids)
	}
	if s := b.Stats(); len(s.Errors) > 0 {
		t.Errorf("subscriber errors: %q", s.Errors)
	}

	// A leaves: B must see the participant go and frames stop.
	a.Close()
	if _, err := b.WaitFor(ctx, func(s FarEndStats) bool { return !slices.Contains(s.RemoteParticipants, "clinic-fake") }); err != nil {
		t.Errorf("B still sees A after A closed: %v", err)
	}
	ids, err = lk.Participants(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after A left LiveKit lists %v; total %v", ids, time.Since(began))
}

// TestServerStopMidCall: when LiveKit dies the patient's picture stops and
// the page notices it lost the room.
func TestServerStopMidCall(t *testing.T) {
	lk := StartLiveKit(t)
	a := StartFarEnd(t, lk, "r", "clinic-fake", Publish())
	b := StartFarEnd(t, lk, "r", "patient")
	_ = a
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.WaitFor(ctx, func(s FarEndStats) bool { return s.FramesPresented > 10 }); err != nil {
		t.Fatal(err)
	}
	stopAt := time.Now()
	lk.Stop()
	t.Logf("livekit stopped in %v (exited=%v)", time.Since(stopAt), lk.Exited())
	s, err := b.WaitFor(ctx, func(s FarEndStats) bool { return !s.Connected })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("page noticed after %v: state=%q", time.Since(stopAt), s.State)
	time.Sleep(500 * time.Millisecond)
	s = b.Stats()
	if last := s.LastFrameAt; last.After(stopAt.Add(time.Second)) {
		t.Errorf("frames still arriving %v after stop", last.Sub(stopAt))
	}
	t.Logf("last frame %v after stop", s.LastFrameAt.Sub(stopAt))
}
