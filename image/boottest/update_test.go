package boottest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/fleettest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

const (
	// A boot under TCG to the health check's verdict (about 2 min alone).
	updateBootTimeout = 12 * time.Minute
	// Download, signature check and install of a full bundle, then the
	// reboot: the slot is written under TCG.
	updateInstallTimeout = 30 * time.Minute
	// v3's health_timeout: its roomd never starts, so the check gives up
	// after this and the unit goes back (the image's default is 300 s).
	brokenHealthTimeout = 90
	// How long each call of step 2 is watched for an install or a reboot
	// that should not come.
	callHold = 60 * time.Second
	// The host's loopback as QEMU's user network shows it to the guest;
	// the test's namespace carries it on lo too (LiveKit advertises it).
	hostAlias      = "10.0.2.2"
	conferenceRoom = "update-test"
)

// TestUpdate drives a real over-the-air update on the amd64 image under
// QEMU: the fleet's signed update command, roomd, konsult-update, RAUC and
// GRUB's boot counting (docs/UPDATES.md). v1 boots on slot A; v2 (the same
// build, a higher version), sent during a real call, waits for its end, and
// its reboot waits for a second call; it is installed into B, boots and is
// marked good;
// bundles of another signer, a tampered one and an older version are
// refused; v3, whose roomd cannot start, is installed into A, fails its
// health check, and the unit falls back to v2 by itself and reports
// update_rolled_back.
func TestUpdate(t *testing.T) {
	if os.Getenv("KONSULT_UPDATE_TEST") != "1" {
		t.Skip("installs updates under QEMU (30-60 min): set KONSULT_UPDATE_TEST=1 (as root)")
	}
	if os.Getenv("KONSULT_BOOT_NETNS") == "" {
		reexecInLoopbackNetns(t, "TestUpdate")
		return
	}
	img := imagePath(t)
	base := strings.TrimSuffix(img, ".img")
	v1 := strings.TrimSpace(string(readFile(t, base+".version")))
	keys := os.Getenv("KONSULT_UPDATE_KEYS")
	if keys == "" {
		keys = "../../.cache/update-keys"
	}
	keys, _ = filepath.Abs(keys)
	if _, err := os.Stat(filepath.Join(keys, "signing.key")); err != nil {
		t.Fatalf("%v: the image's update keys (image/update-key, KONSULT_UPDATE_KEYS)", err)
	}

	broker := brokertest.Start(t, brokertest.Options{Units: map[string][]string{deviceID: {group}}})
	_, port, _ := net.SplitHostPort(broker.Addr())
	serveNTP(t)
	m := fleettest.New(t, broker, deviceID)
	dir := t.TempDir()
	served := filepath.Join(dir, "www")
	_ = os.MkdirAll(served, 0o755)
	site, siteCA := serveBundles(t, served)

	u := &updateUnit{t: t, m: m, dir: dir, disk: filepath.Join(dir, "unit.img"), vars: filepath.Join(dir, "efivars.fd")}
	run(t, "cp", "--sparse=always", img, u.disk)
	run(t, "cp", ovmfVars, u.vars)
	// A card bigger than the image, as every real one is: the first boot
	// grows the data partition, where konsult-update keeps the download.
	if st, err := os.Stat(u.disk); err != nil {
		t.Fatal(err)
	} else if err := os.Truncate(u.disk, st.Size()+2<<30); err != nil {
		t.Fatal(err)
	}
	u.openLog()
	// The consultation of step 2: LiveKit on the host, behind TLS at the
	// address the guest reaches it by, as the lab has it.
	lk := farend.StartLiveKit(t, farend.AdvertiseIP(hostAlias))
	confCA, confPort := farend.TLSFront(t, lk.URL, hostAlias)
	conf := conferenceConfig{url: fmt.Sprintf("https://%s:%d", hostAlias, confPort), ca: confCA, lk: lk}
	files := func(e *rootEdit) { updateTestFiles(e, broker, port, m, siteCA, conf) }
	offs, sizes := partitions(t, u.disk)
	slotA := filepath.Join(dir, "slot-a.ext4")
	copyRange(t, u.disk, slotA, offs[1], sizes[1], false)
	e := newRootEdit(t, dir, slotA)
	files(e)
	e.apply(slotA)
	copyRange(t, slotA, u.disk, offs[1], sizes[1], true)
	os.Remove(slotA)
	u.bootOff = offs[0]

	// The bundles, built while v1 boots: v2 and v3 from the image's own
	// root slot (with the test's files, as the fleet's image build would
	// carry its enrolment config), small ones for the refusals.
	v2, v3 := v1+".1", v1+".2"
	bundles := map[string]string{}
	var bundleErr error
	var bundleWall time.Duration
	built := make(chan struct{})
	go func() {
		defer close(built)
		t0 := time.Now()
		bundles, bundleErr = buildTestBundles(t, dir, served, base+".rootfs.ext4", keys, v1, v2, v3, files)
		bundleWall = time.Since(t0)
	}()

	// 1. v1 on slot A, healthy and marked good.
	u.boot()
	rep := u.waitReport(updateBootTimeout)
	u.checkBooted(rep, "A", v1)
	if r := section(rep, "update-rauc"); bootStatus(r, "rootfs.0") != "good" {
		t.Errorf("after v1's health check, rauc status does not say slot A (rootfs.0) is good:\n%s", r)
	}
	<-built
	if bundles == nil && bundleErr == nil {
		t.FailNow() // a helper in the bundles' goroutine failed the test
	}
	if bundleErr != nil {
		t.Fatal(bundleErr)
	}
	t.Logf("bundles built in %s: %s", bundleWall.Round(time.Second), bundles["sizes"])

	// 2. v2, sent during a consultation (a patient in a real LiveKit
	// call with the unit): nothing is installed while it lasts. After it,
	// the unit installs; a second call starts during the download, and the
	// installed update's reboot waits for its end too. Then v2 is
	// installed into B, rebooted into, marked good and reported.
	fe := farend.StartFarEnd(t, lk, conferenceRoom, "patient")
	u.joinCall(fe, "the first call")
	sent := time.Now()
	u.update(fleet.UpdateArgs{URL: site + "/v2.raucb", Version: v2, SHA256: bundles["v2"], Reboot: fleet.RebootNow}, "deferred")
	u.holdsOff(fe, callHold, "v2 sent during the first call", func(r *fleet.UpdateReport) string {
		if r == nil || !r.Deferred || r.Requested != v2 {
			return fmt.Sprintf("reported update %+v, want v2 requested and deferred", r)
		}
		if r.Phase != "" && r.Phase != "idle" {
			return fmt.Sprintf("konsult-update is %s during the call, want idle", r.Phase)
		}
		return ""
	})
	u.leaveCall("the first call")
	r := u.waitReported("the deferred v2 requested once the call ended", 2*time.Minute, func(r *fleet.UpdateReport) bool {
		return !r.Deferred && (r.Phase == "downloading" || r.Phase == "verifying" || r.Phase == "installing" || r.Phase == "installed")
	})
	if ev := u.waitEvent(fleet.EventUpdateRequested, time.Minute); !fleettest.Data[fleet.UpdateEvent](t, ev).Deferred {
		t.Errorf("update_requested after the call = %+v, want it marked deferred", fleettest.Data[fleet.UpdateEvent](t, ev))
	}
	t.Logf("after the first call: konsult-update %s", r.Phase)
	u.joinCall(fe, "the second call, during v2's download")
	r = u.waitReported("v2 installed", updateInstallTimeout, func(r *fleet.UpdateReport) bool { return r.Phase == "installed" })
	t.Logf("v2 installed during the second call: reboot waiting for %q", r.RebootWaiting)
	u.holdsOff(fe, callHold, "v2 installed during the second call", func(r *fleet.UpdateReport) string {
		if r == nil || r.Phase != "installed" || r.PendingVersion != v2 || !strings.Contains(r.RebootWaiting, "call") {
			return fmt.Sprintf("reported update %+v, want v2 installed, its reboot waiting for the call", r)
		}
		return ""
	})
	u.leaveCall("the second call")
	left := time.Now()
	u.waitExit(5*time.Minute, "v2's reboot after the second call")
	rebootAfterCall := time.Since(left)
	installed := time.Since(sent)
	fe.Close()
	env := u.grubenv()
	if !strings.Contains(env, `ORDER=B A`) || !strings.Contains(env, "B_OK=1") || !strings.Contains(env, "B_TRY=0") {
		t.Errorf("after v2's install, grubenv does not make slot B first, good and untried:\n%s", env)
	}
	u.boot()
	rep = u.waitReport(updateBootTimeout)
	u.checkBooted(rep, "B", v2)
	if r := section(rep, "update-rauc"); !strings.Contains(r, "Booted from: rootfs.1 (B)") || bootStatus(r, "rootfs.1") != "good" {
		t.Errorf("on v2, rauc status does not say it booted from slot B (rootfs.1), marked good:\n%s", r)
	}
	st := section(rep, "update-state")
	ev := u.waitEvent(fleet.EventUpdateInstalled, 3*time.Minute)
	good := time.Since(sent)
	if d := fleettest.Data[fleet.UpdateEvent](t, ev); d.Version != v2 || d.Slot != "B" {
		t.Errorf("update_installed = %+v, want version %s slot B", d, v2)
	}
	r = u.waitReported("v2 reported", 2*time.Minute, func(r *fleet.UpdateReport) bool { return r.BootedVersion == v2 })
	if r.BootedSlot != "B" || r.Slots["A"] != v1 || r.Slots["B"] != v2 || r.LastGood != v2 {
		t.Errorf("reported update after v2: %+v, want booted B, slots A=%s B=%s, last good %s", r, v1, v2, v2)
	}

	// 3. Refused before anything is written, each with its reason.
	refusals := []struct {
		name, file, sum, version string
		downgrade                bool
		want                     string
	}{
		{"another signer", "wrong-signer.raucb", bundles["wrong-signer"], v1 + ".5", false, "signature check failed"},
		{"tampered (the command's hash is the bundle's before)", "tampered.raucb", bundles["small"], v1 + ".5", false, "sha256 does not match"},
		{"tampered (the command's hash is the tampered file's)", "tampered.raucb", bundles["tampered"], v1 + ".5", false, "does not match its signature"},
		{"older, not signed as a downgrade", "old.raucb", bundles["old"], v1, true, "not newer"},
	}
	for _, c := range refusals {
		t0 := time.Now()
		before := u.lastFailureAt()
		u.update(fleet.UpdateArgs{URL: site + "/" + c.file, Version: c.version, SHA256: c.sum, Downgrade: c.downgrade, Reboot: fleet.RebootNow}, "requested")
		r := u.waitReported(c.name+" refused", 5*time.Minute, func(r *fleet.UpdateReport) bool {
			return r.LastFailureAt != "" && r.LastFailureAt != before && r.Phase == "idle"
		})
		t.Logf("%s: refused in %.1f s: %s", c.name, time.Since(t0).Seconds(), r.LastFailure)
		if c.want != "refused" && !strings.Contains(r.LastFailure, c.want) {
			t.Errorf("%s: last failure %q, want it to say %q", c.name, r.LastFailure, c.want)
		}
		if strings.Contains(r.LastFailure, "rauc install failed") {
			t.Errorf("%s: refused only by rauc install, after it began writing slot A: %q", c.name, r.LastFailure)
		}
		if r.PendingVersion != "" || r.BootedVersion != v2 {
			t.Errorf("%s: reported %+v after the refusal, want nothing pending, v2 booted", c.name, r)
		}
		if r.Slots["A"] != v1 {
			t.Errorf("%s: after the refusal the fallback slot A no longer holds %s: slots %v", c.name, v1, r.Slots)
		}
		if r.Requested != "" {
			t.Errorf("%s: the refused version is still shown as requested (%s)", c.name, r.Requested)
		}
	}

	// 4. v3 cannot start roomd: installed into A, unhealthy, marked bad;
	// GRUB boots v2 on B again and the unit reports the rollback.
	sent3 := time.Now()
	u.update(fleet.UpdateArgs{URL: site + "/v3.raucb", Version: v3, SHA256: bundles["v3"], Reboot: fleet.RebootNow}, "requested")
	u.waitExit(updateInstallTimeout, "installing v3 and rebooting")
	installed3 := time.Since(sent3)
	if env := u.grubenv(); !strings.Contains(env, `ORDER=A B`) || !strings.Contains(env, "A_OK=1") {
		t.Errorf("after v3's install, grubenv does not make slot A first and good:\n%s", env)
	}
	u.boot()
	trial := time.Now()
	u.waitExit(updateBootTimeout, "v3's failed health check and its reboot")
	if out := u.console.String(); !strings.Contains(out, "unhealthy after "+fmt.Sprint(brokenHealthTimeout)+"s: roomd is not running") {
		t.Errorf("v3's boot did not log its failed health check:\n%s", tail(out, 40))
	}
	if env := u.grubenv(); !strings.Contains(env, "A_OK=0") {
		t.Errorf("after v3's failed health check, grubenv does not mark slot A bad:\n%s", env)
	}
	u.boot()
	rep = u.waitReport(updateBootTimeout)
	u.checkBooted(rep, "B", v2)
	ev = u.waitEvent(fleet.EventUpdateRolledBack, 3*time.Minute)
	back := time.Since(trial)
	rb := fleettest.Data[fleet.UpdateRollback](t, ev)
	if rb.Version != v3 || rb.Slot != "A" || !strings.Contains(rb.Reason, "roomd is not running") {
		t.Errorf("update_rolled_back = %+v, want version %s, slot A, the reason roomd is not running", rb, v3)
	}
	r = u.waitReported("the rollback reported", 2*time.Minute, func(r *fleet.UpdateReport) bool { return r.RolledBack != nil })
	if r.BootedVersion != v2 || r.BootedSlot != "B" || r.RolledBack.Version != v3 {
		t.Errorf("reported update after the rollback: %+v (rolled back %+v)", r, r.RolledBack)
	}
	if rs := section(rep, "update-rauc"); !strings.Contains(rs, "Booted from: rootfs.1 (B)") {
		t.Errorf("after the fallback, rauc status does not say it booted from slot B:\n%s", rs)
	}

	summary := fmt.Sprintf("update test %s (TCG, 2 cores; QEMU restarted at each reboot)\n"+
		"  bundles: %s (built in %s beside v1's boot)\n"+
		"  v2 (sent during a call, held %s; installed during a second one, held %s more): command -> rebooting %.1f s (konsult-update: %s); second call's end -> reboot %.1f s; command -> update_installed (slot B good) %.1f s\n"+
		"  v3 (roomd cannot start, health_timeout %d s): command -> installed and rebooting %.1f s; its boot -> back on v2 and update_rolled_back %.1f s\n"+
		"  v2's state after its boot:\n%s",
		time.Now().UTC().Format(time.RFC3339), bundles["sizes"], bundleWall.Round(time.Second), callHold, callHold, installed.Seconds(), stateTimes(st), rebootAfterCall.Seconds(), good.Seconds(),
		brokenHealthTimeout, installed3.Seconds(), back.Seconds(), indent(st))
	t.Log(summary)
	if p := os.Getenv("KONSULT_UPDATE_RESULT"); p != "" {
		_ = os.WriteFile(p, []byte(summary+"\n"), 0o644)
	}
}

