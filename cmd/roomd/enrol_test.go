package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/unit"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/enrol"
)

// enrolFleet is a fleet set up the way a fleet manager does it: the real
// fleetctl binary made the CA and the enrolment bundle, and runs every
// fleet-side step; Mosquitto runs the shipped config, ACL and the CA's CRL.
type enrolFleet struct {
	t     testing.TB
	bin   string // fleetctl
	caDir string
	b     *brokertest.Broker
}

var (
	fleetctlOnce sync.Once
	fleetctlBin  string
	fleetctlErr  error
)

func buildFleetctl(t testing.TB) string {
	t.Helper()
	fleetctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fleetctl-bin")
		if err != nil {
			fleetctlErr = err
			return
		}
		fleetctlBin = filepath.Join(dir, "fleetctl")
		if out, err := exec.Command("go", "build", "-o", fleetctlBin, "../fleetctl").CombinedOutput(); err != nil {
			fleetctlErr = fmt.Errorf("build fleetctl: %v\n%s", err, out)
		}
	})
	if fleetctlErr != nil {
		t.Fatal(fleetctlErr)
	}
	return fleetctlBin
}

func newEnrolFleet(t testing.TB) *enrolFleet {
	t.Helper()
	f := &enrolFleet{t: t, bin: buildFleetctl(t), caDir: filepath.Join(t.TempDir(), "fleet-ca")}
	// The port is the test broker's, known only once it runs; the
	// certificate names the host, which is what TLS checks.
	f.run("ca", "init", "--dir", f.caDir, "--broker", "mqtts://127.0.0.1:8883")
	c, err := ca.Open(f.caDir)
	if err != nil {
		t.Fatal(err)
	}
	f.b = brokertest.Start(t, brokertest.Options{CA: c})
	return f
}

