package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Activator makes NetworkManager load the keyfiles Apply wrote and bring
// the named connections up.
//
// On an error the new network config is not in use and may have cut the
// unit off: the caller rolls back by calling Apply with the previous files
// (Current, taken before the Apply) and Activate with their ids, then
// reports the failure. Success only means NetworkManager brought a
// connection up; the caller must still confirm that the fleet broker is
// reachable over it, and roll back the same way if not.
type Activator interface {
	Activate(ctx context.Context, names []string) error
}

// NMCLI is an Activator that runs nmcli: `nmcli connection reload`, then
// `nmcli --wait <s> connection up id <name>` for the names in order.
//
// The names are tried in order. konsult-eth* profiles are each tried. Of
// the konsult-wifi-* profiles only the first that comes up is kept: the
// rest are not tried (bringing another one up would replace it on the
// same radio); NetworkManager's autoconnect by priority takes over from
// there. Activate succeeds if at least one connection came up (a unit with
// Ethernet and Wi-Fi profiles may have no cable); otherwise it returns
// every failure. Pass Config.ConnectionIDs for the right order.
//
// Running it needs root or a polkit rule that grants
// org.freedesktop.NetworkManager.settings.modify.system and
// network-control to roomd's user.
type NMCLI struct {
	// Path is the nmcli executable; empty means "nmcli" on $PATH.
	Path string
	// Env is added to nmcli's environment (e.g. LD_LIBRARY_PATH).
	Env []string
	// Wait bounds each `connection up`; zero means 30s. The context's
	// deadline also applies.
	Wait time.Duration
}

// Activate implements Activator.
func (n NMCLI) Activate(ctx context.Context, names []string) error {
	for _, name := range names {
		if !Owned(name + Suffix) {
			return fmt.Errorf("network: activate: %q is not a konsult connection", name)
		}
	}
	if _, err := n.run(ctx, "connection", "reload"); err != nil {
		return fmt.Errorf("network: activate: %w", err)
	}
	wait := n.Wait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	secs := strconv.Itoa(int((wait + time.Second - 1) / time.Second))
	var errs []error
	up, wifiUp := 0, false
	for _, name := range names {
		isWiFi := strings.HasPrefix(name, Prefix+"wifi-")
		if isWiFi && wifiUp {
			continue
		}
		if _, err := n.run(ctx, "--wait", secs, "connection", "up", "id", name); err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		up++
		wifiUp = wifiUp || isWiFi
	}
	if up == 0 && len(errs) > 0 {
		return fmt.Errorf("network: activate: no connection came up: %w", errors.Join(errs...))
	}
	return nil
}

func (n NMCLI) run(ctx context.Context, args ...string) ([]byte, error) {
	path := n.Path
	if path == "" {
		path = "nmcli"
	}
	cmd := exec.CommandContext(ctx, path, args...)
	if len(n.Env) > 0 {
		cmd.Env = append(cmd.Environ(), n.Env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nmcli %s: %w: %s", strings.Join(args, " "), err, firstLine(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// firstLine keeps an nmcli message to one short line.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		return "(no message)"
	}
	return s
}
