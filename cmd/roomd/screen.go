package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/appliance/unit"
	"github.com/konsult/konsult/media/display"
)

// screenParts is the unit's own screen ([display]); nil without one.
type screenParts struct{ s *screen.Screen }

func openScreen(cfg *config.Config, log *slog.Logger, selfKeyframe func()) (*screenParts, error) {
	if !cfg.Display.Enabled {
		return nil, nil
	}
	s, err := screen.Open(screen.Options{Listen: cfg.Display.Listen, URLFile: cfg.Display.URLFile, Room: cfg.ScreenRoom(),
		Language: cfg.Display.Language, SelfKeyframe: selfKeyframe, Log: log})
	if err != nil {
		return nil, err
	}
	return &screenParts{s}, nil
}

func (p *screenParts) origin() string {
	if p == nil {
		return ""
	}
	return p.s.Origin()
}

func (p *screenParts) display() *display.Display {
	if p == nil {
		return nil
	}
	return p.s.Display
}

func (p *screenParts) serve(u *unit.Unit, stdout io.Writer) error {
	if p == nil {
		return nil
	}
	line, err := p.s.Serve(u.Appliance(), u.NextStart)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, line)
	return nil
}

func (p *screenParts) close() {
	if p != nil {
		p.s.Close()
	}
}