// run runs fleetctl and returns its stdout; a failure fails the test.
func (f *enrolFleet) run(args ...string) string {
	f.t.Helper()
	out, err := f.try(args...)
	if err != nil {
		f.t.Fatalf("fleetctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (f *enrolFleet) try(args ...string) (string, error) {
	cmd := exec.Command(f.bin, args...)
	cmd.Env = append(os.Environ(), "FLEETCTL_CA_DIR="+f.caDir, "HOME="+f.t.TempDir(), "XDG_CONFIG_HOME=")
	if f.b != nil {
		adm := f.b.Admin()
		// fleetctl on the fleet manager's listener; approve sends the unit
		// the units' one.
		if len(args) > 1 && args[0] == "enrol" && args[1] == "approve" {
			args = append(args, "--unit-broker", f.b.URL())
		}
		cmd.Args = append([]string{f.bin}, args...)
		cmd.Env = append(cmd.Env, "FLEETCTL_BROKER="+f.b.SharedURL(), "FLEETCTL_CA="+f.b.CAFile(),
			"FLEETCTL_CERT="+adm.CertFile, "FLEETCTL_CERT_KEY="+adm.KeyFile)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String() + stderr.String(), err
}

// unitConfig is a new unit's config: the enrolment bundle fleetctl ca init
// wrote, and its own directories.
func (f *enrolFleet) unitConfig(dir, extra string) string {
	e := filepath.Join(f.caDir, "enrol")
	return fmt.Sprintf(`[buttons]
factory_reset_hold = "3s"
[fleet]
broker = %q
enrol_broker = %q
ca_file = %q
enrol_cert = %q
enrol_key = %q
identity_dir = %q
state_dir = %q
claim_file = %q
confirm_timeout = "5s"
%s`, f.b.URL(), f.b.SharedURL(), filepath.Join(e, "ca.crt"), filepath.Join(e, "konsult-enrol.crt"), filepath.Join(e, "konsult-enrol.key"),
		filepath.Join(dir, "identity"), filepath.Join(dir, "state"), filepath.Join(dir, "konsult-claim.txt"), extra)
}

func enrolment(s status) enrol.Status {
	if s.Fleet == nil || s.Fleet.Enrolment == nil || s.Fleet.Enrolment.Enrolment == nil {
		return enrol.Status{}
	}
	return *s.Fleet.Enrolment.Enrolment
}

// within polls the unit's status until ok, for up to d.
func (u *unitUnderTest) within(d time.Duration, what string, ok func(status) bool) status {
	u.t.Helper()
	deadline := time.Now().Add(d)
	for {
		var s status
		err := u.api.Status(context.Background(), &s)
		if err == nil && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("%s: not within %s; last status fleet=%+v err=%v\nroomd log:\n%s", what, d, s.Fleet, err, tail(u.logs.String(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// enrolUnit takes a fresh unit from claim code to its own certificate.
func (f *enrolFleet) enrolUnit(t testing.TB, extra string, groups ...string) (*unitUnderTest, string, string) {
	t.Helper()
	dir := t.TempDir()
	code := strings.TrimSpace(f.run("enrol", "code", "--note", "test clinic"))
	u := startUnit(t, f.unitConfig(dir, extra))
	s := u.within(30*time.Second, "unit asks for a claim code", func(s status) bool { return enrolment(s).Phase == enrol.PhaseNeedCode })
	id := s.Fleet.Enrolment.Device
	if !strings.HasPrefix(id, "ku-") {
		t.Fatalf("device id %q is not derived from the unit's key", id)
	}
	// roomctl enrol CODE, as an installer types it.
	if err := u.api.Enrol(context.Background(), strings.ToLower(code)); err != nil {
		t.Fatal(err)
	}
	u.within(30*time.Second, "unit waits for approval", func(s status) bool { return enrolment(s).Phase == enrol.PhaseWaiting })

	list := f.run("enrol", "list")
	if !strings.Contains(list, id) || !strings.Contains(list, code) || !strings.Contains(list, "pending") {
		t.Fatalf("fleetctl enrol list does not show the unit with its claim code:\n%s", list)
	}
	args := []string{"enrol", "approve", id}
	for _, g := range groups {
		args = append(args, "--group", g)
	}
	f.run(args...)
	acl := filepath.Join(t.TempDir(), "acl")
	f.run("acl", "--out", acl)
	text, err := os.ReadFile(acl)
	if err != nil {
		t.Fatal(err)
	}
	f.b.SetACL(string(text))
	u.within(20*time.Second, "unit enrolled and connected as itself", func(s status) bool {
		return enrolment(s).Phase == enrol.PhaseEnrolled && s.Fleet.Connected
	})
	return u, id, dir
}

func TestEnrolFreshUnitReceivesFirstSignedConfig(t *testing.T) {
	f := newEnrolFleet(t)
	u, id, dir := f.enrolUnit(t, "", "ward-3")

	// The key never left the unit and is private.
	fi, err := os.Stat(filepath.Join(dir, "identity", "key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("unit key: %v mode %v", err, fi.Mode())
	}
	// From now on the broker sees the unit's own certificate, not the
	// shared enrolment credential.
	log := f.b.Log()
	if !strings.Contains(log, "u'"+id+"'") {
		t.Fatalf("broker never saw %s connect with its own certificate:\n%s", id, tail(log, 20))
	}

	// Its first signed config, pushed by the fleet manager to its group.
	cfg := filepath.Join(t.TempDir(), "ward.toml")
	if err := os.WriteFile(cfg, []byte("[call]\nmax_length = \"45m\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := f.run("push", "--key", filepath.Join(f.caDir, "fleet.key"), "--group", "ward-3", "--version", "1", "--wait", "20s", cfg)
	if !strings.Contains(out, id) {
		t.Fatalf("push did not report the unit:\n%s", out)
	}
	u.within(30*time.Second, "config applied", func(s status) bool {
		return s.Fleet.Versions["group:ward-3"] == 1 && s.Fleet.Generation > 0
	})

	// Restarting the unit keeps its identity: same id, no new enrolment.
	u.shutdown()
	u2 := startUnit(t, f.unitConfig(dir, ""))
	s := u2.within(30*time.Second, "enrolled unit comes back as itself", func(s status) bool {
		return enrolment(s).Phase == enrol.PhaseEnrolled && s.Fleet.Connected
	})
	if s.Fleet.Enrolment.Device != id {
		t.Fatalf("restart changed the device id: %s → %s", id, s.Fleet.Enrolment.Device)
	}
	// A second claim code is refused locally: the unit is enrolled.
	if err := u2.api.Enrol(context.Background(), enrol.NewClaimCode()); err == nil || !strings.Contains(err.Error(), "already enrolled") {
		t.Fatalf("enrol on an enrolled unit: %v", err)
	}
}

func TestEnrolRefusalsShownOnTheUnit(t *testing.T) {
	f := newEnrolFleet(t)
	f.run("enrol", "code") // a code exists, but not the one typed below
	// Codes expire: 30 days by default, or what the fleet manager says.
	week := strings.TrimSpace(f.run("enrol", "code", "--valid", "168h"))
	codes := f.run("enrol", "codes")
	if !strings.Contains(codes, "EXPIRES") || !strings.Contains(codes, week) {
		t.Fatalf("enrol codes does not list the code with its expiry:\n%s", codes)
	}
	for _, l := range strings.Split(codes, "\n") {
		c := strings.Fields(l)
		if len(c) < 2 || c[0] != week {
			continue
		}
		if len(c) < 6 {
			t.Fatalf("enrol codes: a 168h code reads %q", l)
		}
		created, err1 := time.Parse("2006-01-02 15:04:05", c[1]+" "+c[2])
		expires, err2 := time.Parse("2006-01-02 15:04:05", c[3]+" "+c[4])
		if err1 != nil || err2 != nil || expires.Sub(created) != 168*time.Hour || c[5] != "unused" {
			t.Fatalf("enrol codes: a 168h code reads %q", l)
		}
	}
	if out, err := f.try("enrol", "code", "--valid", "-1h"); err == nil || !strings.Contains(out, "--valid") {
		t.Fatalf("enrol code --valid -1h: %v\n%s", err, out)
	}
	dir := t.TempDir()
	u := startUnit(t, f.unitConfig(dir, ""))
	s := u.within(30*time.Second, "claim code wanted", func(s status) bool { return enrolment(s).Phase == enrol.PhaseNeedCode })
	id := s.Fleet.Enrolment.Device

	if err := u.api.Enrol(context.Background(), "not-a-code"); err == nil || !strings.Contains(err.Error(), "claim code") {
		t.Fatalf("malformed claim code: %v", err)
	}
	if err := u.api.Enrol(context.Background(), enrol.NewClaimCode()); err != nil {
		t.Fatal(err)
	}
	u.within(30*time.Second, "waiting", func(s status) bool { return enrolment(s).Phase == enrol.PhaseWaiting })
	list := f.run("enrol", "list")
	if !strings.Contains(list, enrol.ReasonWrongCode) {
		t.Fatalf("enrol list does not flag the wrong claim code:\n%s", list)
	}
	if out, err := f.try("enrol", "approve", id); err == nil || !strings.Contains(out, "not one this fleet handed out") {
		t.Fatalf("approve with a wrong claim code: err=%v\n%s", err, out)
	}
	f.run("enrol", "reject", id)
	s = u.within(30*time.Second, "rejection shown", func(s status) bool { return enrolment(s).Phase == enrol.PhaseRejected })
	if enrolment(s).Reason != enrol.ReasonWrongCode {
		t.Fatalf("unit shows %+v", enrolment(s))
	}

	// The claim file on the boot partition (comments ignored) is read at
	// start: a restarted unit with the right code there enrols.
	code := strings.TrimSpace(f.run("enrol", "code"))
	if err := os.WriteFile(filepath.Join(dir, "konsult-claim.txt"), []byte("# Konsult claim code: write it on the next line\n"+code+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "identity", enrol.SavedClaimFile))
	u.shutdown()
	u = startUnit(t, f.unitConfig(dir, ""))
	u.within(30*time.Second, "waiting with the boot-partition code", func(s status) bool { return enrolment(s).Phase == enrol.PhaseWaiting })
	f.run("enrol", "approve", id)
	u.within(20*time.Second, "enrolled", func(s status) bool { return enrolment(s).Phase == enrol.PhaseEnrolled && s.Fleet.Connected })
}

func TestRenewalDuringCallKeepsTheCall(t *testing.T) {
	f := newEnrolFleet(t)
	// Due at once: a 90-day certificate is inside 2200 h of expiry.
	u, id, _ := f.enrolUnit(t, "renew_before = \"2200h\"\n")
	before := u.within(30*time.Second, "renewal asked", func(s status) bool { return s.Fleet.Enrolment.Renewing })
	oldSerial := before.Fleet.Enrolment.Serial

	u.press("join")
	u.waitFor("in call", 10*time.Second, isState(appliance.InCall))
	meeting := u.status().Meeting

	out := f.run("renew")
	if !strings.Contains(out, "renewed "+id) {
		t.Fatalf("fleetctl renew:\n%s", out)
	}
	s := u.within(15*time.Second, "new certificate installed", func(s status) bool {
		return s.Fleet.Enrolment.Serial != oldSerial && !s.Fleet.Enrolment.Renewing
	})
	if s.State != appliance.InCall || s.Meeting != meeting || !s.Fleet.Connected {
		t.Fatalf("renewal disturbed the unit: state %s meeting %s→%s connected %v", s.State, meeting, s.Meeting, s.Fleet.Connected)
	}
	// The next connection uses the new certificate.
	f.b.Stop()
	f.b.Restart()
	s = u.within(30*time.Second, "reconnected with the renewed certificate", func(s status) bool { return s.Fleet.Connected })
	if s.State != appliance.InCall {
		t.Fatalf("call dropped across the broker restart: %s", s.State)
	}
}

func TestRevokedUnitShowsFault(t *testing.T) {
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, "")
	f.run("revoke", id)
	// Mosquitto 2.0 reads the CRL when it starts (brokertest copies the
	// CA's list in at every start, as an installer copies it).
	f.b.Stop()
	f.b.Restart()
	s := u.within(30*time.Second, "revoked fault", func(s status) bool {
		return s.Fleet.Enrolment.Revoked && s.LED == "fault"
	})
	found := false
	for _, fl := range s.Faults {
		found = found || strings.Contains(fl, "revoked")
	}
	if !found || s.Fleet.Connected {
		t.Fatalf("revoked unit: faults %v connected %v", s.Faults, s.Fleet.Connected)
	}
	// JOIN does nothing while the unit is faulted.
	u.press("join")
	time.Sleep(300 * time.Millisecond)
	if st := u.status(); st.State == appliance.InCall || st.Gate.Live() {
		t.Fatalf("revoked unit went live: %+v", st)
	}
}

func TestFactoryResetByButtonHold(t *testing.T) {
	f := newEnrolFleet(t)
	u, id, dir := f.enrolUnit(t, "")
	ctx := context.Background()
	// An installer holds PRIVACY and JOIN together past the 3 s hold.
	var wg sync.WaitGroup
	for _, b := range appliance.ResetButtons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = u.api.Press(ctx, b, 3600)
		}()
		time.Sleep(50 * time.Millisecond)
	}
	evs := u.waitFor("countdown", 5*time.Second, func(e appliance.Event) bool { return e.Type == "led" && e.LED == "factory_reset_countdown" })
	_ = evs
	u.waitFor("final seconds", 5*time.Second, func(e appliance.Event) bool { return e.Type == "led" && e.LED == "factory_reset_final" })
	wg.Wait()
	// roomd --sim starts again in-process as a new unit.
	u.within(20*time.Second, "a new unit on its first boot", func(s status) bool {
		return enrolment(s).Phase == enrol.PhaseNeedCode && s.Fleet.Enrolment.Device != id
	})
	if _, err := os.Stat(filepath.Join(dir, "state", "config")); !os.IsNotExist(err) {
		t.Fatalf("fleet state survived the reset: %v", err)
	}
	// The logs are the system's journal: roomd leaves a marker for
	// konsult-reset.service (root) to vacuum it.
	if _, err := os.Stat(filepath.Join(dir, unit.ResetMarker)); err != nil {
		t.Fatalf("no request to wipe the logs: %v", err)
	}

	// A hold released early does nothing.
	u2, id2, _ := f.enrolUnit(t, "")
	go func() { _ = u2.api.Press(ctx, "privacy", 1500) }()
	time.Sleep(50 * time.Millisecond)
	_ = u2.api.Press(ctx, "join", 1000)
	time.Sleep(4 * time.Second)
	if s := u2.status(); enrolment(s).Phase != enrol.PhaseEnrolled || s.Fleet.Enrolment.Device != id2 {
		t.Fatalf("a short hold reset the unit: %+v", enrolment(s))
	}
	// roomctl factory-reset needs --yes at the API too.
	if err := u2.api.FactoryReset(ctx, false); err == nil {
		t.Fatal("factory reset without confirmation was accepted")
	}
	if err := u2.api.FactoryReset(ctx, true); err != nil {
		t.Fatal(err)
	}
	u2.within(20*time.Second, "reset from roomctl", func(s status) bool {
		return enrolment(s).Phase == enrol.PhaseNeedCode && s.Fleet.Enrolment.Device != id2
	})
}

// TestTakeClaimFromBootPartition: konsult-claim.service moves the code off
// the SD card into roomd's identity directory.
func TestTakeClaimFromBootPartition(t *testing.T) {
	dir := t.TempDir()
	boot := filepath.Join(dir, "konsult-claim.txt")
	code := enrol.NewClaimCode()
	if err := os.WriteFile(boot, []byte(enrol.ClaimPlaceholder+strings.ToLower(code)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	conf := filepath.Join(dir, "roomd.toml")
	idDir := filepath.Join(dir, "state", "identity")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[fleet]\nidentity_dir = %q\n", idDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"--take-claim", boot, "--config", conf}, &out, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got := enrol.ReadClaimFile(filepath.Join(idDir, enrol.SavedClaimFile)); got != code {
		t.Fatalf("identity dir holds %q, want %q", got, code)
	}
	if got := enrol.ReadClaimFile(boot); got != "" {
		t.Fatalf("the boot partition still carries a code: %q", got)
	}
	// Run again (every boot): nothing to take, nothing changes.
	if err := run(context.Background(), []string{"--take-claim", boot, "--config", conf}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if got := enrol.ReadClaimFile(filepath.Join(idDir, enrol.SavedClaimFile)); got != code {
		t.Fatalf("second run changed the saved code to %q", got)
	}
	// A typo on the card is reported, not silently dropped.
	if err := os.WriteFile(boot, []byte("7K2M-QX9P\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"--take-claim", boot, "--config", conf}, &out, &out); err == nil || !strings.Contains(err.Error(), "16") {
		t.Fatalf("short code on the card: %v", err)
	}
}

// An installer who types roomctl enrol the moment roomd answers: the code
// must not fall between the API and an enrolment client still starting
// (it did, under load: the unit then waited for a code it had been given).
func TestEnrolCodeRightAfterStart(t *testing.T) {
	f := newEnrolFleet(t)
	for i := range 4 {
		code := strings.TrimSpace(f.run("enrol", "code"))
		u := startUnit(t, f.unitConfig(t.TempDir(), ""))
		if err := u.api.Enrol(context.Background(), code); err != nil {
			t.Fatalf("unit %d: %v", i, err)
		}
		u.within(30*time.Second, fmt.Sprintf("unit %d sends its request", i), func(s status) bool { return enrolment(s).Phase == enrol.PhaseWaiting })
		u.shutdown()
	}
}

// An enrolled unit speaks with the key, certificate and CA its enrolment
// installed; a fleet config naming other certificate files would change
// nothing, so the unit refuses it as schema rather than report it applied,
// and stays online with its own certificate.
func TestEnrolledUnitRefusesFleetCertificateFiles(t *testing.T) {
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, "", "ward-3")
	for i, k := range []string{"ca_file", "cert_file", "key_file"} {
		cfg := filepath.Join(t.TempDir(), k+".toml")
		if err := os.WriteFile(cfg, []byte("[fleet]\n"+k+" = \"/nonexistent/x.pem\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := f.try("push", "--key", filepath.Join(f.caDir, "fleet.key"), "--device", id, "--version", strconv.Itoa(i+1), "--wait", "20s", cfg)
		if err == nil || !strings.Contains(out, "rejected") || !strings.Contains(out, "fleet."+k) || !strings.Contains(out, "enrolment installed") {
			t.Fatalf("push of fleet.%s to an enrolled unit:\n%s", k, out)
		}
	}
	s := u.within(10*time.Second, "still online with its own certificate", func(s status) bool { return s.Fleet.Connected })
	if s.Fleet.Generation != 0 {
		t.Fatalf("generation %d after refused configs, want 0", s.Fleet.Generation)
	}
}
