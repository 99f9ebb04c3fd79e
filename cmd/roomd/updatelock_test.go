package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
)

// updateRoot is a root for the real konsult-update
// (image/rootfs/usr/local/sbin) under KONSULT_UPDATE_ROOT, with stand-ins
// on PATH for what needs root or a device: curl copies the bundle, rauc
// answers as RAUC does for a good bundle (its signature and dm-verity are
// tested under QEMU: image/boottest TestUpdate), and systemctl records a
// reboot instead of doing it. flock, sed and sha256sum are the real ones.
type updateRoot struct {
	t              *testing.T
	root, dir, bin string
	rebooted       string // the stand-in systemctl's record
}

func newUpdateRoot(t *testing.T, version string) *updateRoot {
	r := &updateRoot{t: t, root: t.TempDir(), bin: t.TempDir()}
	r.dir = filepath.Join(r.root, "var/lib/konsult/update")
	r.rebooted = filepath.Join(r.bin, "rebooted")
	bootID, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"etc/konsult/image-version":      "2026.1201.1\n",
		"proc/cmdline":                   "root=/dev/vda2 rauc.slot=A quiet\n",
		"proc/sys/kernel/random/boot_id": string(bootID),
		"bundle":                         "test", // sha256 updateSum
	}
	for name, body := range files {
		p := filepath.Join(r.root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stubs := map[string]string{
		"curl": `out=""; while [ $# -gt 0 ]; do [ "$1" = --output ] && out="$2"; shift; done; cp "` + r.root + `/bundle" "$out"`,
		"rauc": `case "$1" in
info) printf "RAUC_MF_COMPATIBLE='konsult-amd64'\nRAUC_MF_VERSION='` + version + `'\nRAUC_MF_DESCRIPTION=''\n" ;;
mount) mkdir -p "` + r.bin + `/mnt"; echo "$2" > "` + r.bin + `/mnt/.source"; echo "Mounted bundle at ` + r.bin + `/mnt. Use 'umount ` + r.bin + `/mnt' to unmount." ;;
install) ;;
*) exit 1 ;;
esac`,
		"findmnt":   `for a; do last="$a"; done; cat "$last/.source"`,
		"umount":    `exit 0`,
		"systemctl": `echo "$*" >> "` + r.rebooted + `"`,
	}
	for name, body := range stubs {
		if err := os.WriteFile(filepath.Join(r.bin, name), []byte("#!/bin/bash\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// run runs konsult-update as konsult-update.path would.
func (r *updateRoot) run(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("bash", append([]string{"../../image/rootfs/usr/local/sbin/konsult-update"}, args...)...)
	cmd.Env = append(os.Environ(), "KONSULT_UPDATE_ROOT="+r.root, "PATH="+r.bin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	r.t.Logf("konsult-update %s: %v\n%s", strings.Join(args, " "), err, out)
	return string(out)
}

func (r *updateRoot) state() map[string]string {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, "state"))
	if err != nil {
		r.t.Fatal(err)
	}
	st := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			st[k] = v
		}
	}
	return st
}

func (r *updateRoot) reboots() int {
	b, _ := os.ReadFile(r.rebooted)
	return strings.Count(string(b), "reboot")
}

// waitRequest waits for roomd's request and returns it.
func (r *updateRoot) waitRequest(what string) string {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(r.dir, "request")); err == nil {
			return string(b)
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("roomd wrote no request for %s within 10 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An update's reboot never cuts a call, however the two meet. A call that
// starts after roomd asked for the reboot but before konsult-update acts on
// it holds the call lock: the reboot waits, and roomd asks again after
// LEAVE. Once konsult-update has begun the reboot, a JOIN is refused with
// the restart notice, not a fault, and nothing leaves the room. Before the
// lock, konsult-update rebooted under the call.
func TestUpdateRebootNeverCutsACall(t *testing.T) {
	const v = "2026.1203.1"
	f := newUpdateFleet(t)
	r := newUpdateRoot(t, v)
	u := startUpdateUnit(t, f, r.dir)

	if out, err := f.update(v, "--reboot", "now"); err != nil || !strings.Contains(out, "requested") {
		t.Fatalf("fleetctl update: %v\n%s", err, out)
	}
	r.waitRequest("the install")
	r.run("request")
	if st := r.state(); st["phase"] != "installed" || st["pending_version"] != v {
		t.Fatalf("after the install: state %v", st)
	}

	// roomd found the unit idle and asked for the reboot; JOIN is pressed
	// before konsult-update acts on it.
	u.press("join")
	u.waitFor("in call", 10*time.Second, isState(appliance.InCall))
	if err := os.WriteFile(filepath.Join(r.dir, "request"), []byte("reboot=only\nid=0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.run("request")
	if n := r.reboots(); n != 0 {
		t.Fatalf("konsult-update rebooted the unit %d time(s) during a call", n)
	}
	if st := r.state(); st["phase"] != "installed" || st["reboot_deferred"] != "0123456789abcdef" {
		t.Fatalf("a reboot deferred by the call: state %v", st)
	}
	if s := u.status(); s.State != appliance.InCall {
		t.Fatalf("the call after konsult-update ran: %s", s.State)
	}

	// LEAVE: roomd asks again, and this time the reboot goes ahead.
	u.press("leave")
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	if req := r.waitRequest("the reboot after LEAVE"); !strings.HasPrefix(req, "reboot=only\n") {
		t.Fatalf("roomd's request after LEAVE = %q", req)
	}
	r.run("request")
	if n := r.reboots(); n != 1 {
		t.Fatalf("konsult-update rebooted %d time(s) once the call was over, want 1", n)
	}
	if st := r.state(); st["phase"] != "rebooting" || st["rebooting_boot"] == "" {
		t.Fatalf("after the reboot began: state %v", st)
	}

	// The reboot is under way: a JOIN now is refused and nothing leaves
	// the room (the shutter starts to open with any JOIN, as for one with
	// nothing due, and closes again).
	u.press("join")
	evs := u.waitFor("the restart notice", 10*time.Second, func(e appliance.Event) bool { return e.Type == "call" && e.Detail == "restarting" })
	evs = append(evs, u.waitFor("idle", 10*time.Second, isState(appliance.Idle))...)
	for _, e := range evs {
		if e.Type == "gate" && e.Gate != nil && (e.Gate.Video || e.Gate.Audio) {
			t.Fatalf("the gate opened for a JOIN during the reboot: %s", describe(evs))
		}
	}
	s := u.status()
	if s.Notice != appliance.ErrRestarting.Error() || s.LastError != "" || len(s.Faults) != 0 || s.Shutter != "closed" {
		t.Fatalf("status after a JOIN during the reboot: notice %q, last error %q, faults %v, shutter %s", s.Notice, s.LastError, s.Faults, s.Shutter)
	}
}
