package screen

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/gate"
)

// KioskGroup may read the URL file: the kiosk browser's user is in it.
const KioskGroup = "konsult-kiosk"

// Options opens the unit's own screen ([display]).
type Options struct {
	Listen string // loopback host:port
	// URLFile, if set, receives the page's full URL with a fresh secret
	// (0640, group KioskGroup when it exists): only the kiosk can read the
	// screen. Without it the page has no secret (a desktop --sim unit).
	URLFile        string
	Room, Language string
	// SelfKeyframe asks the unit's running encoder for a keyframe.
	SelfKeyframe func()
	Log          *slog.Logger
}

// Screen is the unit's own screen for the life of roomd: the display feed
// (handed to the unit, which follows each opening's gate and calls), the
// page's listener and its server.
type Screen struct {
	Display *display.Display
	o       Options
	l       net.Listener
	srv     *Server
	secret  string
}

// Open starts the display feed and listens for the page; Serve starts
// serving it once the unit exists.
func Open(o Options) (*Screen, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	// The display follows each opening's gate (the unit calls SetGate);
	// this one, shut, stands in until the first.
	disp, err := display.New(display.Config{Gate: gate.New(), SelfKeyframe: o.SelfKeyframe, Log: o.Log})
	if err != nil {
		return nil, fmt.Errorf("screen: %w", err)
	}
	l, err := Listen(o.Listen)
	if err != nil {
		disp.Close()
		return nil, fmt.Errorf("screen (display.listen): %w", err)
	}
	s := &Screen{Display: disp, o: o, l: l}
	if o.URLFile != "" {
		s.secret = NewSecret()
	}
	return s, nil
}

// Origin is the page's address without its secret: what may be printed
// and shown in the status.
func (s *Screen) Origin() string { return Origin(s.l) + "/" }

// Serve serves the page with the unit's state, and writes the URL file. It
// returns the line to print: the full URL without a URL file, else the
// origin and where the kiosk's URL is (never the secret, invariant 7).
// next, if set, is the start of the unit's next booked consultation.
func (s *Screen) Serve(u Unit, next func() (time.Time, bool)) (line string, err error) {
	srv, err := New(Config{Room: s.o.Room, Language: s.o.Language, Unit: u, Media: s.Display, Secret: s.secret, Log: s.o.Log, Next: next})
	if err != nil {
		return "", err
	}
	s.srv = srv
	go func() { _ = srv.Serve(s.l) }()
	if s.o.URLFile == "" {
		return "display: " + srv.URL(s.l), nil
	}
	if err := writeURLFile(s.o.URLFile, srv.URL(s.l)); err != nil {
		return "", fmt.Errorf("screen (display.url_file): %w", err)
	}
	return fmt.Sprintf("display: %s (the kiosk's URL, with its key, is in %s)", s.Origin(), s.o.URLFile), nil
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
	if g, err := user.LookupGroup(KioskGroup); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil {
			if err := os.Chown(path, -1, gid); err != nil {
				return fmt.Errorf("give the kiosk's group %s the URL file: %w", KioskGroup, err)
			}
		}
	}
	return nil
}

// Close stops the page's server, removes the URL file (its secret dies
// with this run) and ends the display feed.
func (s *Screen) Close() {
	if s.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.srv.Shutdown(ctx)
		cancel()
	} else {
		s.l.Close()
	}
	if s.o.URLFile != "" {
		_ = os.Remove(s.o.URLFile)
	}
	s.Display.Close()
}
