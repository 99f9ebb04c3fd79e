package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// sdNotify sends one state message to the service manager (sd_notify(3)):
// READY=1, WATCHDOG=1, STOPPING=1. Outside systemd ($NOTIFY_SOCKET unset:
// a terminal, --sim, the tests) it does nothing, so roomd needs no flag to
// tell where it runs.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // an abstract socket, as systemd writes it
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// watchdogPeriod is how often to feed systemd's watchdog: a third of
// WatchdogSec, so one slow answer from the unit does not cost a restart.
// Zero means no watchdog is asked for (or it is meant for another process).
func watchdogPeriod() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 3
}

// feedWatchdog sends WATCHDOG=1 every period, but only after alive has
// answered. alive asks the state machine itself, so a process that is
// scheduled but whose decision loop is stuck stops feeding and systemd
// restarts it (releasing the pins closes the shutter). A check still
// running when the next tick comes is waited for, never overlapped: a hang
// must starve the watchdog, not pile up goroutines.
func feedWatchdog(ctx context.Context, period time.Duration, alive func(context.Context) error, notify func(string) error, log *slog.Logger) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		checkCtx, cancel := context.WithTimeout(ctx, period)
		done := make(chan error, 1)
		go func() { done <- alive(checkCtx) }()
		var err error
		select {
		case err = <-done:
		case <-checkCtx.Done():
			log.Error("watchdog: the unit did not answer in time; systemd restarts roomd if this lasts", "waited", period)
			err = <-done
		}
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("watchdog: not fed", "err", err)
			}
			continue
		}
		if err := notify("WATCHDOG=1"); err != nil {
			log.Warn("watchdog: notify failed", "err", err)
		}
	}
}