// updateUnit is the unit's disk, booted again and again, and the fleet's
// side of it.
type updateUnit struct {
	t          *testing.T
	m          *fleettest.Manager
	dir        string
	disk, vars string
	bootOff    int64 // the FAT boot partition's offset in disk
	log        *os.File
	vm         *vm
	console    *consoleLog
	boots      int
	seen       int // events already looked at by waitEvent
}

func (u *updateUnit) openLog() {
	p := filepath.Join(u.dir, "console.log")
	if q := os.Getenv("KONSULT_BOOT_CONSOLE"); q != "" {
		p = q
	}
	f, err := os.Create(p)
	if err != nil {
		u.t.Fatal(err)
	}
	u.log = f
	u.t.Cleanup(func() { f.Close() })
}

func (u *updateUnit) boot() {
	u.boots++
	u.console = &consoleLog{}
	fmt.Fprintf(u.log, "\n==== boot %d at %s\n", u.boots, time.Now().UTC().Format(time.RFC3339))
	u.vm = startVM(u.t, u.disk, u.vars, io.MultiWriter(u.console, u.log), "-m", "1536", "-vga", "none")
	v := u.vm
	u.t.Cleanup(v.stop)
}

// waitReport waits for this boot's report (after its health check).
func (u *updateUnit) waitReport(within time.Duration) string {
	u.t.Helper()
	deadline := time.After(within)
	for !u.console.has("@@ update-done") {
		select {
		case err := <-u.vm.exited:
			u.t.Fatalf("boot %d: QEMU exited (%v) before the report:\n%s", u.boots, err, tail(u.console.String(), 60))
		case <-deadline:
			u.t.Fatalf("boot %d: no report after %s:\n%s", u.boots, within, tail(u.console.String(), 60))
		case <-time.After(time.Second):
		}
	}
	u.t.Logf("boot %d: reported %.1f s after QEMU started", u.boots, time.Since(u.vm.start).Seconds())
	return u.console.String()
}

