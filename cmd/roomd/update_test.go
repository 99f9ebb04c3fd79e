package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

const updateSum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// updateFleet is a fleet side with fleetctl, its signing key in a file.
type updateFleet struct {
	*fleetSide
	bin, key string
}

func newUpdateFleet(t *testing.T) *updateFleet {
	f := &updateFleet{fleetSide: newFleetSide(t), bin: buildFleetctl(t), key: filepath.Join(t.TempDir(), "fleet.key")}
	if err := os.WriteFile(f.key, fleet.FormatPrivateKey(f.Key), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *updateFleet) fleetctl(args ...string) (string, error) {
	cmd := exec.Command(f.bin, args...)
	adm := f.b.Admin()
	cmd.Env = append(os.Environ(), "HOME="+f.T.TempDir(), "XDG_CONFIG_HOME=", "FLEETCTL_BROKER="+f.b.SharedURL(),
		"FLEETCTL_CA="+f.b.CAFile(), "FLEETCTL_CERT="+adm.CertFile, "FLEETCTL_CERT_KEY="+adm.KeyFile)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (f *updateFleet) update(version string, extra ...string) (string, error) {
	args := append([]string{"update", "--key", f.key, "--device", fleetDevice, "--url", "https://updates.clinic.example/konsult-" + version + ".raucb",
		"--version", version, "--sha256", updateSum, "--wait", "20s"}, extra...)
	return f.fleetctl(args...)
}

// rawUpdate signs an update command without fleetctl's checks, as a
// broken or hostile fleet tool would, and returns the unit's answer.
func (f *updateFleet) rawUpdate(args map[string]string) fleet.CommandResult {
	f.T.Helper()
	raw := map[string]json.RawMessage{}
	for k, v := range args {
		b, _ := json.Marshal(v)
		raw[k] = b
	}
	p := fleet.CommandPayload{Kind: fleet.KindCommand, Name: fleet.CommandUpdate, Args: raw, Nonce: fleet.NewNonce(),
		IssuedAt: time.Now().Add(-time.Minute), ExpiresAt: time.Now().Add(5 * time.Minute), Target: devTarget}
	b, _ := json.Marshal(p)
	f.Publish(link.Topics{}.DeviceCmd(fleetDevice), false, fleet.Sign(f.Key, fleet.DomainCommand, b).Marshal())
	for {
		d := fleettest.Data[fleet.CommandResult](f.T, f.WaitEvent(fleet.EventCommandRefused, 10*time.Second))
		if d.Nonce == p.Nonce {
			return d
		}
	}
}

func startUpdateUnit(t *testing.T, f *updateFleet, dir string) *unitUnderTest {
	t.Helper()
	u := startUnit(t, f.unitConfig(filepath.Join(t.TempDir(), "state"))+fmt.Sprintf("[update]\ndir = %q\nreboot_window = \"02:00-04:00\"\n", dir))
	f.WaitEvent(fleet.EventStarted, 10*time.Second)
	u.eventually("fleet connected", func(s status) bool { return s.Fleet != nil && s.Fleet.Connected })
	return u
}

// fleetctl update makes an idle unit write konsult-update's request; a
// unit in a call answers deferred and writes it after LEAVE; http:// and a
// bad hash are refused by the unit itself with the reason fleetctl shows.
func TestFleetUpdateCommand(t *testing.T) {
	f := newUpdateFleet(t)
	dir := filepath.Join(t.TempDir(), "update")
	u := startUpdateUnit(t, f, dir)
	req := filepath.Join(dir, "request")

	out, err := f.update("2026.1203.1", "--reboot", "now")
	t.Logf("fleetctl update:\n%s", out)
	if err != nil || !strings.Contains(lineWith(out, fleetDevice), "done") || !strings.Contains(out, "requested") {
		t.Fatalf("fleetctl update on an idle unit: %v\n%s", err, out)
	}
	want := "url=https://updates.clinic.example/konsult-2026.1203.1.raucb\nsha256=" + updateSum + "\nversion=2026.1203.1\nid="
	if b, _ := os.ReadFile(req); !strings.HasPrefix(string(b), want) {
		t.Fatalf("request = %q, want %q and an id", b, want)
	}
	u.eventually("status shows the request", func(s status) bool {
		return s.Fleet.Update != nil && s.Fleet.Update.Requested == "2026.1203.1"
	})
	os.Remove(req) // konsult-update takes it

	u.press("join")
	u.waitFor("in call", 10*time.Second, isState(appliance.InCall))
	out, err = f.update("2026.1204.1")
	t.Logf("fleetctl update during a call:\n%s", out)
	if err != nil || !strings.Contains(lineWith(out, fleetDevice), "deferred") {
		t.Fatalf("fleetctl update during a call: %v\n%s", err, out)
	}
	if _, err := os.Stat(req); !os.IsNotExist(err) {
		t.Fatal("the unit wrote the update request during a call")
	}
	if s := u.status(); s.Fleet.Update == nil || !s.Fleet.Update.Deferred || s.Fleet.Update.Requested != "2026.1204.1" {
		t.Fatalf("status during the call: %+v", s.Fleet.Update)
	}
	u.press("leave")
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	for !fleettest.Data[fleet.UpdateEvent](t, f.WaitEvent(fleet.EventUpdateRequested, 10*time.Second)).Deferred {
	}
	if b, _ := os.ReadFile(req); !strings.Contains(string(b), "version=2026.1204.1\n") {
		t.Fatalf("request after LEAVE = %q", b)
	}
	os.Remove(req)

	// fleetctl refuses http:// before signing...
	if out, err := f.fleetctl("update", "--key", f.key, "--device", fleetDevice, "--url", "http://updates.clinic.example/k.raucb",
		"--version", "2026.1205.1", "--sha256", updateSum); err == nil || !strings.Contains(out, "https") {
		t.Fatalf("fleetctl update with http://: %v\n%s", err, out)
	}
	// A presigned URL's token would be kept in clear on the unit: refused
	// before signing, without quoting it.
	if out, err := f.fleetctl("update", "--key", f.key, "--device", fleetDevice, "--url", "https://bucket.example/k.raucb?X-Amz-Signature=0123abcd",
		"--version", "2026.1205.1", "--sha256", updateSum); err == nil || !strings.Contains(out, "query") || strings.Contains(out, "0123abcd") {
		t.Fatalf("fleetctl update with a presigned query: %v\n%s", err, out)
	}
	// ...and so does the unit, for a command signed without fleetctl.
	good := map[string]string{"url": "https://updates.clinic.example/k.raucb", "version": "2026.1205.1", "sha256": updateSum}
	bad := map[string]string{"url": "http://updates.clinic.example/k.raucb", "version": good["version"], "sha256": good["sha256"]}
	if r := f.rawUpdate(bad); r.Reason != string(fleet.ReasonSchema) || !strings.Contains(r.Message, "https") {
		t.Fatalf("http:// answer: %+v", r)
	}
	bad = map[string]string{"url": good["url"], "version": good["version"], "sha256": "9f86d081"}
	if r := f.rawUpdate(bad); r.Reason != string(fleet.ReasonSchema) || !strings.Contains(r.Message, "64 lowercase hex") {
		t.Fatalf("bad hash answer: %+v", r)
	}
	if _, err := os.Stat(req); !os.IsNotExist(err) {
		t.Fatal("a refused update command wrote a request")
	}
}

// A rollback konsult-update recorded shows in the unit's status and
// reaches the fleet as update_rolled_back.
func TestFleetUpdateRollbackShown(t *testing.T) {
	f := newUpdateFleet(t)
	dir := filepath.Join(t.TempDir(), "update")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	st := "booted_slot=A\nbooted_version=2026.1201.1\nphase=idle\nrolled_back_version=2026.1203.1\n" +
		"rolled_back_reason=slot B did not come up (boot counting fell back)\nrolled_back_at=2026-12-02T03:10:00Z\n" +
		"last_failure=slot B did not come up (boot counting fell back)\n"
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte(st), 0o644); err != nil {
		t.Fatal(err)
	}
	u := startUpdateUnit(t, f, dir)
	ev := fleettest.Data[fleet.UpdateRollback](t, f.WaitEvent(fleet.EventUpdateRolledBack, 10*time.Second))
	if ev.Version != "2026.1203.1" || ev.Slot != "B" || !strings.Contains(ev.Reason, "boot counting fell back") {
		t.Fatalf("update_rolled_back = %+v", ev)
	}
	s := u.status()
	up := s.Fleet.Update
	if up == nil || up.RolledBack == nil || up.RolledBack.Version != "2026.1203.1" || up.BootedVersion != "2026.1201.1" || up.LastFailure == "" {
		t.Fatalf("status update = %+v", up)
	}
	// The event and the retained reported document are two publishes; the
	// event can arrive first.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := f.Reported(fleetDevice).Update
		if r != nil && r.RolledBack != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reported update = %+v", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
