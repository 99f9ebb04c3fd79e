package manager

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// UnitStatus is one unit as fleetctl status shows it (and its --json).
type UnitStatus struct {
	Unit             string            `json:"unit"`
	Online           bool              `json:"online"`
	State            string            `json:"state,omitempty"`
	Software         string            `json:"software,omitempty"`
	ConfigGeneration uint64            `json:"config_generation,omitempty"`
	Groups           []string          `json:"groups"`
	Versions         map[string]uint64 `json:"versions"`
	Pending          bool              `json:"pending,omitempty"`
	Deferred         bool              `json:"deferred,omitempty"`
	LastRejection    *fleet.Rejection  `json:"last_rejection,omitempty"`
	LastRollback     *fleet.Rollback   `json:"last_rollback,omitempty"`
	LastSeen         time.Time         `json:"last_seen,omitzero"`
	// Certificate is the unit's enrolled certificate as it reports it
	// (absent for a unit given its certificate by hand).
	Certificate *fleet.IdentityReport `json:"certificate,omitempty"`
	// Documents says which retained documents exist: status, reported.
	Documents map[string]bool `json:"documents"`
	// Revoked is set when the CA's ledger marks the unit revoked: it will
	// not connect again.
	Revoked *RevokedInfo `json:"revoked,omitempty"`
	// Update is where the unit's system update stands, as it reports it.
	Update *fleet.UpdateReport `json:"update,omitempty"`
}

// RevokedInfo is when and why the CA revoked a unit.
type RevokedInfo struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// Status reads the retained status and reported documents of every unit,
// or of the units that report being in group, ordered by id. The revoked
// units (from the CA's ledger; nil for none) of the group are listed too:
// fleetctl revoke clears their documents, and the fleet manager should
// still see where they went.
func Status(ctx context.Context, b Broker, log *slog.Logger, group string, revoked map[string]*ca.Unit) ([]UnitStatus, error) {
	if group != "" {
		if err := link.ValidName(group); err != nil {
			return nil, fmt.Errorf("--group: %w", err)
		}
	}
	t := link.Topics{Prefix: b.Prefix}
	fc, err := Dial(ctx, b, log, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported))
	if err != nil {
		return nil, err
	}
	defer fc.Close()
	view := NewView()
	if err := fc.Sync(ctx, func(m Msg) { view.Feed(m) }); err != nil {
		return nil, err
	}
	listed := map[string]bool{}
	for _, id := range RevokedFor(revoked, "", group) {
		view.Unit(id)
		listed[id] = true
	}
	var out []UnitStatus
	for _, u := range view.Sorted() {
		if group == "" || u.InGroup(group) || listed[u.ID] {
			if u.Status != nil || u.Reported != nil || listed[u.ID] {
				s := StatusOf(u)
				if r := revoked[u.ID]; r != nil {
					s.Revoked = &RevokedInfo{At: r.Decided, Reason: r.Reason}
				}
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// StatusOf is what unit u's retained documents say.
func StatusOf(u *Unit) UnitStatus {
	s := UnitStatus{Unit: u.ID, Groups: []string{}, Versions: map[string]uint64{}, LastSeen: u.Seen,
		Documents: map[string]bool{"status": u.Status != nil, "reported": u.Reported != nil}}
	if st := u.Status; st != nil {
		s.Online, s.State, s.Software, s.ConfigGeneration = st.Online, st.State, st.Version, st.ConfigGeneration
	}
	if r := u.Reported; r != nil {
		if r.Groups != nil {
			s.Groups = r.Groups
		}
		if r.Versions != nil {
			s.Versions = r.Versions
		}
		s.Pending, s.Deferred, s.LastRejection, s.LastRollback = r.Pending, r.Deferred, r.LastRejection, r.LastRollback
		s.Certificate = r.Identity
		s.Update = r.Update
		// The reported document is the unit's own account of its config;
		// status may lag behind it or be the broker's last will.
		s.ConfigGeneration = r.Generation
	}
	if !s.Online {
		// The state of a unit that is away is whatever it was when it
		// left; showing it would suggest it is still in that call.
		s.State = ""
	}
	return s
}