// waitExit waits for the guest to reboot (QEMU exits: -no-reboot).
func (u *updateUnit) waitExit(within time.Duration, what string) {
	u.t.Helper()
	select {
	case <-u.vm.exited:
		u.t.Logf("boot %d: rebooted %.1f s after QEMU started (%s)", u.boots, time.Since(u.vm.start).Seconds(), what)
	case <-time.After(within):
		u.t.Fatalf("boot %d: no reboot within %s (%s); update state %+v:\n%s", u.boots, within, what, u.m.Reported(deviceID).Update, tail(u.console.String(), 60))
	}
}

func (u *updateUnit) checkBooted(rep, slot, version string) {
	u.t.Helper()
	if got := strings.TrimSpace(section(rep, "update-boot")); got != "slot="+slot+" version="+version {
		u.t.Errorf("boot %d: %q, want slot=%s version=%s\n%s", u.boots, got, slot, version, section(rep, "update-grubenv"))
	}
	if h := section(rep, "update-health"); !strings.Contains(h, "slot "+slot+" ("+version+") marked good") {
		u.t.Errorf("boot %d: the health check did not mark slot %s (%s) good:\n%s", u.boots, slot, version, h)
	}
}

// grubenv is GRUB's environment block on the boot partition, read off the
// disk while QEMU is stopped.
func (u *updateUnit) grubenv() string {
	u.t.Helper()
	out := output(u.t, "mtype", "-i", fmt.Sprintf("%s@@%d", u.disk, u.bootOff), "::grub/grubenv")
	env := strings.ReplaceAll(strings.TrimRight(string(out), "#\n"), `"`, "")
	u.t.Logf("grubenv after boot %d: %s", u.boots, strings.Join(strings.Fields(env), " "))
	return env
}

