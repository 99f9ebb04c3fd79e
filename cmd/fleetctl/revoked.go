package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/link"
)

// revokedUnits reads the units the CA's ledger marks revoked, when a CA
// folder is given (--ca-dir or $FLEETCTL_CA_DIR); nil without one. A revoked
// unit cannot connect again, so status and push name it as revoked instead
// of as a unit that is merely offline and will catch up.
func revokedUnits(cmd, dir string) (map[string]*ca.Unit, error) {
	if dir == "" {
		dir = getenv("FLEETCTL_CA_DIR")
	}
	if dir == "" {
		return nil, nil
	}
	c, err := openCA(cmd, &dir)
	if err != nil {
		return nil, err
	}
	l, err := c.Ledger()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	out := map[string]*ca.Unit{}
	for id, u := range l.Units {
		if u.Status == "revoked" {
			out[id] = u
		}
	}
	return out, nil
}

// revokedFor lists the revoked units a push to target (or status --group)
// concerns: the device itself, or the units the ledger had in the group.
func revokedFor(revoked map[string]*ca.Unit, device, group string) []string {
	var ids []string
	for id, u := range revoked {
		if id == device || (group != "" && slices.Contains(u.Groups, group)) || (device == "" && group == "") {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func revokedNote(at time.Time, reason string) string {
	s := "revoked " + clock(at)
	if reason != "" {
		s += " (" + oneLine(reason) + ")"
	}
	return s + ": it cannot connect once the broker has the new CRL"
}

// clearRetained removes a revoked unit's retained documents from the
// broker (an empty retained message deletes one): its status and reported
// state would otherwise show it as a unit that is merely offline, forever,
// and its device config would wait there for nobody.
func clearRetained(ctx context.Context, env *cmdEnv, bs *brokerSettings, id string) error {
	if err := bs.resolve("revoke"); err != nil {
		return err
	}
	t := link.Topics{Prefix: bs.Prefix}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	fc, err := dialFleet(ctx, bs, env.log, t.Status(id))
	if err != nil {
		return err
	}
	defer fc.Close()
	var errs []error
	for _, topic := range []string{t.Status(id), t.Reported(id), t.DeviceConfig(id)} {
		if err := fc.Publish(ctx, topic, true, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
