package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/konsult/konsult/appliance"
)

// CallLockFile is the lock in update.dir that roomd holds shared from the
// start of each join until the call is over, and konsult-update takes
// exclusively before an update's reboot. Without it a call that started
// between roomd's idle check and konsult-update acting on reboot=only
// would be cut by the reboot.
const CallLockFile = "call.lock"

// bootIDFile names this boot: konsult-update records it with
// phase=rebooting, so a join is refused only in the boot that is ending,
// not in the new slot's trial boot.
var bootIDFile = "/proc/sys/kernel/random/boot_id"

// RebootLock is the appliance's CallLock over update.dir.
type RebootLock struct {
	dir    string
	log    *slog.Logger
	warned sync.Once
}

// NewRebootLock is the call lock in dir (update.dir).
func NewRebootLock(dir string, log *slog.Logger) *RebootLock {
	if log == nil {
		log = slog.Default()
	}
	return &RebootLock{dir: dir, log: log}
}

// lockPoll is how often a join retries while konsult-update holds the
// lock, which it does only for the moment it records phase=rebooting.
const lockPoll = 20 * time.Millisecond

// Acquire takes the lock shared. It returns appliance.ErrRestarting when
// konsult-update has begun this boot's reboot into an update. A lock that
// cannot be opened does not stop the call (a call matters more than an
// update's timing); it is logged, and the call goes on without it.
func (l *RebootLock) Acquire(ctx context.Context) (func(), error) {
	none := func() {}
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		l.warn(fmt.Errorf("make its folder: %w", err))
		return none, nil
	}
	f, err := os.OpenFile(filepath.Join(l.dir, CallLockFile), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		l.warn(err)
		return none, nil
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			l.warn(fmt.Errorf("flock: %w", err))
			return none, nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("call lock: %w", ctx.Err())
		case <-time.After(lockPoll):
		}
	}
	if restarting(l.dir) {
		f.Close()
		return nil, appliance.ErrRestarting
	}
	return func() { f.Close() }, nil
}

// warn says once that calls go on without the lock: a unit installed
// without update.dir (no over-the-air updates) would say it at every JOIN.
func (l *RebootLock) warn(err error) {
	l.warned.Do(func() {
		l.log.Warn("update: the call lock cannot be used; calls do not hold off an update's reboot (check update.dir)", "dir", l.dir, "err", err)
	})
}

// restarting says whether konsult-update's state records a reboot begun
// in this boot.
func restarting(dir string) bool {
	st, err := readUpdateState(dir)
	if err != nil || st["phase"] != "rebooting" || st["rebooting_boot"] == "" {
		return false
	}
	b, err := os.ReadFile(bootIDFile)
	return err == nil && strings.TrimSpace(string(b)) == st["rebooting_boot"]
}
