package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// Update is the [update] section (docs/UPDATES.md).
type Update struct {
	// Dir is where roomd writes its requests for the root helper
	// konsult-update and reads the state it writes (local only).
	Dir string `toml:"dir"`
	// RebootWindow ("HH:MM-HH:MM", the unit's local time; it may cross
	// midnight) is when an update sent with reboot=window reboots the
	// unit; empty: as soon as it is installed and the unit is idle.
	RebootWindow string `toml:"reboot_window"`
}

// UpdateDir is update.dir, or its default: /var/lib/konsult/update, and
// for a simulated unit a folder next to its API socket.
func (c *Config) UpdateDir(simulate bool) string {
	if c.Update.Dir != "" {
		return c.Update.Dir
	}
	if simulate {
		return filepath.Join(filepath.Dir(c.API.Socket), "sim-update")
	}
	return "/var/lib/konsult/update"
}

func (u Update) validate() error {
	if _, err := ParseWindow(u.RebootWindow); err != nil {
		return fmt.Errorf("update.reboot_window: %w", err)
	}
	return nil
}

// Window is a daily maintenance window in local time; the zero Window
// (none) contains every moment.
type Window struct {
	Start, End time.Duration // since midnight
	Set        bool
}

// ParseWindow reads "HH:MM-HH:MM"; "" is no window.
func ParseWindow(s string) (Window, error) {
	if s == "" {
		return Window{}, nil
	}
	var h1, m1, h2, m2 int
	var rest string
	n, _ := fmt.Sscanf(s, "%2d:%2d-%2d:%2d%s", &h1, &m1, &h2, &m2, &rest)
	if n != 4 || len(s) != len("02:00-04:00") || h1 > 23 || h2 > 23 || m1 > 59 || m2 > 59 || h1 < 0 || h2 < 0 || m1 < 0 || m2 < 0 {
		return Window{}, fmt.Errorf("%q is not a window: use HH:MM-HH:MM, e.g. \"02:00-04:00\"", s)
	}
	w := Window{Start: time.Duration(h1)*time.Hour + time.Duration(m1)*time.Minute,
		End: time.Duration(h2)*time.Hour + time.Duration(m2)*time.Minute, Set: true}
	if w.Start == w.End {
		return Window{}, fmt.Errorf("%q starts where it ends: give a window of at least a minute", s)
	}
	return w, nil
}

// Contains says whether t (in its own location) is inside the window.
func (w Window) Contains(t time.Time) bool {
	if !w.Set {
		return true
	}
	d := time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute + time.Duration(t.Second())*time.Second
	if w.Start < w.End {
		return d >= w.Start && d < w.End
	}
	return d >= w.Start || d < w.End // crosses midnight
}
