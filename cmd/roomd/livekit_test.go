package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
)

func livekitConfig(lk *farend.LiveKit, room string, extra string) string {
	return connectorConfig("livekit-whip", lk, room, extra)
}

// connectorConfig is a unit on LiveKit through connector ("livekit-whip",
// "livekit"); extra goes into [conference].
func connectorConfig(connector string, lk *farend.LiveKit, room string, extra string) string {
	return fmt.Sprintf(`[conference]
connector = %q
url = %q
room = %q
identity = "unit-1"
api_key = %q
api_secret = %q
%s
`, connector, lk.URL, room, lk.APIKey, lk.APISecret, extra)
}

func farWait(t *testing.T, fe *farend.FarEnd, what string, d time.Duration, cond func(farend.FarEndStats) bool) farend.FarEndStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	s, err := fe.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("far end: %s: %v; last stats %+v", what, err, fe.Stats())
	}
	return s
}

// The patient (headless Chromium running livekit-client) checks what the
// unit sends: picture and sound after JOIN, the slate and nothing more after
// PRIVACY, silence after MUTE, and the unit gone from the room after LEAVE.
// Both connectors, the same far-end assertions.
func TestCallAtRealFarEnd(t *testing.T) {
	for _, connector := range []string{"livekit-whip", "livekit"} {
		t.Run(connector, func(t *testing.T) { callAtRealFarEnd(t, connector) })
	}
}

