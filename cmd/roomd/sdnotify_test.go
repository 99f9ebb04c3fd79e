package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// notifySocket is what systemd listens on for a Type=notify service.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return path, msgs
}

func expect(t *testing.T, msgs <-chan string, want string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-msgs:
			if m == want {
				return
			}
		case <-deadline:
			t.Fatalf("systemd never got %q within %s", want, within)
		}
	}
}

// Under systemd (Type=notify, WatchdogSec), roomd says READY=1 once its API
// serves, feeds the watchdog while the unit answers, and says STOPPING=1 on
// SIGTERM, which is what systemctl start/stop and the watchdog wait for.
func TestRoomdNotifiesSystemd(t *testing.T) {
	path, msgs := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "300000") // fed every 100 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	u := startUnit(t, "[fleet]\nenabled = false\n")
	expect(t, msgs, "READY=1", time.Second)
	expect(t, msgs, "WATCHDOG=1", 2*time.Second)
	expect(t, msgs, "WATCHDOG=1", 2*time.Second)
	if err := u.shutdown(); err != nil {
		t.Fatalf("roomd: %v", err)
	}
	expect(t, msgs, "STOPPING=1", time.Second)
}

// A unit whose state machine stops answering must starve the watchdog, so
// systemd kills and restarts roomd.
func TestWatchdogStarvesWhenTheUnitHangs(t *testing.T) {
	path, msgs := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	hung := make(chan struct{})
	defer close(hung)
	go feedWatchdog(ctx, 20*time.Millisecond, func(context.Context) error { <-hung; return nil }, sdNotify, log)
	select {
	case m := <-msgs:
		t.Fatalf("a hung unit fed the watchdog: %q", m)
	case <-time.After(300 * time.Millisecond):
	}
}

// WATCHDOG_PID names the process the watchdog is meant for; a child that
// inherits the environment must not feed it.
func TestWatchdogPeriod(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if got := watchdogPeriod(); got != 10*time.Second {
		t.Errorf("WatchdogSec=30s: fed every %s, want 10s", got)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if got := watchdogPeriod(); got != 0 {
		t.Errorf("watchdog meant for pid 1 but roomd would feed it every %s", got)
	}
	t.Setenv("WATCHDOG_USEC", "")
	if got := watchdogPeriod(); got != 0 {
		t.Errorf("no WatchdogSec, yet roomd would feed every %s", got)
	}
}
