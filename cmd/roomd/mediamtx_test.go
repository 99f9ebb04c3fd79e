package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/mediamtx"
)

// roomd on connector "whip" (any WHIP server, here MediaMTX, not LiveKit):
// url is the endpoint, token the optional bearer token. JOIN publishes and
// a WHEP reader decodes the room; PRIVACY leaves it only the slate; LEAVE
// deletes the session.
func TestRoomdOnMediaMTX(t *testing.T) {
	for _, token := range []string{"mtx-roomd-5b1e9c0d7a", ""} {
		name := "bearer token"
		if token == "" {
			name = "no token"
		}
		t.Run(name, func(t *testing.T) { roomdOnMediaMTX(t, token) })
	}
}

func roomdOnMediaMTX(t *testing.T, token string) {
	srv := mediamtx.Start(t, token)
	cfg := fmt.Sprintf("[conference]\nconnector = \"whip\"\nurl = %q\nvideo_codec = \"VP8\"\n", srv.WHIP(mediamtx.Path))
	if token != "" {
		cfg += fmt.Sprintf("token = %q\n", token)
	}
	u := startUnit(t, cfg)
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for ready := false; !ready; time.Sleep(20 * time.Millisecond) {
		var err error
		if ready, err = srv.Ready(ctx, mediamtx.Path); err != nil || ctx.Err() != nil {
			t.Fatalf("MediaMTX path never ready: %v %v", err, ctx.Err())
		}
	}
	r, err := mediamtx.Read(ctx, srv.WHEP(mediamtx.Path))
	if err != nil {
		t.Fatalf("WHEP read: %v", err)
	}
	defer r.Close()
	wait := func(what string, cond func([]mediamtx.Frame) bool) {
		t.Helper()
		if _, err := r.WaitFor(ctx, cond); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	last := func(fs []mediamtx.Frame) (mediamtx.Frame, bool) {
		for i := len(fs) - 1; i >= 0; i-- {
			if fs[i].Decoded {
				return fs[i], true
			}
		}
		return mediamtx.Frame{}, false
	}
	wait("the room's picture", func(fs []mediamtx.Frame) bool { f, ok := last(fs); return ok && !f.Uniform })

	u.press("privacy")
	u.waitFor("gate shut", 5*time.Second, func(e appliance.Event) bool { return e.Type == "gate" && !e.Gate.Video })
	shut := time.Now()
	wait("the slate", func(fs []mediamtx.Frame) bool { f, ok := last(fs); return ok && f.Uniform && f.At.After(shut) })
	time.Sleep(300 * time.Millisecond)
	settled := time.Now()
	time.Sleep(1500 * time.Millisecond)
	for _, f := range r.Frames() {
		if f.At.After(settled) && (!f.Key || !f.Uniform) {
			t.Fatalf("in privacy the reader got a frame that is not the slate: %+v", f)
		}
	}

	u.press("leave")
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	deadline := time.Now().Add(5 * time.Second)
	for {
		ss, err := srv.Sessions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		publishing := 0
		for _, s := range ss {
			if s.State == "publish" {
				publishing++
			}
		}
		if publishing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s after LEAVE MediaMTX still lists the unit's session: %+v", ss)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if f, ok := last(r.Frames()); !ok || !f.Uniform {
		t.Fatalf("the reader's last picture after LEAVE is not the slate: %+v", f)
	}
}

// MediaMTX stops mid-call: the unit fails closed as on LiveKit (fault with
// a reason, gate shut, shutter closed, LED fault).
func TestRoomdMediaMTXStopsMidCall(t *testing.T) {
	srv := mediamtx.Start(t, "")
	u := startUnit(t, fmt.Sprintf("[conference]\nconnector = \"whip\"\nurl = %q\nvideo_codec = \"VP8\"\n", srv.WHIP(mediamtx.Path)))
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	srv.Stop()
	u.waitFor("fault", 30*time.Second, isState(appliance.Fault))
	s := u.status()
	if s.LED != "fault" || s.LastError == "" || s.Sim.Shutter.Position != "closed" || s.Gate.Live() {
		t.Fatalf("after MediaMTX stopped: %+v shutter %s", s.Status, s.Sim.Shutter.Position)
	}
	t.Logf("reason shown: %s", s.LastError)
}
