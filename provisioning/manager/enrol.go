package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/link"
)

// PendingRequests reads every retained enrolment request, oldest first,
// and returns the connection it read them on (the caller closes it).
func PendingRequests(ctx context.Context, b Broker, log *slog.Logger) (*Client, []enrol.Request, error) {
	t := link.Topics{Prefix: b.Prefix}
	fc, err := Dial(ctx, b, log, t.AllEnrolRequests())
	if err != nil {
		return nil, nil, err
	}
	var reqs []enrol.Request
	err = fc.Sync(ctx, func(m Msg) {
		if m.Kind != link.EnrolRequest || len(m.Payload) == 0 {
			return
		}
		var r enrol.Request
		if json.Unmarshal(m.Payload, &r) != nil || r.DeviceID != m.Unit {
			log.Warn("skipped a malformed enrolment request", "topic", m.Topic)
			return
		}
		reqs = append(reqs, r)
	})
	if err != nil {
		fc.Close()
		return nil, nil, err
	}
	slices.SortFunc(reqs, func(a, b enrol.Request) int { return a.FirstRequested.Compare(b.FirstRequested) })
	return fc, reqs, nil
}

// Contested maps each pending request whose claim code another pending
// request also proves to the device ids of those others. Someone who read
// the code off the card before the unit first booted can race the real
// unit with it, so neither may be approved on the code alone.
func Contested(reqs []enrol.Request, l *ca.Ledger) map[string][]string {
	byCode := map[string][]string{}
	for _, r := range reqs {
		if p := enrol.Evaluate(r, l); p.Problem == "" && p.ClaimCode != "" {
			byCode[p.ClaimCode] = append(byCode[p.ClaimCode], r.DeviceID)
		}
	}
	out := map[string][]string{}
	for _, ids := range byCode {
		if len(ids) < 2 {
			continue
		}
		for _, id := range ids {
			for _, o := range ids {
				if o != id {
					out[id] = append(out[id], o)
				}
			}
		}
	}
	return out
}

// ContestedError refuses to approve a unit whose claim code other pending
// units (Others) also sent.
type ContestedError struct {
	ID     string
	Others []string
}

func (e *ContestedError) Error() string { return ContestedMessage(e.ID, e.Others) }

// ContestedMessage says what to do about a contested claim code. The ids
// come from enrolment requests: clean them before a terminal shows this.
func ContestedMessage(id string, others []string) string {
	return fmt.Sprintf("its claim code was also sent by %s: someone may have read the code off the card; ask the installer for the device id the unit itself shows (roomctl status), approve only that one with fleetctl enrol approve %s --force, and reject the other",
		strings.Join(others, ", "), id)
}

// EnrolRow is one unit in fleetctl enrol list. Model, version and detail
// are what the request said: clean them before showing them.
type EnrolRow struct {
	Device    string    `json:"device"`
	Model     string    `json:"model,omitempty"`
	Version   string    `json:"version,omitempty"`
	ClaimCode string    `json:"claim_code,omitempty"`
	FirstSeen time.Time `json:"first_seen,omitzero"`
	Status    string    `json:"status"`
	Detail    string    `json:"detail,omitempty"`
}

// EnrolList is the units waiting for approval (reqs, from PendingRequests)
// and why one cannot be approved; with all, also the units the ledger has
// decided on.
func EnrolList(reqs []enrol.Request, l *ca.Ledger, all bool) []EnrolRow {
	var out []EnrolRow
	seen := map[string]bool{}
	rivals := Contested(reqs, l)
	for _, r := range reqs {
		p := enrol.Evaluate(r, l)
		st, detail := "pending", ""
		if p.Problem != "" {
			st, detail = "cannot approve: "+p.Problem, p.Message
		} else if others := rivals[r.DeviceID]; len(others) > 0 {
			st, detail = "contested", ContestedMessage(r.DeviceID, others)
		}
		if r.Refusal != nil {
			detail = strings.TrimSpace(detail + " unit refused the last approval (" + r.Refusal.Reason + "): " + r.Refusal.Message)
		}
		if u := l.Units[r.DeviceID]; u != nil && u.Status == "approved" && r.Refusal == nil {
			st = "approved, not collected yet"
		}
		seen[r.DeviceID] = true
		out = append(out, EnrolRow{r.DeviceID, r.Model, r.Version, p.ClaimCode, r.FirstRequested, st, detail})
	}
	if all {
		for _, u := range l.SortedUnits() {
			if !seen[u.ID] {
				out = append(out, EnrolRow{u.ID, u.Model, "", u.ClaimCode, u.FirstSeen, u.Status, strings.Join(u.Groups, ",") + " " + u.Reason})
			}
		}
	}
	return out
}

// ErrNoRequest: no retained enrolment request from the unit on the broker.
var ErrNoRequest = errors.New("no enrolment request from this unit on the broker: check the id with fleetctl enrol list")