func callAtRealFarEnd(t *testing.T, connector string) {
	lk := farend.StartLiveKit(t)
	room := "clinic-room-1"
	u := startUnit(t, connectorConfig(connector, lk, room, ""))
	fe := farend.StartFarEnd(t, lk, room, "patient")

	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	s := farWait(t, fe, "decode the unit's video at >= 20 fps and hear it", 20*time.Second, func(s farend.FarEndStats) bool {
		return s.VideoFramesDecoded > 60 && s.FPS >= 20 && s.AudioEnergyPeak > 0.01
	})
	if s.LastFrameIsUniform {
		t.Fatalf("far end shows a uniform picture in a live call, not the moving camera: %+v", s.LastFrameMeanRGB)
	}
	t.Logf("live: %d frames decoded, %.1f fps, %dx%d, audio peak %.3f", s.VideoFramesDecoded, s.FPS, s.FrameWidth, s.FrameHeight, s.AudioEnergyPeak)

	// PRIVACY: the gate shuts; the far end's picture stops on the slate.
	u.press("privacy")
	u.waitFor("gate shut", 5*time.Second, func(e appliance.Event) bool { return e.Type == "gate" && !e.Gate.Video })
	time.Sleep(1500 * time.Millisecond)
	a := fe.Stats()
	time.Sleep(1000 * time.Millisecond)
	b := fe.Stats()
	// While private only the repeated slate arrives (one every
	// capture.SlateInterval), never the camera's 30 fps.
	if maxSlates := int(time.Second/capture.SlateInterval) + 2; b.VideoFramesDecoded > a.VideoFramesDecoded+maxSlates {
		t.Fatalf("far end decoded %d frames in a second of privacy: more than the repeated slate (at most %d)", b.VideoFramesDecoded-a.VideoFramesDecoded, maxSlates)
	}
	if !b.LastFrameIsUniform || !nearSlate(b.LastFrameMeanRGB) {
		t.Fatalf("far end's last picture in privacy is not the slate: uniform=%v mean=%v", b.LastFrameIsUniform, b.LastFrameMeanRGB)
	}
	if st := u.status(); st.Media == nil || !st.Media.LastIsSlate {
		t.Fatalf("unit: last frame handed to the encoder is not the slate: %+v", st.Media)
	}

	// PRIVACY off: the room is back once the shutter confirms open.
	u.press("privacy")
	farWait(t, fe, "video back after privacy off", 10*time.Second, func(s farend.FarEndStats) bool {
		return s.VideoFramesDecoded > b.VideoFramesDecoded+30 && !s.LastFrameIsUniform
	})

	// MUTE: the far end hears silence.
	u.press("mute")
	farWait(t, fe, "silence after mute", 10*time.Second, func(s farend.FarEndStats) bool { return s.AudioEnergy < 0.001 })
	time.Sleep(time.Second)
	if e := fe.Stats().AudioEnergy; e >= 0.001 {
		t.Fatalf("sound came back while muted: energy %.4f", e)
	}

	// LEAVE: the participant is gone from the room (asked of LiveKit itself).
	u.press("leave")
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	deadline := time.Now().Add(10 * time.Second)
	for {
		ps, err := lk.Participants(context.Background(), room)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(ps, "unit-1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unit-1 still in the room 10s after LEAVE: %v", ps)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := u.status(); st.Sim.Shutter.Position != "closed" || st.LED != "off" {
		t.Fatalf("after leave: shutter %s LED %s", st.Sim.Shutter.Position, st.LED)
	}
	if open := capture.DevicesOpen(); len(open) > 0 {
		if os.Getenv("KONSULT_DUMP") != "" {
			_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
		}
		t.Fatalf("camera/microphone still open after LEAVE: %v", open)
	}
}

func nearSlate(rgb [3]float64) bool {
	r, g, b, _ := capture.SlateColor.RGBA()
	want := [3]float64{float64(r >> 8), float64(g >> 8), float64(b >> 8)}
	for i := range rgb {
		if math.Abs(rgb[i]-want[i]) > 20 {
			return false
		}
	}
	return true
}

// Each refusal gives its reason, the fault LED, a closed shutter, and the
// unit can try again.
func TestJoinRefusals(t *testing.T) {
	lk := farend.StartLiveKit(t)
	cases := []struct {
		name, config, want string
	}{
		{"wrong token", fmt.Sprintf("[conference]\nconnector = \"livekit-whip\"\nurl = %q\nroom = \"r\"\nidentity = \"unit-1\"\ntoken = \"not-a-token\"\n", lk.URL), "token"},
		{"unknown host", "[conference]\nconnector = \"livekit-whip\"\nurl = \"https://livekit.invalid\"\nroom = \"r\"\nidentity = \"u\"\ntoken = \"tok-3f9a8c7d2e1b\"\n", "livekit.invalid"},
		{"not on allow-list", livekitConfig(lk, "r", `allowed_hosts = ["livekit.clinic.example"]`), "allow"},
		{"plain http to a remote host", "[conference]\nconnector = \"livekit-whip\"\nurl = \"http://livekit.clinic.example:7880\"\nroom = \"r\"\nidentity = \"u\"\ntoken = \"tok-3f9a8c7d2e1b\"\n", "http"},
	}
	for _, tc := range cases {
		for _, connector := range []string{"livekit-whip", "livekit"} {
			t.Run(connector+"/"+tc.name, func(t *testing.T) {
				joinRefused(t, lk, strings.Replace(tc.config, `"livekit-whip"`, strconv.Quote(connector), 1), tc.want)
			})
		}
	}
}

func joinRefused(t *testing.T, lk *farend.LiveKit, config, want string) {
	u := startUnit(t, config)
	u.press("join")
	u.waitFor("fault", 20*time.Second, isState(appliance.Fault))
	s := u.status()
	if s.LED != "fault" || !strings.Contains(strings.ToLower(s.LastError), strings.ToLower(want)) {
		t.Fatalf("LED %s, reason %q (want it to mention %q)", s.LED, s.LastError, want)
	}
	if strings.Contains(s.LastError, "not-a-token") || strings.Contains(s.LastError, "tok-3f9a8c7d2e1b") || strings.Contains(s.LastError, lk.APISecret) {
		t.Fatalf("a secret is in the reason: %q", s.LastError)
	}
	if s.Sim.Shutter.Position != "closed" || s.Gate.Live() {
		t.Fatalf("shutter %s gate %+v", s.Sim.Shutter.Position, s.Gate)
	}
	u.press("join") // it tries again, and says why again
	u.waitFor("joining again", 5*time.Second, isState(appliance.Joining))
}

// LiveKit stopped mid-call: the call ends by itself, fault shown, shutter closed.
func TestServerStoppedMidCall(t *testing.T) {
	lk := farend.StartLiveKit(t)
	u := startUnit(t, livekitConfig(lk, "r2", ""))
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	lk.Stop()
	u.waitFor("fault", 30*time.Second, isState(appliance.Fault))
	s := u.status()
	if s.LED != "fault" || s.LastError == "" || s.Sim.Shutter.Position != "closed" || s.Gate.Live() {
		t.Fatalf("after the server stopped: %+v shutter %s", s.Status, s.Sim.Shutter.Position)
	}
	t.Logf("reason shown: %s", s.LastError)
}

// A camera unplugged mid-call ends the call through the real capture
// pipeline: gate shut, fault shown with the reason, shutter closed; the
// next JOIN opens the camera afresh.
func TestCameraLostMidCall(t *testing.T) {
	lk := farend.StartLiveKit(t)
	u := startUnit(t, livekitConfig(lk, "r3", ""))
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	if err := u.api.Fault(context.Background(), "camera_lost", true); err != nil {
		t.Fatal(err)
	}
	u.waitFor("fault", 10*time.Second, isState(appliance.Fault))
	s := u.status()
	if !strings.Contains(s.LastError, "camera") || s.LED != "fault" || s.Gate.Live() || s.Sim.Shutter.Position != "closed" {
		t.Fatalf("camera lost: reason %q LED %s gate %+v shutter %s", s.LastError, s.LED, s.Gate, s.Sim.Shutter.Position)
	}
	if open := capture.DevicesOpen(); len(open) > 0 {
		t.Fatalf("devices still open after the call ended: %v", open)
	}
	u.press("join")
	u.waitFor("in_call again", 20*time.Second, isState(appliance.InCall))
}

// doctor shows which encoders and devices a join would use: in --sim the
// test camera and microphone; on a unit, what it found or what to do.
func TestDoctorShowsEncodersAndDevices(t *testing.T) {
	lk := farend.StartLiveKit(t)
	u := startUnit(t, livekitConfig(lk, "doc-room", ""))
	checks, err := u.api.Doctor(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range checks {
		got[c.Name] = c.Detail
	}
	for name, want := range map[string]string{
		"encoder video": "openh264",
		"camera":        "simulated camera",
		"microphone":    "simulated microphone",
	} {
		if !strings.Contains(got[name], want) {
			t.Errorf("doctor %q = %q, want it to mention %q", name, got[name], want)
		}
	}
}