// update sends the fleet's signed update command and checks the unit's
// answer says want.
func (u *updateUnit) update(a fleet.UpdateArgs, want string) {
	u.t.Helper()
	u.command(fleet.CommandUpdate, fleet.UpdateArgsJSON(a), want)
}

// command sends the fleet's signed command and checks the unit carried it
// out with an answer that says want.
func (u *updateUnit) command(name string, args map[string]json.RawMessage, want string) {
	u.t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	p := fleet.CommandPayload{Kind: fleet.KindCommand, Name: name, Args: args, Nonce: fleet.NewNonce(),
		IssuedAt: now, ExpiresAt: now.Add(30 * time.Minute), Target: fleet.Target{Device: deviceID}}
	u.m.Publish(link.Topics{}.DeviceCmd(deviceID), false, u.m.Command(p))
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for _, e := range u.m.Events() {
			if e.Type != fleet.EventCommandDone && e.Type != fleet.EventCommandRefused {
				continue
			}
			if d := fleettest.Data[fleet.CommandResult](u.t, e); d.Nonce == p.Nonce {
				if e.Type != fleet.EventCommandDone || !strings.Contains(d.Message, want) {
					u.t.Fatalf("%s: %s %+v, want done %q", name, e.Type, d, want)
				}
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	u.t.Fatalf("%s: no answer within a minute; events: %s", name, u.m.Types())
}

// joinCall sends the fleet's join and waits until the unit is in the call
// and the patient decodes its video. A join whose ICE did not get through
// QEMU's user network (image/lab's known open problem, about 1 in 4) is
// sent again, twice at most; each try is logged.
func (u *updateUnit) joinCall(fe *farend.FarEnd, what string) {
	u.t.Helper()
	for try := 1; ; try++ {
		t0 := time.Now()
		u.command(fleet.CommandJoin, nil, "")
		state := ""
		for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			if state = u.m.Status(deviceID).State; state == "in_call" {
				break
			}
		}
		if state == "in_call" {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			_, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.VideoFrom == "unit-1" && s.FPS > 0 })
			cancel()
			if err != nil {
				u.t.Fatalf("%s: the unit is in the call but the patient decodes no video from it: %v (%s)", what, err, fe.Stats())
			}
			u.t.Logf("%s: unit in the call and the patient sees it %.1f s after the join (try %d)", what, time.Since(t0).Seconds(), try)
			return
		}
		var faults []string
		for _, e := range u.m.Events() {
			if e.At.After(t0.Add(-time.Second)) && (e.Type == fleet.EventFault || e.Type == fleet.EventCameraLost || e.Type == fleet.EventShutterFault) {
				faults = append(faults, e.Type+" "+string(e.Data))
			}
		}
		if try == 3 {
			u.t.Fatalf("%s: the unit is %q, not in the call, 3 min after each of %d joins; faults since the last: %s; events: %s", what, state, try, faults, u.m.Types())
		}
		u.t.Logf("%s: try %d: the unit is %q 3 min after the join (faults: %s); joining again", what, try, state, faults)
	}
}

