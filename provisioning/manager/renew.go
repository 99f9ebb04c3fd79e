package manager

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Renewal is the outcome of one unit's certificate renewal: Err is nil
// when its new certificate was sent.
type Renewal struct {
	Unit string
	Err  error
}

// Renew signs the renewal requests units put in their reported documents
// and sends each unit its certificate with the certificate command, signed
// with priv. It answers each request (a device's CSR) once, reporting each
// to done. It returns once the retained state is read, unless watch is set:
// then it keeps renewing as requests arrive until ctx ends (the fleet's
// renewal service), and returns nil then.
func Renew(ctx context.Context, b Broker, log *slog.Logger, c *ca.CA, priv ed25519.PrivateKey, now func() time.Time, watch bool, done func(Renewal)) error {
	t := link.Topics{Prefix: b.Prefix}
	fc, err := Dial(ctx, b, log, t.AllDevices(link.DeviceReported))
	if err != nil {
		return err
	}
	defer fc.Close()
	answered := map[string]string{} // device → the CSR already answered
	handle := func(m Msg) {
		view := NewView()
		if !view.Feed(m) {
			return
		}
		u := view.Unit(m.Unit)
		if u.Reported == nil || u.Reported.Identity == nil || u.Reported.Identity.RenewalCSR == "" {
			return
		}
		csr := u.Reported.Identity.RenewalCSR
		if answered[m.Unit] == csr {
			return
		}
		answered[m.Unit] = csr
		done(Renewal{Unit: m.Unit, Err: renewOne(ctx, fc, t, c, priv, now(), m.Unit, csr)})
	}
	if err := fc.Sync(ctx, handle); err != nil {
		return err
	}
	if !watch {
		return nil
	}
	for {
		m, err := fc.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		handle(m)
	}
}

func renewOne(ctx context.Context, fc *Client, t link.Topics, c *ca.CA, priv ed25519.PrivateKey, now time.Time, id, csr string) error {
	cert, err := enrol.Renew(c, id, csr)
	if err != nil {
		return err
	}
	arg, _ := json.Marshal(string(cert))
	e, err := fleet.SignCommand(priv, fleet.CommandPayload{Name: fleet.CommandCertificate, Args: map[string]json.RawMessage{"certificate": arg},
		Nonce: fleet.NewNonce(), IssuedAt: now, ExpiresAt: now.Add(time.Hour), Target: fleet.Target{Device: id}})
	if err != nil {
		return fmt.Errorf("sign the certificate command: %w", err)
	}
	return fc.Publish(ctx, t.DeviceCmd(id), false, e.Marshal())
}
