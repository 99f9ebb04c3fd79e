package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/identity"
)

// errFactoryReset ends run after a factory reset: systemd starts roomd
// again (exitRestart) as a unit on its first boot; --sim starts over
// inside the process.
var errFactoryReset = errors.New("factory reset: starting again as a new unit")

// provisioning is the unit's own identity and its enrolment
// (enrol.Unit), set up from roomd's config.
type provisioning struct {
	*enrol.Unit
	id   string
	dir  string
	wipe []string // directories a factory reset removes besides dir
}

// identityStatus is the identity part of roomctl status.
type identityStatus = enrol.UnitStatus

func identityDir(f FleetConfig, simulate bool, socket string) string {
	if f.IdentityDir != "" {
		return f.IdentityDir
	}
	if simulate {
		return filepath.Join(filepath.Dir(socket), "sim-identity")
	}
	return "/var/lib/konsult/identity"
}

// newProvisioning loads the unit's key (making it on first boot) and any
// identity enrolment installed.
func newProvisioning(local *Config, simulate bool, model string, log *slog.Logger) (*provisioning, error) {
	f := local.Fleet
	broker := f.EnrolBroker
	if broker == "" {
		broker = enrol.EnrolBroker(f.Broker)
	}
	u, err := enrol.OpenUnit(enrol.UnitOptions{
		Dir:    identityDir(f, simulate, local.API.Socket),
		Broker: broker, CAFile: f.CAFile, CertFile: f.EnrolCert, KeyFile: f.EnrolKey,
		ClaimCode: f.ClaimCode, ClaimFile: f.ClaimFile,
		RenewBefore: f.RenewBefore.Duration, Model: model, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return &provisioning{Unit: u, id: u.ID(), dir: u.Dir()}, nil
}

func (p *provisioning) isEnrolled() bool                          { return p.Enrolled() }
func (p *provisioning) state() identity.State                     { return p.State() }
func (p *provisioning) fleetKeys() ([]ed25519.PublicKey, error)   { return p.FleetKeys() }
func (p *provisioning) enrol(ctx context.Context, v string) error { return p.Run(ctx, v) }
func (p *provisioning) statusView() *identityStatus               { return p.Unit.Status() }
func (p *provisioning) onConnectError(err error)                  { p.OnConnectError(err) }
func (p *provisioning) wipeAll() error                            { return p.Wipe(p.wipe...) }

func (p *provisioning) watch(ctx context.Context, connected func() bool, every time.Duration) {
	p.Watch(ctx, connected, every)
}

// takeClaimCode is "roomd --take-claim SRC" (konsult-claim.service).
func takeClaimCode(src, idDir string, stdout io.Writer) error {
	dst, err := enrol.TakeClaimCode(src, idDir)
	if err != nil || dst == "" {
		return err
	}
	_, err = fmt.Fprintf(stdout, "claim code moved from %s to %s\n", src, dst)
	return err
}