// leaveCall sends the fleet's leave and waits for the unit to be idle.
func (u *updateUnit) leaveCall(what string) {
	u.t.Helper()
	u.command(fleet.CommandLeave, nil, "")
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if u.m.Status(deviceID).State == "idle" {
			return
		}
	}
	u.t.Fatalf("%s: the unit is %q a minute after the leave, want idle", what, u.m.Status(deviceID).State)
}

// holdsOff watches the call for d: the unit must not reboot, must stay in
// the call with the patient decoding its video throughout, and its
// reported update must satisfy check ("" when it does) at the end.
func (u *updateUnit) holdsOff(fe *farend.FarEnd, d time.Duration, what string, check func(*fleet.UpdateReport) string) {
	u.t.Helper()
	before := fe.Stats().VideoFramesDecoded
	for end := time.Now().Add(d); time.Now().Before(end); {
		select {
		case <-u.vm.exited:
			u.t.Fatalf("%s: the unit rebooted during the call (update state %+v):\n%s", what, u.m.Reported(deviceID).Update, tail(u.console.String(), 40))
		case <-time.After(5 * time.Second):
		}
		if st := u.m.Status(deviceID).State; st != "in_call" {
			u.t.Fatalf("%s: the call was cut: the unit is %q (update state %+v)", what, st, u.m.Reported(deviceID).Update)
		}
	}
	after := fe.Stats()
	if after.VideoFramesDecoded <= before || after.FPS == 0 {
		u.t.Errorf("%s: the patient's video stalled during the call: frames decoded %d -> %d, %.1f fps", what, before, after.VideoFramesDecoded, after.FPS)
	}
	if msg := check(u.m.Reported(deviceID).Update); msg != "" {
		u.t.Errorf("%s: %s", what, msg)
	}
	u.t.Logf("%s: no install or reboot for %s; the patient decoded %d frames meanwhile (%.1f fps)", what, d, after.VideoFramesDecoded-before, after.FPS)
}

