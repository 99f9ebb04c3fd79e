package farend

import (
	"context"
	"testing"
	"time"
)

// TestLowLatency: a watcher with LowLatency has its video receiver's
// jitterBufferTarget read back as 0 and its frames held <= 5 ms each in
// the jitter buffer (getStats); a watcher without it is left at the browser's own choice
// (nothing set), so the many tests sharing the page are unchanged.
func TestLowLatency(t *testing.T) {
	lk := StartLiveKit(t)
	const room = "low-latency"
	StartFarEnd(t, lk, room, "clinic-fake", Publish())
	low := StartFarEnd(t, lk, room, "patient-low", Watch("clinic-fake"), LowLatency())
	def := StartFarEnd(t, lk, room, "patient-default", Watch("clinic-fake"))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	decoding := func(s FarEndStats) bool { return s.VideoJitterBuffer.Emitted >= 60 }
	for _, fe := range []*FarEnd{low, def} {
		if _, err := fe.WaitFor(ctx, decoding); err != nil {
			t.Fatalf("%s never decoded 60 frames: %v", fe.Identity, err)
		}
	}
	l0, d0 := low.Stats().VideoJitterBuffer, def.Stats().VideoJitterBuffer
	time.Sleep(2 * time.Second)
	l1, d1 := low.Stats().VideoJitterBuffer, def.Stats().VideoJitterBuffer

	if l1.SetTarget == nil || *l1.SetTarget != 0 {
		t.Fatalf("LowLatency: jitterBufferTarget read back %v, want 0", l1.SetTarget)
	}
	if d1.SetTarget != nil {
		t.Fatalf("default page set jitterBufferTarget to %v", *d1.SetTarget)
	}
	li, di := l1.Since(l0), d1.Since(d0)
	if li.Frames < 20 || di.Frames < 20 {
		t.Fatalf("frames through the jitter buffer in 2 s: low %d, default %d; want >= 20 each", li.Frames, di.Frames)
	}
	// What the option is for: frames no longer wait for a smoothed render
	// time (the default holds ~7-25 ms a frame here).
	if li.Delay > 5*time.Millisecond {
		t.Errorf("LowLatency: %v a frame in the jitter buffer, want <= 5 ms", li.Delay)
	}
	t.Logf("per frame: low latency jitter buffer %v (target %v, minimum %v), default %v (target %v, minimum %v)",
		li.Delay, li.Target, li.Minimum, di.Delay, di.Target, di.Minimum)
}
