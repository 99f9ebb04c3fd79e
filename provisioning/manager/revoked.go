package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/link"
)

// RevokedUnits reads the units the CA's ledger marks revoked. A revoked
// unit cannot connect again, so status and push name it as revoked instead
// of as a unit that is merely offline and will catch up.
func RevokedUnits(c *ca.CA) (map[string]*ca.Unit, error) {
	l, err := c.Ledger()
	if err != nil {
		return nil, fmt.Errorf("read the CA's ledger: %w", err)
	}
	out := map[string]*ca.Unit{}
	for id, u := range l.Units {
		if u.Status == "revoked" {
			out[id] = u
		}
	}
	return out, nil
}

// RevokedFor lists the revoked units a push to target (or status --group)
// concerns: the device itself, or the units the ledger had in the group;
// every one for neither.
func RevokedFor(revoked map[string]*ca.Unit, device, group string) []string {
	var ids []string
	for id, u := range revoked {
		if id == device || (group != "" && slices.Contains(u.Groups, group)) || (device == "" && group == "") {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// ClearRetained removes a revoked unit's retained documents from the
// broker (an empty retained message deletes one): its status and reported
// state would otherwise show it as a unit that is merely offline, forever,
// and its device config would wait there for nobody.
func ClearRetained(ctx context.Context, b Broker, log *slog.Logger, id string) error {
	t := link.Topics{Prefix: b.Prefix}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	fc, err := Dial(ctx, b, log, t.Status(id))
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
