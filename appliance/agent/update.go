package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/fleet"
)

// The unit's half of system updates (docs/UPDATES.md). roomd verifies the
// fleet's signed update command and, while the unit is idle, writes a
// request for the root helper konsult-update (started by
// konsult-update.path), which downloads, checks and installs the bundle into
// the inactive slot and records its progress in the state file. roomd
// never asks for an install or a reboot during a call: a command that comes
// during one waits for the call's end (the machine's state event, as a
// deferred config does), and the reboot is a second request (reboot=only)
// written once the state says installed, the unit is idle and, for
// reboot=window, the maintenance window (update.reboot_window) is open.

// ImageVersionFile holds the running image's version (image/build).
const ImageVersionFile = "/etc/konsult/image-version"

// DefaultUpdatePoll is how often the agent reads konsult-update's state.
const DefaultUpdatePoll = 30 * time.Second

// UpdateOptions is the unit's update folder and policy.
type UpdateOptions struct {
	// Dir holds request (roomd writes it) and state (konsult-update does).
	Dir string
	// RunningVersion is the running image's version ("" unknown): an
	// update command for a version not newer is refused unless it says
	// downgrade (konsult-update checks again against the signed bundle).
	RunningVersion func() string
	// Window is update.reboot_window of the running config.
	Window func() string
	// Poll is how often the state file is read for an installed update
	// or a rollback (DefaultUpdatePoll if 0).
	Poll time.Duration
	// Now is the clock for the window (time.Now if nil).
	Now func() time.Time
}

// updateRecord is what roomd keeps of updates in <StateDir>/update.json.
type updateRecord struct {
	// Deferred is a verified command waiting for the call to end.
	Deferred *fleet.UpdateArgs `json:"deferred,omitempty"`
	// Wanted is the version requested and its reboot mode; cleared once
	// the reboot is asked for.
	Wanted       string `json:"wanted,omitempty"`
	WantedReboot string `json:"wanted_reboot,omitempty"`
	// RequestID is the id of the install request for Wanted: the state's
	// failed_request names it when konsult-update refuses that request.
	RequestID string `json:"request_id,omitempty"`
	// RebootID is the id of the last reboot=only request ("" none yet):
	// the state's reboot_deferred names it when a call started before
	// konsult-update could take the call lock, and roomd asks again.
	RebootID string `json:"reboot_id,omitempty"`
	// Reported* are the state file's stamps already turned into events.
	ReportedRollback string `json:"reported_rollback,omitempty"`
	ReportedGood     string `json:"reported_good,omitempty"`
}

func (a *Agent) updateRecordPath() string { return filepath.Join(a.opts.StateDir, "update.json") }

func (a *Agent) loadUpdate() {
	if a.opts.Update == nil {
		return
	}
	b, err := os.ReadFile(a.updateRecordPath())
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var r updateRecord
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		a.log.Warn("update: roomd's update record is unreadable; starting without it", "err", err)
		return
	}
	a.mu.Lock()
	a.upd = r
	a.mu.Unlock()
}

// setUpdate replaces the record and saves it.
func (a *Agent) setUpdate(r updateRecord) {
	a.mu.Lock()
	a.upd = r
	a.mu.Unlock()
	b, _ := json.Marshal(r) // plain strings and a struct of them
	if err := atomicfile.Write(a.updateRecordPath(), b, 0o600); err != nil {
		a.log.Warn("update: roomd's update record was not saved", "err", err)
	}
}

func (a *Agent) updateRec() updateRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.upd
}

// readUpdateState reads konsult-update's state file (key=value lines, the
// last of a key wins); an absent file is an empty state.
func readUpdateState(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("update state: %w", err)
	}
	st := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			st[k] = v
		}
	}
	return st, nil
}

func otherSlot(s string) string {
	switch s {
	case "A":
		return "B"
	case "B":
		return "A"
	}
	return ""
}

// updateReport is the reported document's update part; nil for a unit
// that does not update over the air.
func (a *Agent) updateReport() *fleet.UpdateReport {
	o := a.opts.Update
	if o == nil {
		return nil
	}
	t := a.redact.text
	r := &fleet.UpdateReport{}
	st, err := readUpdateState(o.Dir)
	if err != nil {
		r.LastFailure = "roomd cannot read konsult-update's state file: check " + filepath.Join(o.Dir, "state")
		st = map[string]string{}
	}
	r.Phase, r.BootedSlot, r.BootedVersion = st["phase"], st["booted_slot"], st["booted_version"]
	r.PendingVersion, r.PendingSlot = st["pending_version"], st["pending_slot"]
	if f := st["last_failure"]; f != "" {
		r.LastFailure, r.LastFailureAt = t(f), st["last_failure_at"]
	}
	r.LastGood = st["last_good_version"]
	if v := st["rolled_back_version"]; v != "" || st["rolled_back_at"] != "" {
		r.RolledBack = &fleet.UpdateRollback{Version: v, Slot: otherSlot(st["booted_slot"]), Reason: t(st["rolled_back_reason"]), At: st["rolled_back_at"]}
	}
	slots := map[string]string{}
	if r.BootedSlot != "" && r.BootedVersion != "" {
		slots[r.BootedSlot] = r.BootedVersion
	}
	if fs, fv := st["from_slot"], st["from_version"]; fs != "" && fv != "" && fs != r.BootedSlot {
		slots[fs] = fv // the slot an update left behind
	}
	if r.PendingSlot != "" && r.PendingVersion != "" {
		slots[r.PendingSlot] = r.PendingVersion
	}
	if len(slots) > 0 {
		r.Slots = slots
	}
	rec := a.updateRec()
	if rec.Deferred != nil {
		r.Requested, r.Deferred = rec.Deferred.Version, true
	} else if rec.Wanted != "" {
		r.Requested = rec.Wanted
		if r.Phase == "installed" && r.PendingVersion == rec.Wanted {
			r.RebootWaiting = a.rebootWait(rec.WantedReboot)
		}
	}
	return r
}