// ApproveOptions are an approval's choices.
type ApproveOptions struct {
	Groups []string // the groups the unit joins, in merge order
	// UnitBroker is the broker the unit uses from now on ("": the host of
	// the fleet manager's broker on the units' port).
	UnitBroker string
	// Force approves although another pending unit sent the same claim
	// code (only for the device id the installer read off the unit).
	Force bool
	// ACLOut, if set, is where the broker's ACL (RenderACL, with this unit
	// and its groups) is written before the approval is published: the
	// unit subscribes to its groups as soon as it has its certificate.
	ACLOut string
	Admin  string // the fleet manager's CN for the ACL ("": fleet-admin)
}

// Approve signs unit id's certificate and publishes the approval (retained,
// on its enrolment response topic) with the fleet key, the broker and its
// groups. A contested claim code is refused (*ContestedError) unless
// o.Force.
func Approve(ctx context.Context, b Broker, log *slog.Logger, c *ca.CA, id string, o ApproveOptions) error {
	fc, reqs, err := PendingRequests(ctx, b, log)
	if err != nil {
		return err
	}
	defer fc.Close()
	i := slices.IndexFunc(reqs, func(r enrol.Request) bool { return r.DeviceID == id })
	if i < 0 {
		return ErrNoRequest
	}
	l, err := c.Ledger()
	if err != nil {
		return err
	}
	if others := Contested(reqs, l)[id]; len(others) > 0 && !o.Force {
		return &ContestedError{ID: id, Others: others}
	}
	pub, err := os.ReadFile(filepath.Join(c.Dir, "fleet.pub"))
	if err != nil {
		return fmt.Errorf("the fleet's public key: %w", err)
	}
	ub := o.UnitBroker
	if ub == "" {
		ub = WithPort(b.URL, UnitsPort)
	}
	decision, err := enrol.Approve(c, reqs[i], o.Groups, ub, string(pub))
	if err != nil {
		return err
	}
	if o.ACLOut != "" {
		// Before the approval leaves: the ledger now lists the unit, and a
		// unit that can read its groups before the ACL lets it would only
		// retry.
		if err := WriteACL(c, o.Admin, o.ACLOut); err != nil {
			return fmt.Errorf("%s is approved in the CA, but the approval was not sent: %w: fix it and run fleetctl enrol approve %s again", id, err, id)
		}
	}
	t := link.Topics{Prefix: b.Prefix}
	return fc.Publish(ctx, t.EnrolResponse(id), true, decision)
}

// Reject publishes a refusal unit id shows on roomctl status: reason, or
// else why the request cannot be approved, or else a plain refusal.
func Reject(ctx context.Context, b Broker, log *slog.Logger, c *ca.CA, id, reason string) error {
	fc, reqs, err := PendingRequests(ctx, b, log)
	if err != nil {
		return err
	}
	defer fc.Close()
	i := slices.IndexFunc(reqs, func(r enrol.Request) bool { return r.DeviceID == id })
	if i < 0 {
		return ErrNoRequest
	}
	l, err := c.Ledger()
	if err != nil {
		return err
	}
	p := enrol.Evaluate(reqs[i], l)
	why, msg := enrol.ReasonRejected, "the fleet manager rejected this unit"
	if p.Problem != "" {
		why, msg = p.Problem, p.Message
	}
	if reason != "" {
		msg = reason
	}
	decision, err := enrol.Reject(c, reqs[i], why, msg)
	if err != nil {
		return err
	}
	t := link.Topics{Prefix: b.Prefix}
	return fc.Publish(ctx, t.EnrolResponse(id), true, decision)
}

// RenderACL is the broker's ACL from the CA's ledger: the shipped rules
// plus each approved unit's groups; admin is the fleet manager's CN ("":
// fleet-admin).
func RenderACL(c *ca.CA, admin string) (string, error) {
	if admin == "" {
		admin = "fleet-admin"
	}
	l, err := c.Ledger()
	if err != nil {
		return "", err
	}
	units := map[string][]string{}
	for id, u := range l.Units {
		if u.Status == "approved" {
			units[id] = u.Groups
		}
	}
	return link.ACL(units, admin)
}

// WriteACL writes RenderACL's ACL to path (atomically: Mosquitto may
// reload it at any moment).
func WriteACL(c *ca.CA, admin, path string) error {
	text, err := RenderACL(c, admin)
	if err != nil {
		return fmt.Errorf("render the ACL: %w", err)
	}
	if err := atomicfile.Write(path, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write the ACL: %w", err)
	}
	return nil
}

// NewClaimCodes adds n claim codes for installers to the ledger, one per
// unit, with note; an unused one enrols nothing after valid (0: never).
func NewClaimCodes(c *ca.CA, n int, note string, valid time.Duration, now time.Time) ([]string, error) {
	var codes []string
	err := c.Update(func(l *ca.Ledger) error {
		codes = codes[:0]
		for range n {
			code := enrol.NewClaimCode()
			codes = append(codes, code)
			cc := ca.ClaimCode{Code: code, Note: note, Created: now.UTC()}
			if valid > 0 {
				cc.Expires = cc.Created.Add(valid)
			}
			l.ClaimCodes = append(l.ClaimCodes, cc)
		}
		return nil
	})
	return codes, err
}
