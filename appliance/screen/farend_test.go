package screen_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/screentest"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// joinRTC joins room as the unit, its far-end frames to onFrame and, if
// self is set, its own coded frames while the gate lets video out to self
// (through the send transform: the stand-in, in these tests, for the
// capture.Tap roomd puts on the encoder, which livekit does not take yet).
func joinRTC(t testing.TB, lk *farend.LiveKit, room string, g *gate.Gate, onFrame func(playout.VideoFrame), self func(capture.EncodedFrame)) *livekit.RTCCall {
	t.Helper()
	var send livekit.FrameTransform
	if self != nil {
		send = func(kind string, frame []byte) ([]byte, error) {
			if kind == "video" && g.State().Video {
				self(capture.EncodedFrame{Codec: "VP8", Data: frame, Keyframe: capture.IsKeyframe("VP8", frame), At: time.Now()})
			}
			return frame, nil
		}
	}
	conn, err := livekit.NewRTC(livekit.Config{
		URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret, DisconnectGrace: 15 * time.Second,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "vp8", VideoBitRate: 800_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice, SendTransform: send},
		livekit.RTCOptions{Speaker: playout.DeviceNull, OnVideoFrame: onFrame}, g, testLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() { _ = call.Leave(context.Background()) })
	return call
}

// The room sees the patient: real LiveKit, Chromium far ends publishing
// fake cameras, and a Chromium as the unit's screen. Each far end gets a
// tile with its moving picture; a second one makes two tiles; a page that
// opens mid call gets both back (keyframes asked of the far end); one
// leaving leaves one tile.
func TestScreenShowsEveryFarEnd(t *testing.T) {
	lk := farend.StartLiveKit(t)
	g := gate.New()
	disp, err := display.New(display.Config{Gate: g, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer disp.Close()
	call := joinRTC(t, lk, "screen", g, disp.FarFrame, disp.SelfFrame)
	var plis atomic.Int32 // keyframe requests that reached a far end's receiver
	disp.SetFarEnd(&display.FarEnd{Keyframe: func(p string) bool {
		ok := call.RequestKeyframe(p)
		if ok {
			plis.Add(1)
		}
		return ok
	}, Speaking: call.Playout().Speaking})
	g.Set(gate.State{Video: true, Audio: true})
	u := newFakeUnit(appliance.Status{State: appliance.InCall, Since: time.Now(), Shutter: "open", LED: "live"}, g)
	url := startServer(t, screen.Config{Room: "Room 3", Unit: u, Media: disp, Others: call.Others})
	sc := screentest.Start(t, url, 1280, 720)
	waitPages(t, disp, 1)

	a := farend.StartFarEnd(t, lk, "screen", "patient", farend.Publish())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Published }); err != nil {
		t.Fatalf("far end did not publish: %v", err)
	}
	published := time.Now()
	one := screentest.MovingTiles(t, sc, 1, 20*time.Second)
	t.Logf("far end publishes → its moving picture on the unit's screen: %s (tile %+v)", time.Since(published).Round(10*time.Millisecond), one[0])

	b := farend.StartFarEnd(t, lk, "screen", "interpreter", farend.Publish())
	if _, err := b.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Published }); err != nil {
		t.Fatalf("second far end did not publish: %v", err)
	}
	published = time.Now()
	two := screentest.MovingTiles(t, sc, 2, 20*time.Second)
	t.Logf("second far end publishes → two moving tiles: %s", time.Since(published).Round(10*time.Millisecond))
	var bar struct{ Bar, Others string }
	sc.Eval(`({Bar: document.getElementById('bar-text').textContent, Others: document.getElementById('others').textContent})`, &bar)
	if bar.Bar != "LIVE: camera and microphone on" || bar.Others != "2 at the far end" {
		t.Errorf("status bar %+v", bar)
	}
	// Who speaks is emphasised (Chromium's fake microphone beeps).
	screentest.WaitUntil(t, sc, "a speaking far end emphasised", 10*time.Second, screentest.TilesJS, func(ts []screentest.Tile) bool {
		n := 0
		for _, x := range ts {
			if x.Speaking {
				n++
			}
		}
		return n == 1
	})
	screentest.WaitSelfRoom(t, sc, 10*time.Second) // the room's own picture, small
	screentest.SaveShot(t, sc, "call-two-far-ends.png")
	// PRIVACY: nothing leaves the room, the room still sees the far end.
	g.Set(gate.State{})
	screentest.WaitUntil(t, sc, "the private status bar", 5*time.Second, `document.getElementById('bar-text').textContent`, func(s string) bool { return s == "Private: nothing leaves the room" })
	screentest.MovingTiles(t, sc, 2, 5*time.Second)
	if v := screentest.WaitUntil(t, sc, "the self-view's placeholder", 2*time.Second, screentest.SelfJS, func(v screentest.Self) bool { return v.Closed }); v.Placeholder != "Camera closed" {
		t.Errorf("private self-view %+v", v)
	}
	screentest.SaveShot(t, sc, "call-private.png")
	g.Set(gate.State{Video: true, Audio: true})

	// A page opened mid call: nothing to decode until the far ends send
	// keyframes, which the display asks them for.
	reloaded := time.Now()
	sc.Call("Page.reload", map[string]any{"ignoreCache": true})
	before := plis.Load()
	screentest.MovingTiles(t, sc, 2, 15*time.Second)
	t.Logf("page opened mid call → both pictures back: %s (%d keyframe requests sent to the far ends)", time.Since(reloaded).Round(10*time.Millisecond), plis.Load()-before)
	if plis.Load() == before {
		t.Error("the page opened mid call got its pictures without asking the far ends for keyframes: RequestKeyframe untested")
	}

	if err := b.Leave(); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	rest := screentest.MovingTiles(t, sc, 1, 15*time.Second)
	t.Logf("one far end leaves → one tile: %s", time.Since(left).Round(10*time.Millisecond))
	if rest[0].Participant != two[0].Participant && rest[0].Participant != two[1].Participant {
		t.Errorf("the remaining tile shows %q, not one of %q, %q", rest[0].Participant, two[0].Participant, two[1].Participant)
	}
}

func waitPages(t testing.TB, d *display.Display, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for d.State().Pages != n {
		if time.Now().After(deadline) {
			t.Fatalf("display: %d pages connected, want %d", d.State().Pages, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