// rebootWait says what an installed update's reboot waits for.
func (a *Agent) rebootWait(mode string) string {
	if a.busy() {
		return "the end of the call"
	}
	if mode == fleet.RebootWindow {
		if w := a.window(); w != "" {
			return "the maintenance window " + w
		}
	}
	return "konsult-update"
}

func (a *Agent) window() string {
	if a.opts.Update.Window == nil {
		return ""
	}
	return a.opts.Update.Window()
}

func (a *Agent) now() time.Time {
	if a.opts.Update.Now != nil {
		return a.opts.Update.Now()
	}
	return time.Now()
}

// newer says whether dotted version x is higher than y, number by number.
func newer(x, y string) bool {
	xs, ys := strings.Split(x, "."), strings.Split(y, ".")
	for i := 0; i < len(xs) || i < len(ys); i++ {
		var xi, yi uint64
		if i < len(xs) {
			xi, _ = strconv.ParseUint(xs[i], 10, 64)
		}
		if i < len(ys) {
			yi, _ = strconv.ParseUint(ys[i], 10, 64)
		}
		if xi != yi {
			return xi > yi
		}
	}
	return false
}

// updateCommand carries out a verified update command: refused when it
// cannot be taken, deferred during a call, else the request is written.
func (a *Agent) updateCommand(res *fleet.CommandResult, u fleet.UpdateArgs) {
	fail := func(msg string) {
		res.Reason, res.Message = "failed", msg
		a.log.Warn("command failed", "name", res.Name, "err", msg)
		a.publish(fleet.EventCommandRefused, *res)
	}
	o := a.opts.Update
	if o == nil {
		fail("this unit does not update over the air (it has no update folder)")
		return
	}
	if o.RunningVersion != nil {
		if rv := strings.TrimSpace(o.RunningVersion()); fleet.ValidVersion(rv) && !newer(u.Version, rv) && !u.Downgrade {
			fail(fmt.Sprintf("version %s is not newer than the running %s: send it with --downgrade, and a bundle signed as a downgrade, to go back", u.Version, rv))
			return
		}
	}
	st, err := readUpdateState(o.Dir)
	if err != nil {
		fail("the unit cannot read its update state: " + a.redact.text(err.Error()))
		return
	}
	switch st["phase"] {
	case "downloading", "verifying", "installing", "rebooting":
		fail(fmt.Sprintf("an update is already under way (%s %s): wait for it to finish", st["phase"], st["pending_version"]))
		return
	}
	rec := a.updateRec()
	if a.busy() {
		rec.Deferred = &u
		a.setUpdate(rec)
		res.Message = fmt.Sprintf("deferred: the unit is in a call; it asks for version %s when the call ends", u.Version)
		a.log.Info("command done", "name", res.Name, "deferred", true)
		a.publish(fleet.EventCommandDone, *res)
		a.publishReported()
		return
	}
	if err := a.requestUpdate(u, false); err != nil {
		fail(err.Error())
		return
	}
	res.Message = fmt.Sprintf("requested: the unit downloads and installs version %s, then reboots %s", u.Version, a.rebootWhen(u.Reboot))
	a.log.Info("command done", "name", res.Name)
	a.publish(fleet.EventCommandDone, *res)
}

func (a *Agent) rebootWhen(mode string) string {
	if w := a.window(); mode == fleet.RebootWindow && w != "" {
		return "in its maintenance window " + w + " when idle"
	}
	return "as soon as it is installed and the unit is idle"
}

// requestUpdate writes konsult-update's request (install only: the reboot
// is asked for later, see checkUpdate) and records what was asked.
func (a *Agent) requestUpdate(u fleet.UpdateArgs, deferred bool) error {
	// version= is for konsult-update to check against the signed manifest;
	// id= comes back in the state if konsult-update refuses the request.
	id := fleet.NewNonce()
	body := fmt.Sprintf("url=%s\nsha256=%s\nversion=%s\nid=%s\n", u.URL, u.SHA256, u.Version, id)
	if err := a.writeRequest(body); err != nil {
		return err
	}
	rec := a.updateRec()
	rec.Deferred, rec.Wanted, rec.WantedReboot, rec.RequestID, rec.RebootID = nil, u.Version, u.Reboot, id, ""
	a.setUpdate(rec)
	a.log.Info("update requested", "version", u.Version, "reboot", u.Reboot, "deferred", deferred)
	a.publish(fleet.EventUpdateRequested, fleet.UpdateEvent{Version: u.Version, Reboot: u.Reboot, Deferred: deferred})
	a.publishReported()
	return nil
}

