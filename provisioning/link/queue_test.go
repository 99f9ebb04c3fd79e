package link_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/link"
)

// TestQueueIsBounded: with the broker away, events wait on disk up to
// MaxQueued; the next one is refused (the newest goes), and so is an audit
// record, which the agent keeps in the audit log instead. What was queued
// stays on disk across a reopen.
func TestQueueIsBounded(t *testing.T) {
	dir := t.TempDir()
	l, err := link.Open(link.Options{Broker: "tcp://127.0.0.1:1", DeviceID: "unit-a", StoreDir: dir, MaxQueued: 5})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := l.PublishEvent(link.Event{Type: "button"}); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.Queued() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := l.Queued(); n != 5 {
		t.Fatalf("%d queued, want 5", n)
	}
	if _, err := l.PublishEvent(link.Event{Type: "button"}); !errors.Is(err, link.ErrQueueFull) {
		t.Fatalf("6th event: %v, want ErrQueueFull", err)
	}
	if err := l.PublishAudit([]byte(`{"seq":1}`)); !errors.Is(err, link.ErrQueueFull) {
		t.Fatalf("audit record past the bound: %v, want ErrQueueFull", err)
	}
	l.Close()
	files, _ := os.ReadDir(dir)
	n := 0
	for _, f := range files {
		if strings.HasPrefix(f.Name(), "o.") {
			n++
		}
	}
	if n != 5 {
		t.Fatalf("%d messages on disk after close, want 5", n)
	}
	l2, err := link.Open(link.Options{Broker: "tcp://127.0.0.1:1", DeviceID: "unit-a", StoreDir: dir, MaxQueued: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	for l2.Queued() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := l2.PublishEvent(link.Event{Type: "button"}); !errors.Is(err, link.ErrQueueFull) {
		t.Fatalf("after reopen, queue of %d took another event: %v", l2.Queued(), err)
	}
}
