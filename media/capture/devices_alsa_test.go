//go:build cgo && !upstreammic

package capture

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"
)

// The capture callback's buffer is miniaudio's and is refilled with the
// next period as soon as the callback returns: what the reader gets must be
// the chunk as it was at the callback, never what the buffer holds later
// (pion/mediadevices issue 500: its driver handed the buffer itself on).
func TestMicQueueKeepsEachChunkAsCaptured(t *testing.T) {
	var dropped atomic.Uint64
	q := newChunkQueue(32, &dropped)
	buf := make([]byte, 8) // the device's one buffer, reused per period
	for period := byte(1); period <= 3; period++ {
		for i := range buf {
			buf[i] = period
		}
		q.push(buf)
	}
	for period := byte(1); period <= 3; period++ {
		got, release, ok := q.pop()
		if !ok {
			t.Fatalf("period %d: queue closed", period)
		}
		if want := bytes.Repeat([]byte{period}, 8); !bytes.Equal(got, want) {
			t.Fatalf("period %d: the reader got %v, want %v (the device's buffer as refilled later)", period, got, want)
		}
		release()
	}
}

// A reader that falls behind never holds up the device's thread (ALSA's
// ring would overrun: a gap at the device): the queue drops and counts.
func TestMicQueueNeverBlocksTheDevice(t *testing.T) {
	var dropped atomic.Uint64
	q := newChunkQueue(3, &dropped) // bytes: three 1-byte chunks
	done := make(chan struct{})
	go func() {
		for i := 0; i < 10; i++ {
			q.push([]byte{byte(i)})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("push blocked with no reader")
	}
	if got := dropped.Load(); got != 7 {
		t.Fatalf("dropped %d chunks, want 7 (10 pushed into a queue of 3)", got)
	}
	b, release, _ := q.pop()
	release()
	if b[0] != 0 {
		t.Fatalf("first chunk read is %d, want the oldest (0)", b[0])
	}
	popped := make(chan bool)
	go func() {
		for {
			_, rel, ok := q.pop()
			if !ok {
				popped <- false
				return
			}
			rel()
		}
	}()
	time.Sleep(50 * time.Millisecond)
	q.close()
	select {
	case ok := <-popped:
		if ok {
			t.Fatal("pop after close returned a chunk")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("close did not wake a waiting reader")
	}
}
