package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/appliance/unit"
	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/gate"
)

// kioskGroup may read the screen's URL file: the kiosk browser's user.
const kioskGroup = "konsult-kiosk"

// screenParts is the unit's own screen: the display feed, the page's
// listener and its server. It lives as long as roomd, across config changes.
type screenParts struct {
	disp    *display.Display
	l       net.Listener
	srv     *screen.Server
	secret  string
	urlFile string
}

// openScreen opens the display feed and the page's listener ([display]);
// nil without a screen. selfKeyframe reaches the unit made after it.
func openScreen(cfg *config.Config, log *slog.Logger, selfKeyframe func()) (*screenParts, error) {
	if !cfg.Display.Enabled {
		return nil, nil
	}
	// The display follows each opening's gate (unit.screenHooks); this
	// one, shut, stands in until the first.
	disp, err := display.New(display.Config{Gate: gate.New(), SelfKeyframe: selfKeyframe, Log: log})
	if err != nil {
		return nil, fmt.Errorf("screen: %w", err)
	}
	l, err := screen.Listen(cfg.Display.Listen)
	if err != nil {
		disp.Close()
		return nil, fmt.Errorf("screen (display.listen): %w", err)
	}
	s := &screenParts{disp: disp, l: l, urlFile: cfg.Display.URLFile}
	if s.urlFile != "" {
		// Only who reads the file (the kiosk) can read the screen.
		s.secret = screen.NewSecret()
	}
	return s, nil
}

// origin is the page's address without its secret, for the status.
func (s *screenParts) origin() string {
	if s == nil {
		return ""
	}
	return screen.Origin(s.l) + "/"
}

func (s *screenParts) display() *display.Display {
	if s == nil {
		return nil
	}
	return s.disp
}

// serve starts the page's server on the unit, writes the kiosk's URL file
// and prints the display line.
func (s *screenParts) serve(cfg *config.Config, u *unit.Unit, log *slog.Logger, stdout io.Writer) error {
	if s == nil {
		return nil
	}
	room := cfg.Display.Room
	if room == "" {
		room = cfg.Conference.Room
	}
	srv, err := screen.New(screen.Config{Room: room, Language: cfg.Display.Language, Unit: u.Appliance(), Media: s.disp, Secret: s.secret, Log: log})
	if err != nil {
		return err
	}
	s.srv = srv
	go func() { _ = srv.Serve(s.l) }()
	if s.urlFile != "" {
		if err := writeURLFile(s.urlFile, srv.URL(s.l)); err != nil {
			return fmt.Errorf("screen (display.url_file): %w", err)
		}
		// The line never carries the secret (invariant 7).
		fmt.Fprintf(stdout, "display: %s (the kiosk's URL, with its key, is in %s)\n", s.origin(), s.urlFile)
		return nil
	}
	fmt.Fprintf(stdout, "display: %s\n", srv.URL(s.l))
	return nil
}

// writeURLFile writes the URL for the kiosk: readable by roomd and the
// kiosk's group only.
func writeURLFile(path, url string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	if err := atomicfile.Write(path, []byte(url+"\n"), 0o640); err != nil {
		return err
	}
	if g, err := user.LookupGroup(kioskGroup); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil {
			if err := os.Chown(path, -1, gid); err != nil {
				return fmt.Errorf("give the kiosk's group %s the URL file: %w", kioskGroup, err)
			}
		}
	}
	return nil
}

func (s *screenParts) close() {
	if s == nil {
		return
	}
	if s.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.srv.Shutdown(ctx)
		cancel()
	} else {
		s.l.Close()
	}
	if s.urlFile != "" {
		_ = os.Remove(s.urlFile)
	}
	s.disp.Close()
}
