package unit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/audit"
)

// ResetPlan is where the things a factory reset removes live. The local
// config file under /etc and the journal are the installer's and the
// system's; README.md "Factory reset" says what stays.
type ResetPlan struct {
	// IdentityDir holds the unit's key and certificates.
	IdentityDir string
	// StateDir is the fleet's state: stored configs, nonces, queued events.
	// With the fleet off it may still hold what an earlier fleet left there:
	// it goes too.
	StateDir string
}

// ResetMarker, next to the identity directory (/var/lib/konsult), asks
// konsult-reset.service to wipe the logs after a factory reset.
const ResetMarker = "factory-reset"

// requestReset is the machine's FactoryReset (the buttons' hold) and
// roomctl factory-reset: it asks the command to stop; the wipe comes once
// everything is closed, so nothing writes the state back.
func (u *Unit) requestReset() {
	select {
	case u.reset <- struct{}{}:
	default:
	}
}

// FactoryReset implements localapi.Provisioner: it returns once the reset
// is under way (the command stops the unit, then calls Wipe).
func (u *Unit) FactoryReset(context.Context) error {
	if u.d.Reset == nil {
		return errors.New("this unit has no factory reset")
	}
	u.requestReset()
	return nil
}

// ResetRequested receives when a factory reset has been asked for.
func (u *Unit) ResetRequested() <-chan struct{} { return u.reset }

// Wipe carries out a factory reset: the identity (its key first, so a
// reset cut short cannot leave a unit that still authenticates as itself),
// the fleet state, then the marker that has the journal vacuumed. It is
// allowed only after Close, so no part of the unit writes state back.
func (u *Unit) Wipe() error {
	u.mu.RLock()
	closed := u.closed
	u.mu.RUnlock()
	plan := u.d.Reset
	switch {
	case plan == nil:
		return errors.New("this unit has no factory reset")
	case !closed:
		return errors.New("factory reset: the unit is still running")
	}
	var err error
	if id := u.d.Identity; id != nil {
		err = id.Wipe(plan.StateDir)
	} else {
		var errs []error
		for _, d := range []string{plan.IdentityDir, plan.StateDir} {
			if d == "" {
				continue
			}
			if e := os.RemoveAll(d); e != nil {
				errs = append(errs, e)
			}
		}
		err = errors.Join(errs...)
	}
	if err != nil {
		return fmt.Errorf("factory reset: %w", err)
	}
	// The next audit chain's first record says a reset happened (and
	// nothing of the identity just wiped).
	if plan.IdentityDir != "" {
		if err := audit.MarkReset(filepath.Join(filepath.Dir(plan.IdentityDir), audit.ResetFile), time.Now()); err != nil {
			return fmt.Errorf("factory reset: %w", err)
		}
	}
	// The journal is the system's: konsult-reset.path sees this marker and
	// konsult-reset.service (root) vacuums it, then removes the marker.
	marker := filepath.Join(filepath.Dir(plan.IdentityDir), ResetMarker)
	if err := atomicfile.Write(marker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("factory reset: %w", err)
	}
	return nil
}