func (a *Agent) writeRequest(body string) error {
	dir := a.opts.Update.Dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("the unit could not make its update folder: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, "request"), []byte(body), 0o600); err != nil {
		return fmt.Errorf("the unit could not write its update request: %w", err)
	}
	return nil
}

// checkUpdate runs in the agent's loop: after a call ends, at start and
// every UpdateOptions.Poll. It writes a deferred request once the unit is
// idle, asks for the reboot of an installed update when it may, and turns
// the state's rollback and newly good slot into events and audit records.
func (a *Agent) checkUpdate() {
	o := a.opts.Update
	if o == nil {
		return
	}
	rec := a.updateRec()
	if rec.Deferred != nil && !a.busy() {
		if err := a.requestUpdate(*rec.Deferred, true); err != nil {
			a.log.Error("update: the deferred request was not written; it is tried again", "err", err)
		}
		rec = a.updateRec()
	}
	st, err := readUpdateState(o.Dir)
	if err != nil {
		a.log.Warn("update: konsult-update's state is unreadable", "err", err)
		return
	}
	// The fleet follows an update through the reported document: publish
	// it again whenever konsult-update's state moves on.
	changed := false
	if seen := stateDigest(st); seen != a.updSeen {
		a.updSeen, changed = seen, a.updSeen != "" || len(st) > 0
	}
	if at := st["rolled_back_at"]; at != "" && at != rec.ReportedRollback {
		rb := fleet.UpdateRollback{Version: st["rolled_back_version"], Slot: otherSlot(st["booted_slot"]), Reason: a.redact.text(st["rolled_back_reason"]), At: at}
		a.log.Warn("update rolled back", "version", rb.Version, "reason", rb.Reason)
		a.RecordUpdate(false, rb.Version, rb.Slot, rb.Reason)
		a.publish(fleet.EventUpdateRolledBack, rb)
		rec.ReportedRollback, changed = at, true
		if rec.Wanted == rb.Version {
			rec = rec.done()
		}
	}
	if at := st["last_good_at"]; at != "" && at != rec.ReportedGood {
		ev := fleet.UpdateEvent{Version: st["last_good_version"], Slot: st["booted_slot"]}
		a.log.Info("update installed and marked good", "version", ev.Version, "slot", ev.Slot)
		a.RecordUpdate(true, ev.Version, ev.Slot, "")
		a.publish(fleet.EventUpdateInstalled, ev)
		rec.ReportedGood, changed = at, true
		if rec.Wanted == ev.Version {
			rec = rec.done()
		}
	}
	if rec.Wanted != "" && rec.RequestID != "" && st["failed_request"] == rec.RequestID {
		// Refused (its reason is the state's last_failure, reported as
		// such): nothing is requested any more.
		a.log.Warn("update: konsult-update refused the requested version", "version", rec.Wanted)
		rec, changed = rec.done(), true
	}
	// Asked once, and again only if konsult-update found a call starting
	// when it came to reboot (it then leaves the update installed).
	ask := rec.RebootID == "" || st["reboot_deferred"] == rec.RebootID
	if rec.Wanted != "" && ask && st["phase"] == "installed" && st["pending_version"] == rec.Wanted && a.mayReboot(rec.WantedReboot) {
		id := fleet.NewNonce()
		if err := a.writeRequest("reboot=only\nid=" + id + "\n"); err != nil {
			a.log.Error("update: the reboot request was not written; it is tried again", "err", err)
		} else {
			a.log.Info("update installed: asked konsult-update to reboot into it", "version", rec.Wanted, "again", rec.RebootID != "")
			rec.RebootID, changed = id, true
		}
	}
	if changed {
		a.setUpdate(rec)
		a.publishReported()
	}
}

// done is the record once its wanted update is over (good, rolled back or
// refused).
func (r updateRecord) done() updateRecord {
	r.Wanted, r.WantedReboot, r.RequestID, r.RebootID = "", "", "", ""
	return r
}

// stateDigest is the part of the state the reported document shows.
func stateDigest(st map[string]string) string {
	var b strings.Builder
	for _, k := range []string{"phase", "booted_slot", "booted_version", "pending_version", "pending_slot", "from_slot", "from_version",
		"last_failure", "last_failure_at", "last_good_version", "rolled_back_version", "rolled_back_at"} {
		b.WriteString(k + "=" + st[k] + "\n")
	}
	return b.String()
}

// mayReboot says whether an installed update may reboot the unit now.
func (a *Agent) mayReboot(mode string) bool {
	if a.busy() {
		return false
	}
	if mode != fleet.RebootWindow {
		return true
	}
	w, err := config.ParseWindow(a.window())
	if err != nil {
		a.log.Warn("update: update.reboot_window is not a window; rebooting when idle", "err", err)
		return true
	}
	return w.Contains(a.now())
}
