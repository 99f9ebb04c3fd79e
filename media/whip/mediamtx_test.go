package whip_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/mediamtx"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/whip"
)

// The token MediaMTX's auth hook wants; it must appear in no error.
const mtxToken = "mtx-Bearer-7f3c9a1e5d2b4c6a"

// unitOn is the unit's WHIP connector as roomd builds it for connector
// "whip": endpoint as configured, bearer token optional, VP8.
func unitOn(t *testing.T, endpoint, token string) (*livekit.WHIPConnector, *gate.Gate) {
	t.Helper()
	g := gate.New()
	conn, err := livekit.NewWHIP(livekit.Config{
		URL: endpoint, PlainWHIP: true, Room: "whip", Identity: "unit-1", Token: token,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "VP8", VideoBitRate: 1_000_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice},
		g, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	return conn, g
}

func waitFrames(t *testing.T, r *mediamtx.Reader, what string, d time.Duration, cond func([]mediamtx.Frame) bool) []mediamtx.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	fs, err := r.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("WHEP reader: %s: %v", what, err)
	}
	return fs
}

func lastDecoded(fs []mediamtx.Frame) (mediamtx.Frame, bool) {
	for i := len(fs) - 1; i >= 0; i-- {
		if fs[i].Decoded {
			return fs[i], true
		}
	}
	return mediamtx.Frame{}, false
}

// The unit publishes to MediaMTX over WHIP with a bearer token; a WHEP
// reader decodes the room's picture. PRIVACY: the reader gets the slate
// (flat key frames) and no camera frame is encoded; LEAVE deletes the
// session (MediaMTX lists no publisher, the path is not ready) and the
// reader gets nothing more: the last picture it has is the slate.
func TestMediaMTXSlateThenNothing(t *testing.T) {
	srv := mediamtx.Start(t, mtxToken)
	conn, g := unitOn(t, srv.WHIP(mediamtx.Path), mtxToken)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join MediaMTX %s over WHIP: %v", mediamtx.Version, err)
	}
	defer func() { _ = call.Leave(context.Background()) }()
	g.Set(gate.State{Video: true, Audio: true})

	for ready := false; !ready; time.Sleep(20 * time.Millisecond) {
		if ready, err = srv.Ready(ctx, mediamtx.Path); err != nil || ctx.Err() != nil {
			t.Fatalf("path %q never ready: %v %v", mediamtx.Path, err, ctx.Err())
		}
	}
	r, err := mediamtx.Read(ctx, srv.WHEP(mediamtx.Path))
	if err != nil {
		t.Fatalf("WHEP read: %v", err)
	}
	defer r.Close()
	fs := waitFrames(t, r, "the room's picture (a decoded key frame, not flat)", 15*time.Second, func(fs []mediamtx.Frame) bool {
		f, ok := lastDecoded(fs)
		return ok && !f.Uniform && f.Width == 640 && f.Height == 480
	})
	f, _ := lastDecoded(fs)
	t.Logf("reader decodes the room: %dx%d, luma std-dev %.1f, %d frames, %d audio packets", f.Width, f.Height, f.StdDev, len(fs), r.AudioPackets())
	if r.AudioPackets() == 0 {
		t.Error("no audio reached the reader")
	}

	g.Set(gate.State{})
	shut := time.Now()
	waitFrames(t, r, "the slate", 5*time.Second, func(fs []mediamtx.Frame) bool {
		f, ok := lastDecoded(fs)
		return ok && f.Uniform && f.At.After(shut)
	})
	time.Sleep(300 * time.Millisecond) // a frame already in the encoder finishes
	settled := time.Now()
	n0 := conn.Counters().VideoFrames.Load()
	time.Sleep(2 * time.Second)
	var slates int
	for _, f := range r.Frames() {
		if !f.At.After(settled) {
			continue
		}
		if !f.Key || !f.Decoded || !f.Uniform {
			t.Fatalf("with the gate shut the reader got a frame that is not the slate: %+v", f)
		}
		slates++
	}
	if slates < 4 { // one every 250 ms at least
		t.Fatalf("%d slates in 2 s with the gate shut, want one every 250 ms", slates)
	}
	if n := conn.Counters().VideoFrames.Load() - n0; n != 0 {
		t.Fatalf("%d camera frames reached the encoder with the gate shut", n)
	}

	if err := call.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	left := time.Now()
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
		ready, err := srv.Ready(ctx, mediamtx.Path)
		if err != nil {
			t.Fatal(err)
		}
		if publishing == 0 && !ready {
			break
		}
		if time.Since(left) > 3*time.Second {
			t.Fatalf("3 s after LEAVE MediaMTX still has the unit's session (%d publishing, path ready %v)", publishing, ready)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("LEAVE → MediaMTX has no publisher: %s", time.Since(left).Round(time.Millisecond))
	time.Sleep(time.Second)
	fs = r.Frames()
	var after int
	for _, f := range fs {
		if f.At.After(left.Add(200 * time.Millisecond)) {
			after++
		}
	}
	if after != 0 {
		t.Fatalf("the reader got %d frames after LEAVE", after)
	}
	if f, ok := lastDecoded(fs); !ok || !f.Uniform {
		t.Fatalf("the last picture the reader has is not the slate: %+v", f)
	}
}

// The WHIP error paths against MediaMTX: an unknown path, a bad or missing
// token, a server that is gone. Each refuses the join with the error a
// person can act on, and the token is in none of them.
func TestMediaMTXErrorPaths(t *testing.T) {
	srv := mediamtx.Start(t, mtxToken)
	join := func(endpoint, token string) error {
		t.Helper()
		conn, _ := unitOn(t, endpoint, token)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		call, err := conn.Join(ctx)
		if err == nil {
			_ = call.Leave(ctx)
			return nil
		}
		if strings.Contains(err.Error(), mtxToken) {
			t.Fatalf("the error shows the token: %v", err)
		}
		return err
	}
	for _, tc := range []struct {
		name, endpoint, token string
		want                  error
		says                  string // the server's reason, passed on
	}{
		// MediaMTX answers 400 (not 404) for a path it does not have; the
		// error carries its reason.
		{"unknown path", srv.WHIP("no-such-room"), mtxToken, whip.ErrOfferRejected, "path 'no-such-room' is not configured"},
		{"bad token", srv.WHIP(mediamtx.Path), "mtx-Bearer-wrong", whip.ErrTokenRejected, "authentication error"},
		{"no token", srv.WHIP(mediamtx.Path), "", whip.ErrTokenRejected, "authentication error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := join(tc.endpoint, tc.token)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("join: %v, want %v saying %q", err, tc.want, tc.says)
			}
			t.Logf("refused: %v", err)
		})
	}
	if ss, _ := srv.Sessions(context.Background()); len(ss) != 0 {
		t.Fatalf("refused joins left sessions: %+v", ss)
	}
	// The right token works (so the refusals above were about the token).
	if err := join(srv.WHIP(mediamtx.Path), mtxToken); err != nil {
		t.Fatalf("join with the right token: %v", err)
	}
	srv.Stop()
	t.Run("server stopped", func(t *testing.T) {
		err := join(srv.WHIP(mediamtx.Path), mtxToken)
		if !errors.Is(err, whip.ErrUnreachable) {
			t.Fatalf("join: %v, want %v", err, whip.ErrUnreachable)
		}
		t.Logf("refused: %v", err)
	})
}
