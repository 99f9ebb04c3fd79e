// Command screenstub stands in for roomd's display server in the image's
// boot test, until roomd serves the page itself ([display] enabled): it
// serves appliance/screen's real page for an idle unit on 127.0.0.1:8788,
// writes the page's URL to /run/konsult/display.url and tells systemd it is
// ready, which is the contract roomd keeps (image/README.md "The screen").
// The boot test injects it only into an image whose roomd does not know
// display.url; it is never shipped.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
)

// idleUnit is a unit that stays idle with its shutter closed.
type idleUnit struct{ since time.Time }

func (u idleUnit) Status() appliance.Status {
	return appliance.Status{State: appliance.Idle, Since: u.since, Shutter: "closed", LED: "off"}
}

func (idleUnit) Subscribe(n int) (<-chan appliance.Event, func()) {
	return make(chan appliance.Event, n), func() {}
}

func main() {
	if err := run(); err != nil {
		slog.Error("screenstub", "err", err)
		os.Exit(1)
	}
}

func run() error {
	path := flag.String("url-file", "/run/konsult/display.url", "where the page's URL goes")
	addr := flag.String("listen", "127.0.0.1:8788", "the page's loopback address")
	flag.Parse()
	srv, err := screen.New(screen.Config{Room: "Boot Room", Unit: idleUnit{since: time.Now()}, Secret: screen.NewSecret()})
	if err != nil {
		return err
	}
	l, err := screen.Listen(*addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := os.WriteFile(*path+".new", []byte(srv.URL(l)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write display url: %w", err)
	}
	if err := os.Rename(*path+".new", *path); err != nil {
		return fmt.Errorf("write display url: %w", err)
	}
	if err := notifyReady(); err != nil {
		return err
	}
	slog.Info("serving the idle screen", "origin", screen.Origin(l))
	return srv.Serve(l)
}

func notifyReady() error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("READY=1")); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}