// waitEvent waits for the next event of type typ after the last one seen.
func (u *updateUnit) waitEvent(typ string, within time.Duration) fleettest.Event {
	u.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		all := u.m.Events()
		for i := u.seen; i < len(all); i++ {
			if all[i].Type == typ {
				u.seen = i + 1
				return all[i]
			}
		}
		time.Sleep(time.Second)
	}
	u.t.Fatalf("no %s event within %s; events: %s", typ, within, u.m.Types())
	return fleettest.Event{}
}

// waitReported waits until the reported document's update part satisfies ok.
func (u *updateUnit) waitReported(what string, within time.Duration, ok func(*fleet.UpdateReport) bool) *fleet.UpdateReport {
	u.t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := u.m.Reported(deviceID).Update
		if r != nil && ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("%s: not within %s; reported update %+v\n%s", what, within, r, tail(u.console.String(), 30))
		}
		time.Sleep(time.Second)
	}
}

func (u *updateUnit) lastFailureAt() string {
	if r := u.m.Reported(deviceID).Update; r != nil {
		return r.LastFailureAt
	}
	return ""
}

// updateTestFiles adds to a root filesystem what the unit of this test
// needs in every slot: its identity and fleet config (with roomd's update
// folder, which --sim would otherwise move next to its socket), the test
// site's CA for konsult-update's curl, the report, and no kiosk (Chromium
// under TCG would only slow every boot; the boot test covers it).
func updateTestFiles(e *rootEdit, b *brokertest.Broker, port string, m *fleettest.Manager, siteCA []byte, c conferenceConfig) {
	read := func(p string) []byte { return readFile(e.t, p) }
	unitIdentity(e, b, port, unitConfig("\n[update]\ndir = \"/var/lib/konsult/update\"\n"+c.section()), m.Pub)
	// roomd trusts the test's conference CA (Go's SSL_CERT_FILE); the
	// fleet's broker has its own ca_file.
	e.secret("/etc/konsult/test/conference-ca.pem", c.ca)
	e.write("/etc/systemd/system/roomd.service.d/updatetest.conf",
		[]byte("# Update test only: the test's conference server is signed by its own CA.\n[Service]\nEnvironment=SSL_CERT_FILE=/etc/konsult/test/conference-ca.pem\n"), "0100644")
	e.write("/etc/konsult/test/site-ca.pem", siteCA, "0100644")
	e.add("mkdir /etc/systemd/system/konsult-update.service.d")
	e.write("/etc/systemd/system/konsult-update.service.d/test.conf",
		[]byte("# Update test only: the test's https site is signed by its own CA.\n[Service]\nEnvironment=CURL_CA_BUNDLE=/etc/konsult/test/site-ca.pem\n"), "0100644")
	e.write("/usr/local/sbin/konsult-updatetest-report", read("update-report.sh"), "0100755")
	e.write("/etc/systemd/system/konsult-updatetest-report.service", read("update-report.service"), "0100644")
	e.add("symlink /etc/systemd/system/multi-user.target.wants/konsult-updatetest-report.service /etc/systemd/system/konsult-updatetest-report.service",
		"rm /etc/systemd/system/konsult-kiosk.service",
		"symlink /etc/systemd/system/konsult-kiosk.service /dev/null")
}

