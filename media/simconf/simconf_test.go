package simconf

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
)

func TestGateDecidesWhatReachesTheSink(t *testing.T) {
	g := gate.New()
	c := New(Config{Gate: g, JoinDelay: time.Millisecond})
	call, err := c.Join(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		start := time.Now()
		_ = call.Leave(context.Background())
		if d := time.Since(start); d > time.Second {
			t.Errorf("Leave took %s: the camera must be released promptly", d)
		}
	}()

	time.Sleep(200 * time.Millisecond)
	if s := c.Stats(); s.VideoFrames != 0 || s.AudioChunks != 0 {
		t.Fatalf("gate shut, but the sink got %d frames and %d chunks", s.VideoFrames, s.AudioChunks)
	}

	g.Set(gate.State{Video: true, Audio: true})
	time.Sleep(400 * time.Millisecond)
	open := c.Stats()
	if open.VideoFrames < 5 || open.AudioChunks < 10 {
		t.Fatalf("gate open for 400ms: %d frames, %d chunks", open.VideoFrames, open.AudioChunks)
	}

	g.Set(gate.State{})
	closedAt := c.Stats()
	time.Sleep(300 * time.Millisecond)
	after := c.Stats()
	if after.VideoFrames != closedAt.VideoFrames || after.AudioChunks != closedAt.AudioChunks {
		t.Fatalf("frames kept arriving after the gate shut: %+v then %+v", closedAt, after)
	}
	if !after.LastIsSlate || after.Slates < 2*capture.SlatesPerClose { // repeated while shut
		t.Fatalf("last picture is not the privacy slate: %+v", after)
	}
}

func TestDropEndsTheCall(t *testing.T) {
	c := New(Config{Gate: gate.New(), JoinDelay: time.Millisecond})
	call, err := c.Join(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Drop(errors.New("server gone"))
	select {
	case err := <-call.Ended():
		if err == nil || err.Error() != "server gone" {
			t.Fatalf("ended with %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Drop did not end the call")
	}
	if _, err := c.Join(context.Background()); err != nil {
		t.Fatalf("cannot join again after a drop: %v", err)
	}
}

func TestFailNextJoin(t *testing.T) {
	c := New(Config{Gate: gate.New(), JoinDelay: time.Millisecond})
	c.FailNextJoin(errors.New("401 token rejected"))
	if _, err := c.Join(context.Background()); err == nil {
		t.Fatal("join succeeded despite the injected failure")
	}
}
