package localapi

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ListenUnix listens on a unix socket that only the unit's user can use
// (mode 0600), replacing a stale socket left by a crash. In the shared
// temp dir's fallback folder ($TMPDIR/konsult-<uid>) it first makes sure
// the folder is this user's own (privateDir).
func ListenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if dir == fallbackSocketDir() {
		if err := privateDir(dir, true); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is in use: is another roomd running?", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict socket %s to mode 0600: %w", path, err)
	}
	return l, nil
}

// PrepareSocketDir checks (and makes, 0700) the folder of socket when it is
// the temp dir's fallback folder; other folders are left to ListenUnix.
// roomd calls it before anything else writes there: in --sim the unit's
// key and the demo fleet's signing key live beside the socket.
func PrepareSocketDir(socket string) error {
	if dir := filepath.Dir(socket); dir == fallbackSocketDir() {
		return privateDir(dir, true)
	}
	return nil
}

// ListenLoopback listens on addr, which must be a loopback address: the API
// has no authentication beyond "you are on the unit".
func ListenLoopback(addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("http address %q: want ip:port such as 127.0.0.1:8787: %w", addr, err)
	}
	if !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("http address %q is not a loopback address: the local API must stay on the unit (use 127.0.0.1)", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// DefaultSocket is where roomd listens and roomctl looks when not told:
// $KONSULT_SOCKET, else /run/konsult/roomd.sock when /run/konsult exists
// (the packaged service), else a per-user folder under the temp dir.
func DefaultSocket() string {
	if s := os.Getenv("KONSULT_SOCKET"); s != "" {
		return s
	}
	if fi, err := os.Stat("/run/konsult"); err == nil && fi.IsDir() {
		return "/run/konsult/roomd.sock"
	}
	return filepath.Join(fallbackSocketDir(), "roomd.sock")
}

// fallbackSocketDir is the per-user folder in the shared temp dir. Its name
// is predictable, so another local user can make it first.
func fallbackSocketDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("konsult-%d", os.Getuid()))
}

// privateDir makes sure dir is a real folder (not a symlink) owned by this
// user that nobody else can write to; with create, a missing one is made
// with mode 0700. In a folder someone else owns or can write to, they
// could swap roomd's socket for their own and answer roomctl in its place
// ("privacy is on"), or catch the claim code roomctl enrol sends.
func privateDir(dir string, create bool) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return fmt.Errorf("create socket folder %s: %w", dir, err)
		}
		// Not MkdirAll: it would accept a folder someone else made first.
		// Losing that race is caught by the checks below.
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create socket folder %s: %w", dir, err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("socket folder %s: %w", dir, err)
	}
	uid := os.Getuid()
	var why string
	switch st, _ := fi.Sys().(*syscall.Stat_t); {
	case fi.Mode()&fs.ModeSymlink != 0:
		why = "is a symbolic link"
	case !fi.IsDir():
		why = "is not a folder"
	case st == nil:
		why = "has no owner this system can read"
	case int(st.Uid) != uid:
		why = fmt.Sprintf("belongs to uid %d, not to you (uid %d)", st.Uid, uid)
	case fi.Mode().Perm()&0o022 != 0:
		why = fmt.Sprintf("can be written by group or others (mode %04o)", fi.Mode().Perm())
	default:
		return nil
	}
	return fmt.Errorf("socket folder %s %s: someone else could put their own socket there in roomd's place; remove it (as its owner or root: rm -r %s) and start roomd again, or choose a socket with --socket or $KONSULT_SOCKET", dir, why, dir)
}