// conferenceConfig is the test's LiveKit as the unit's config names it.
type conferenceConfig struct {
	url string
	ca  []byte
	lk  *farend.LiveKit
}

// section is the unit's [conference]: the unit publishes its simulated
// board's test camera and microphone (the lab's connector: under TCG the
// guest has no CPU to spare for decoding the patient too). The test camera
// has one size, 640x480; a low rate keeps TCG's encoder up.
func (c conferenceConfig) section() string {
	return fmt.Sprintf(`
[conference]
connector = "livekit-whip"
url = %q
room = %q
identity = "unit-1"
api_key = %q
api_secret = %q
width = 640
height = 480
fps = 10
video_bitrate_kbps = 400

[call]
join_timeout = "90s"
`, c.url, conferenceRoom, c.lk.APIKey, c.lk.APISecret)
}

// buildTestBundles writes the test's bundles into served and returns their
// SHA-256 by name (and "sizes", for the figures).
func buildTestBundles(t *testing.T, dir, served, rootfs, keys, v1, v2, v3 string, files func(*rootEdit)) (map[string]string, error) {
	sums := map[string]string{}
	var sizes []string
	slot := func(name, version string, more func(*rootEdit)) (string, error) {
		p := filepath.Join(dir, name+".ext4")
		if out, err := exec.Command("cp", "--sparse=always", rootfs, p).CombinedOutput(); err != nil {
			return "", fmt.Errorf("cp %s: %v\n%s", rootfs, err, out)
		}
		// Room for the test's files: the build shrank the slot image to its
		// contents (RAUC grows it to the slot).
		if out, err := exec.Command("sh", "-c", `truncate -s +64M "$1" && e2fsck -fy "$1" >/dev/null; resize2fs "$1"`, "sh", p).CombinedOutput(); err != nil {
			return "", fmt.Errorf("grow %s: %v\n%s", p, err, out)
		}
		e := newRootEdit(t, dir, p)
		files(e)
		e.write("/etc/konsult/image-version", []byte(version+"\n"), "0100644")
		if more != nil {
			more(e)
		}
		e.apply(p)
		return p, nil
	}
	bundle := func(name, src, version, keyDir string, extra ...string) error {
		out := filepath.Join(served, name+".raucb")
		cmd := exec.Command("nice", append([]string{"-n", "19", "bash", "../bundle", src, "amd64", version, out}, extra...)...)
		cmd.Env = append(os.Environ(), "KONSULT_UPDATE_KEYS="+keyDir)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("image/bundle %s: %v\n%s", name, err, b)
		}
		sums[name] = fileSHA256(t, out)
		st, _ := os.Stat(out)
		sizes = append(sizes, fmt.Sprintf("%s %d MB", name, st.Size()/1e6))
		return nil
	}
	// v2 and v3 are built one after the other: two mksquashfs at once
	// would starve the guest's boot on 2 cores.
	p2, err := slot("v2", v2, nil)
	if err == nil {
		err = bundle("v2", p2, v2, keys)
		os.Remove(p2)
	}
	if err != nil {
		return nil, err
	}
	p3, err := slot("v3", v3, func(e *rootEdit) {
		e.write("/etc/systemd/system/roomd.service.d/zz-updatetest-broken.conf",
			[]byte("# Update test only: v3's roomd cannot start.\n[Service]\nExecStart=\nExecStart=/bin/false\n"), "0100644")
		e.write("/etc/konsult-update.conf", []byte(fmt.Sprintf("health_timeout=%d\n", brokenHealthTimeout)), "0100644")
	})
	if err == nil {
		err = bundle("v3", p3, v3, keys)
		os.Remove(p3)
	}
	if err != nil {
		return nil, err
	}
	// Small bundles for what must be refused before any byte is written:
	// their payload is never installed.
	small := filepath.Join(dir, "small.img")
	if err := os.WriteFile(small, randomBytes(2<<20), 0o644); err != nil {
		return nil, err
	}
	other := filepath.Join(dir, "other-keys")
	if b, err := exec.Command("bash", "../update-key", "init", other).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("image/update-key: %v\n%s", err, b)
	}
	for _, err := range []error{
		bundle("wrong-signer", small, v1+".5", other),
		bundle("small", small, v1+".5", keys),
		bundle("old", small, v1, keys),
	} {
		if err != nil {
			return nil, err
		}
	}
	// Tampered: one byte of the payload (the squashfs) changed after
	// signing; its signature and manifest are intact.
	b := readFile(t, filepath.Join(served, "small.raucb"))
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(filepath.Join(served, "tampered.raucb"), b, 0o644); err != nil {
		return nil, err
	}
	sums["tampered"] = fileSHA256(t, filepath.Join(served, "tampered.raucb"))
	sums["sizes"] = strings.Join(sizes, ", ")
	return sums, nil
}

