package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// unitStatus is one unit in status --json.
type unitStatus struct {
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
	// Revoked is set when the CA's ledger (--ca-dir) marks the unit
	// revoked: it will not connect again.
	Revoked *revokedInfo `json:"revoked,omitempty"`
}

type revokedInfo struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

func status(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("status")
	group := fs.String("group", "", "only the units that report being in this group")
	asJSON := fs.Bool("json", false, "print the units as JSON")
	caDir := fs.String("ca-dir", "", "the fleet CA directory, to name revoked units as such [$FLEETCTL_CA_DIR]")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("status: unexpected argument %q: status takes only flags", pos[0])
	}
	revoked, err := revokedUnits("status", *caDir)
	if err != nil {
		return err
	}
	if *group != "" {
		if err := link.ValidName(*group); err != nil {
			return fmt.Errorf("status: --group: %w", err)
		}
	}
	if err := bs.resolve("status"); err != nil {
		return err
	}
	t := link.Topics{Prefix: bs.Prefix}
	fc, err := dialFleet(ctx, bs, env.log, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported))
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer fc.Close()
	view := newFleetView()
	if err := fc.Sync(ctx, func(m fleetMsg) { view.feed(m) }); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	// fleetctl revoke clears a revoked unit's documents: the ledger still
	// names it, so the fleet manager sees where it went.
	listed := map[string]bool{}
	for _, id := range revokedFor(revoked, "", *group) {
		view.unit(id)
		listed[id] = true
	}
	var units []*unitView
	for _, u := range view.sorted() {
		if *group == "" || u.inGroup(*group) || listed[u.ID] {
			if u.Status != nil || u.Reported != nil || listed[u.ID] {
				units = append(units, u)
			}
		}
	}
	statusOf := func(u *unitView) unitStatus {
		s := statusOf(u)
		if r := revoked[u.ID]; r != nil {
			s.Revoked = &revokedInfo{At: r.Decided, Reason: r.Reason}
		}
		return s
	}
	if *asJSON {
		out := make([]unitStatus, 0, len(units))
		for _, u := range units {
			out = append(out, statusOf(u))
		}
		return writeJSON(env.stdout, out)
	}
	if len(units) == 0 {
		if *group != "" {
			fmt.Fprintf(env.stderr, "no unit reports being in group %s: check the name, or whether its units ever connected (fleetctl status lists all)\n", *group)
		} else {
			fmt.Fprintln(env.stderr, "no unit has ever connected to this broker: check --broker and --prefix")
		}
		return nil
	}
	rows := make([][]string, 0, len(units))
	online := 0
	for _, u := range units {
		s := statusOf(u)
		if s.Online {
			online++
		}
		rows = append(rows, []string{
			s.Unit, yesNo(s.Online), dash(s.State), generationCell(s), versionsCell(u), dash(s.Software), clock(s.LastSeen), notesCell(s),
		})
	}
	if err := table(env.stdout, []string{"UNIT", "ONLINE", "STATE", "GEN", "CONFIG VERSIONS", "SOFTWARE", "LAST SEEN", "NOTES"}, rows); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	fmt.Fprintf(env.stderr, "%d units, %d online\n", len(units), online)
	return nil
}

func statusOf(u *unitView) unitStatus {
	s := unitStatus{Unit: u.ID, Groups: []string{}, Versions: map[string]uint64{}, LastSeen: u.Seen,
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

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return oneLine(s)
}

func generationCell(s unitStatus) string {
	if s.ConfigGeneration == 0 {
		return "-"
	}
	return strconv.FormatUint(s.ConfigGeneration, 10)
}

// versionsCell lists the config versions a unit runs in merge order: its
// groups' in its group order, then its own device config.
func versionsCell(u *unitView) string {
	if u.Reported == nil || len(u.Reported.Versions) == 0 {
		return "-"
	}
	vs := u.Reported.Versions
	var parts []string
	done := map[string]bool{}
	for _, g := range u.Reported.Groups {
		if v, ok := vs["group:"+g]; ok {
			parts = append(parts, fmt.Sprintf("%s v%d", g, v))
			done["group:"+g] = true
		}
	}
	if v, ok := vs["device:"+u.ID]; ok {
		parts = append(parts, fmt.Sprintf("device v%d", v))
		done["device:"+u.ID] = true
	}
	// Anything else (a group the unit has left) last, in a stable order.
	rest := make([]string, 0, len(vs))
	for k := range vs {
		if !done[k] {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	for _, k := range rest {
		parts = append(parts, fmt.Sprintf("%s v%d", strings.TrimPrefix(k, "group:"), vs[k]))
	}
	return strings.Join(parts, ", ")
}

// notesCell says what a fleet manager should know beyond the versions:
// a config not yet confirmed or waiting for a call, a refusal of a version
// the unit does not run, a rollback it still runs on.
func notesCell(s unitStatus) string {
	if r := s.Revoked; r != nil {
		// Nothing else about it can change any more.
		return revokedNote(r.At, r.Reason)
	}
	var notes []string
	if s.Pending {
		notes = append(notes, "config not yet confirmed")
	}
	if s.Deferred {
		notes = append(notes, "newest config waits for the call to end")
	}
	// A group config the unit never received: none was pushed to the group
	// yet, or the broker's ACL did not let the unit read it (the unit keeps
	// re-subscribing until it arrives).
	for _, g := range s.Groups {
		if _, ok := s.Versions["group:"+g]; !ok {
			notes = append(notes, fmt.Sprintf("no config for group %s yet", g))
		}
	}
	if rj := s.LastRejection; rj != nil && (rj.Version == 0 || rj.Version > s.Versions[rj.Target]) {
		notes = append(notes, fmt.Sprintf("refused %s v%d (%s) at %s", targetLabel(rj.Target), rj.Version, rj.Reason, clock(rj.At)))
	}
	if rb := s.LastRollback; rb != nil && rb.ToGeneration == s.ConfigGeneration {
		notes = append(notes, fmt.Sprintf("runs its last known good config since %s: %s", clock(rb.At), oneLine(rb.Reason)))
	}
	// Certificates last 90 days: a unit nobody renews drops off the fleet
	// on that day, so say so while there is time.
	if c := s.Certificate; c != nil && !c.NotAfter.IsZero() {
		switch {
		case !now().Before(c.NotAfter):
			notes = append(notes, fmt.Sprintf("certificate expired %s: it cannot connect; factory-reset and enrol it again", clock(c.NotAfter)))
		case c.RenewalCSR != "":
			notes = append(notes, fmt.Sprintf("certificate expires %s and the unit asks for renewal: run fleetctl renew (or keep fleetctl renew --watch running)", clock(c.NotAfter)))
		}
		if c.LastRenewalError != "" {
			notes = append(notes, "last renewal not installed: "+oneLine(c.LastRenewalError))
		}
	}
	return strings.Join(notes, "; ")
}

// targetLabel turns a target key into words: "group:ward-3" → "group ward-3".
func targetLabel(key string) string {
	kind, name, ok := strings.Cut(key, ":")
	if !ok {
		return key
	}
	return kind + " " + name
}
