package manager

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

// VersionsLabel lists the config versions a unit runs in merge order: its
// groups' in its group order, then its own device config.
func VersionsLabel(s UnitStatus) string {
	if len(s.Versions) == 0 {
		return "-"
	}
	vs := s.Versions
	var parts []string
	done := map[string]bool{}
	for _, g := range s.Groups {
		if v, ok := vs["group:"+g]; ok {
			parts = append(parts, fmt.Sprintf("%s v%d", g, v))
			done["group:"+g] = true
		}
	}
	if v, ok := vs["device:"+s.Unit]; ok {
		parts = append(parts, fmt.Sprintf("device v%d", v))
		done["device:"+s.Unit] = true
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

// Notes says what a fleet manager should know beyond the versions:
// a config not yet confirmed or waiting for a call, a refusal of a version
// the unit does not run, a rollback it still runs on, a certificate that
// needs renewing. clock formats times; reasons are as the unit sent them,
// so clean them before a terminal shows them.
func Notes(s UnitStatus, now time.Time, clock func(time.Time) string) []string {
	if r := s.Revoked; r != nil {
		// Nothing else about it can change any more.
		return []string{RevokedNote(r.At, r.Reason, clock)}
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
		notes = append(notes, fmt.Sprintf("refused %s v%d (%s) at %s", TargetLabel(rj.Target), rj.Version, rj.Reason, clock(rj.At)))
	}
	if rb := s.LastRollback; rb != nil && rb.ToGeneration == s.ConfigGeneration {
		notes = append(notes, fmt.Sprintf("runs its last known good config since %s: %s", clock(rb.At), (rb.Reason)))
	}
	notes = append(notes, updateNotes(s.Update)...)
	// Certificates last 90 days: a unit nobody renews drops off the fleet
	// on that day, so say so while there is time.
	if c := s.Certificate; c != nil && !c.NotAfter.IsZero() {
		switch {
		case !now.Before(c.NotAfter):
			notes = append(notes, fmt.Sprintf("certificate expired %s: it cannot connect; factory-reset and enrol it again", clock(c.NotAfter)))
		case c.RenewalCSR != "":
			notes = append(notes, fmt.Sprintf("certificate expires %s and the unit asks for renewal: run fleetctl renew (or keep fleetctl renew --watch running)", clock(c.NotAfter)))
		}
		if c.LastRenewalError != "" {
			notes = append(notes, "last renewal not installed: "+(c.LastRenewalError))
		}
	}
	return notes
}

// TargetLabel turns a target key into words: "group:ward-3" → "group ward-3".
func TargetLabel(key string) string {
	kind, name, ok := strings.Cut(key, ":")
	if !ok {
		return key
	}
	return kind + " " + name
}

// RevokedNote says a unit was revoked, when (formatted by clock) and why.
func RevokedNote(at time.Time, reason string, clock func(time.Time) string) string {
	s := "revoked " + clock(at)
	if reason != "" {
		s += " (" + reason + ")"
	}
	return s + ": it cannot connect once the broker has the new CRL"
}

// updateNotes says where a unit's system update stands when there is
// something to know: one under way, installed and waiting for its reboot,
// one the unit undid, a failure since the last good one.
func updateNotes(u *fleet.UpdateReport) []string {
	if u == nil {
		return nil
	}
	var notes []string
	switch {
	case u.Deferred:
		notes = append(notes, fmt.Sprintf("update %s waits for the call to end", u.Requested))
	case u.RebootWaiting != "":
		notes = append(notes, fmt.Sprintf("update %s installed, reboot waits (%s)", u.PendingVersion, u.RebootWaiting))
	case u.Phase != "" && u.Phase != "idle":
		v := u.PendingVersion
		if v == "" {
			v = u.Requested
		}
		notes = append(notes, fmt.Sprintf("update %s: %s", v, u.Phase))
	}
	if rb := u.RolledBack; rb != nil && rb.Version != u.BootedVersion {
		notes = append(notes, fmt.Sprintf("rolled back update %s: %s", rb.Version, rb.Reason))
	} else if u.LastFailure != "" && u.Requested != "" && u.Requested != u.BootedVersion {
		notes = append(notes, "last update failed: "+u.LastFailure)
	}
	return notes
}