// serveBundles serves dir over https on the host's loopback, which the
// guest reaches as 10.0.2.2; it returns the site's URL and its CA.
func serveBundles(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "konsult update test site"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(10, 0, 2, 2), net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			t.Logf("site: %s %s (range %q)", r.Method, r.URL.Path, r.Header.Get("Range"))
			mu.Unlock()
			http.FileServer(http.Dir(dir)).ServeHTTP(w, r)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return "https://10.0.2.2:" + port, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// bootStatus is what rauc status says of slot's boot status.
func bootStatus(status, slot string) string {
	status = regexp.MustCompile("\x1b\\[[0-9;]*m").ReplaceAllString(status, "")
	m := regexp.MustCompile(`\[` + regexp.QuoteMeta(slot) + `\][^\n]*\n\s*bootname: \w+\n\s*boot status: (\w+)`).FindStringSubmatch(status)
	if m == nil {
		return ""
	}
	return m[1]
}

// stateTimes is konsult-update's own download and install times.
func stateTimes(st string) string {
	get := func(k string) string {
		m := regexp.MustCompile(`(?m)^` + k + `=(.*)$`).FindStringSubmatch(st)
		if m == nil {
			return "?"
		}
		return m[1]
	}
	return fmt.Sprintf("download %s s, payload check %s s, install %s s", get("download_s"), get("verify_s"), get("install_s"))
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ")
}
