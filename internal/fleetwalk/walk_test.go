package fleetwalk

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/provisioning/identity"
)

// exampleID is the device id the docs write; the walk puts the real
// unit's in its place, as a fleet manager types the one enrol list shows.
const exampleID = "ku-o6bljpnl45bu4f6t2kqh"

// humanPause stands for the fleet manager reading one command's answer and
// typing the next: the unit must not depend on approval, ACL and reload
// landing at once. (Without it, a cmd right after a push may find the unit
// offline: an enrolled unit reconnects to the broker after every config it
// applies.)
const humanPause = time.Second

// walk is the fleet manager's shell on the CA machine: it runs doc lines
// in home, keeps what export sets, and plays the broker's ssh and scp.
type walk struct {
	t      *testing.T
	home   string
	env    []string
	b      *broker
	id     string // the unit's device id, once enrol list shows it
	unit   *simUnit
	subs   [][2]string
	output string // the last command's
}

// The fleet manager's first day, README.md "Enrolment" steps 1 to 6 as
// written, on real Mosquitto (installed by deploy/mosquitto/README.md's
// blocks), the real fleetctl and a real roomd --sim unit.
func TestFleetManagerFirstDay(t *testing.T) {
	if testing.Short() {
		t.Skip("builds fleetctl and roomd and runs a unit: not with -short")
	}
	bin := binaries(t, "fleetctl", "roomd", "roomctl")
	home := t.TempDir()
	fake := t.TempDir()
	w := &walk{t: t, home: home, env: []string{"HOME=" + home, "PATH=" + bin + ":" + fake + ":" + os.Getenv("PATH")}}

	// 1. The CA, for a broker the test reaches as 127.0.0.1.
	w.subs = [][2]string{{"broker.clinic.example:8883", "127.0.0.1:8883"}}
	w.block("README.md", "walk-ca")
	caDir := filepath.Join(home, "fleet-ca")

	// 2. The broker; then fleetctl.toml names the test's port for 8884.
	w.b = installBroker(t, home)
	adminConf := filepath.Join(caDir, "admin", "fleetctl.toml")
	replaceInFile(t, adminConf, "127.0.0.1:8884", fmt.Sprintf("127.0.0.1:%d", w.b.sharedPort))
	fakeTool(t, fake, "scp", fmt.Sprintf(`[ $# = 2 ] || exit 2; case "$2" in root@broker.clinic.example:/*) cp "$1" "%s/${2#*:}";; *) exit 2;; esac`, w.b.root))
	w.subs = nil

	// 3. The group's first config, before any unit, and a claim code.
	if err := os.WriteFile(filepath.Join(home, "clinic-north.toml"), []byte(docBlock(t, "README.md", "walk-group-config")), 0o644); err != nil {
		t.Fatal(err)
	}
	w.block("README.md", "walk-prepare")
	code := regexp.MustCompile(`[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}`).FindString(w.output)
	if code == "" {
		t.Fatalf("fleetctl enrol code printed no claim code:\n%s", w.output)
	}

	// The installer's side (docs/INSTALL.md "Enrolment"): the enrolment
	// bundle with its roomd-fleet.toml, and the claim code on the card.
	w.unit = startUnit(t, w, caDir, code)
	// docs/INSTALL.md step 3: the installer reads the id off the unit.
	shown := w.unit.until(30*time.Second, "roomctl status: waiting_for_approval and the device id", func(out string) string {
		if !strings.Contains(out, "waiting_for_approval") {
			return ""
		}
		return regexp.MustCompile(`ku-[a-z2-7]{20}`).FindString(out)
	})
	w.id = w.until(30*time.Second, "the unit waits in fleetctl enrol list", []string{"fleetctl", "enrol", "list"}, func(out string) string {
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], identity.DeviceIDPrefix) && strings.Contains(line, code) && strings.Contains(line, "pending") {
				return f[0]
			}
		}
		return ""
	})

	if w.id != shown {
		t.Fatalf("enrol list shows %s, the unit's roomctl status %s", w.id, shown)
	}

	// 4. Approval, ACL, reload, at a human's pace; the unit gets its group's
	// first config by itself.
	w.block("README.md", "walk-approve")
	w.unit.until(30*time.Second, "roomctl status: enrolled and fleet connected", func(out string) string {
		if strings.Contains(out, "enrolled") && strings.Contains(out, "connected,") && !strings.Contains(out, "not connected") {
			return "ok"
		}
		return ""
	})
	w.until(30*time.Second, "status: the unit online with clinic-north v1", []string{"fleetctl", "status"}, func(out string) string {
		if l := w.unitLine(out); strings.Contains(l, " yes ") && strings.Contains(l, "clinic-north v1") {
			return l
		}
		return ""
	})

	// 5. Push, command, renewal.
	w.block("README.md", "walk-run")

	// 6. Revocation.
	w.block("README.md", "walk-revoke")
	if l := w.unitLine(w.output); !strings.Contains(l, "revoked") {
		t.Fatalf("fleetctl status does not name the revoked unit revoked:\n%s", w.output)
	}
	// The broker, restarted with the new CRL, refuses the unit.
	w.unit.until(30*time.Second, "roomctl status: REVOKED", func(out string) string {
		if strings.Contains(out, "REVOKED") {
			return "ok"
		}
		return ""
	})

	// 7. The retired unit reset for re-use: a new code from the fleet
	// manager, the installer's reset and enrolment (docs/INSTALL.md
	// "Factory reset"), and step 4 again for the new id.
	old := w.id
	w.block("README.md", "walk-reset")
	code = regexp.MustCompile(`[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}`).FindString(w.output)
	if code == "" {
		t.Fatalf("fleetctl enrol code printed no claim code:\n%s", w.output)
	}
	shown = w.unit.reset(code, old)
	w.id = w.until(30*time.Second, "the reset unit waits in fleetctl enrol list with the new code", []string{"fleetctl", "enrol", "list"}, func(out string) string {
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == shown && strings.Contains(line, code) && strings.Contains(line, "pending") {
				return f[0]
			}
		}
		return ""
	})
	w.block("README.md", "walk-approve")
	w.unit.until(30*time.Second, "roomctl status: the reset unit enrolled and fleet connected", func(out string) string {
		if strings.Contains(out, "enrolled") && strings.Contains(out, "connected,") && !strings.Contains(out, "not connected") && !strings.Contains(out, "REVOKED") {
			return "ok"
		}
		return ""
	})
	out := w.until(30*time.Second, "status: the new id online with clinic-north v2", []string{"fleetctl", "status"}, func(out string) string {
		if l := w.unitLine(out); strings.Contains(l, " yes ") && strings.Contains(l, "clinic-north v2") {
			return out
		}
		return ""
	})
	w.id = old
	if l := w.unitLine(out); !strings.Contains(l, "revoked") {
		t.Fatalf("after the reset, fleetctl status no longer names the old id %s revoked:\n%s", old, out)
	}
}

// reset runs docs/INSTALL.md's factory-reset block on the unit, as the
// installer types it (sudo dropped, the unit's socket, the new claim code),
// and returns the new device id roomctl status shows.
func (u *simUnit) reset(code, old string) string {
	u.t.Helper()
	roomctl := filepath.Join(binDir, "roomctl") + " --socket " + u.sock + " "
	var id string
	for _, line := range commands(docBlock(u.t, "docs/INSTALL.md", "unit-reset")) {
		line = strings.ReplaceAll(strings.TrimPrefix(line, "sudo "), "7K2M-QX9P-4RTV-HB3D", code)
		u.t.Logf("unit$ %s", line)
		time.Sleep(humanPause)
		rest, ok := strings.CutPrefix(line, "roomctl ")
		if !ok {
			u.t.Fatalf("docs/INSTALL.md unit-reset: %q is not a roomctl command", line)
		}
		switch {
		case rest == "status":
			id = u.until(30*time.Second, "roomctl status: waiting_for_approval and a new device id", func(out string) string {
				if !strings.Contains(out, "waiting_for_approval") {
					return ""
				}
				if got := regexp.MustCompile(`ku-[a-z2-7]{20}`).FindString(out); got != old {
					return got
				}
				return ""
			})
		case strings.HasPrefix(rest, "factory-reset"):
			if out, err := tryShell(u.identityDir+"/..", nil, roomctl+rest); err != nil {
				u.t.Fatalf("%s: %v\n%s", line, err, out)
			}
		default:
			// While roomd restarts, the installer tries again.
			deadline := time.Now().Add(30 * time.Second)
			for {
				out, err := tryShell(u.identityDir+"/..", nil, roomctl+rest)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					u.t.Fatalf("%s: %v\n%s", line, err, out)
				}
				time.Sleep(500 * time.Millisecond)
			}
		}
	}
	if id == "" {
		u.t.Fatal("docs/INSTALL.md unit-reset never runs roomctl status: the installer cannot read the new id")
	}
	return id
}

// block runs a doc block's command lines in order, checking each the way
// the fleet manager would.
func (w *walk) block(file, name string) {
	w.t.Helper()
	for _, line := range commands(docBlock(w.t, file, name)) {
		w.line(line)
	}
}

func (w *walk) line(line string) {
	w.t.Helper()
	if w.id != "" {
		line = strings.ReplaceAll(line, exampleID, w.id)
	}
	for _, s := range w.subs {
		line = strings.ReplaceAll(line, s[0], s[1])
	}
	w.t.Logf("$ %s", line)
	time.Sleep(humanPause)
	switch {
	case line == "ssh root@broker.clinic.example systemctl reload mosquitto":
		w.b.reload()
		return
	case line == "ssh root@broker.clinic.example systemctl restart mosquitto":
		w.b.restart()
		return
	case strings.HasPrefix(line, "export "):
		out := shell(w.t, w.home, w.env, line+"\nenv")
		for _, kv := range strings.Split(out, "\n") {
			if strings.HasPrefix(kv, "FLEETCTL_") {
				w.env = append(w.env, kv)
			}
		}
		return
	case strings.HasPrefix(line, "fleetctl enrol approve "):
		// Units reach the test's 8883, not the host's.
		line += fmt.Sprintf(" --unit-broker mqtts://127.0.0.1:%d", w.b.unitPort)
	case line == "fleetctl renew":
		// The manager renews the units status says ask for it.
		w.until(30*time.Second, "status: the unit asks for renewal", []string{"fleetctl", "status"}, func(out string) string {
			if l := w.unitLine(out); strings.Contains(l, "asks for renewal") {
				return l
			}
			return ""
		})
	}
	var serial string
	if line == "fleetctl renew" {
		serial = w.unit.certSerial()
	}
	out, err := tryShell(w.home, w.env, line)
	w.output = out
	if err != nil {
		w.t.Fatalf("%s: %v\n%s\nmosquitto:\n%s", line, err, out, tail(w.b.output(), 30))
	}
	w.check(line, out)
	if serial != "" {
		deadline := time.Now().Add(20 * time.Second)
		for w.unit.certSerial() == serial {
			if time.Now().After(deadline) {
				w.t.Fatalf("the unit still holds certificate %s after fleetctl renew:\n%s", serial, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// check asserts what the fleet manager reads in a command's output.
func (w *walk) check(line, out string) {
	w.t.Helper()
	fail := func(what string) { w.t.Fatalf("%s: %s:\n%s", line, what, out) }
	switch {
	case strings.HasPrefix(line, "fleetctl push ") && w.id != "":
		if l := w.unitLine(out); !strings.Contains(l, " applied ") {
			fail("the unit did not apply it")
		}
	case strings.HasPrefix(line, "fleetctl cmd "):
		if l := w.unitLine(out); !strings.Contains(l, " done ") {
			fail("the unit did not carry it out")
		}
	case line == "fleetctl renew":
		if !strings.Contains(out, "renewed "+w.id) {
			fail("no renewal signed")
		}
	case strings.HasPrefix(line, "fleetctl enrol approve "):
		if strings.Contains(strings.ToLower(out), "error") {
			fail("approve complained")
		}
		fallthrough
	case strings.HasPrefix(line, "fleetctl acl "):
		out, _ := os.ReadFile(filepath.Join(w.home, "acl"))
		has := strings.Contains(string(out), "\nuser "+w.id+"\ntopic read konsult/group/clinic-north/config\n")
		if revoked := strings.Contains(line, "fleetctl acl "); has == revoked {
			fail(fmt.Sprintf("the rendered acl has the unit's group lines: %v", has))
		}
	}
}

// unitLine is the unit's row in a fleetctl table.
func (w *walk) unitLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == w.id {
			return l + " "
		}
	}
	return ""
}

// until runs a fleetctl command every half second until ok finds what the
// fleet manager waits for.
func (w *walk) until(d time.Duration, what string, args []string, ok func(string) string) string {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for {
		out, _ := tryShell(w.home, w.env, strings.Join(args, " "))
		if got := ok(out); got != "" {
			return got
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: not within %s; last %s:\n%s\nmosquitto:\n%s", what, d, strings.Join(args, " "), out, tail(w.b.output(), 30))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func replaceInFile(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s has no %q", path, old)
	}
	if err := os.WriteFile(path, bytes.ReplaceAll(b, []byte(old), []byte(new)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// simUnit is a roomd --sim unit set up as docs/INSTALL.md says.
type simUnit struct {
	t           *testing.T
	sock        string
	identityDir string
	logs        *syncbuf.Buffer
}

// startUnit sets a new unit up as docs/INSTALL.md "Enrolment" says: its
// block installs the enrolment bundle under the unit's own /etc/konsult
// (sudo and systemctl stubbed, the bundle's group the test's own) into the
// shipped packaging/roomd.toml, and the claim code goes on its "card". The
// test then points the [fleet] section at the unit's /etc/konsult and the
// test's ports, and starts roomd --sim itself.
func startUnit(t *testing.T, w *walk, caDir, code string) *simUnit {
	t.Helper()
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc/konsult")
	enrolDir := filepath.Join(etc, "enrol")
	bundle := filepath.Join(dir, "enrol") // the folder copied to the unit
	for _, d := range []string{etc, bundle} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, filepath.Join(repoRoot(t), "packaging/roomd.toml"), filepath.Join(etc, "roomd.toml"))
	entries, err := os.ReadDir(filepath.Join(caDir, "enrol"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		copyFile(t, filepath.Join(caDir, "enrol", e.Name()), filepath.Join(bundle, e.Name()))
	}
	fake := t.TempDir()
	fakeTool(t, fake, "sudo", `exec "$@"`)
	fakeTool(t, fake, "systemctl", `[ "$*" = "restart roomd" ]`)
	block := docBlock(t, "docs/INSTALL.md", "unit-enrol")
	block = strings.ReplaceAll(block, "/etc/konsult", etc)
	block = strings.ReplaceAll(block, "-g konsult ", fmt.Sprintf("-g %d ", os.Getgid()))
	shell(t, bundle, []string{"PATH=" + fake + ":" + os.Getenv("PATH")}, block)

	installed, err := os.ReadFile(filepath.Join(etc, "roomd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.ReplaceAll(string(installed), "/etc/konsult/enrol", enrolDir)
	if !strings.Contains(conf, "127.0.0.1:8883") {
		t.Fatalf("roomd.toml does not name the broker ca init was given:\n%s", conf)
	}
	conf = strings.ReplaceAll(conf, "127.0.0.1:8883", fmt.Sprintf("127.0.0.1:%d", w.b.unitPort))
	u := &simUnit{t: t, sock: filepath.Join(dir, "roomd.sock"), identityDir: filepath.Join(dir, "identity"), logs: &syncbuf.Buffer{}}
	claim := filepath.Join(dir, "konsult-claim.txt")
	if err := os.WriteFile(claim, []byte("# the claim code from your fleet manager, on the next line\n"+code+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The unit's own paths, its test ports, and a renewal asked for at
	// once (certificates last 90 days).
	conf += fmt.Sprintf("enrol_broker = \"mqtts://127.0.0.1:%d\"\nidentity_dir = %q\nstate_dir = %q\nclaim_file = %q\nrenew_before = \"2200h\"\n",
		w.b.sharedPort, u.identityDir, filepath.Join(dir, "state"), claim)
	cfg := filepath.Join(dir, "roomd-test.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	start := func() (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "roomd"), "--sim", "--config", cfg, "--socket", u.sock, "--http", "off")
		cmd.Stdout, cmd.Stderr = u.logs, u.logs
		return cmd, cmd.Start()
	}
	cmd, err := start()
	if err != nil {
		t.Fatal(err)
	}
	// As the shipped roomd.service (Restart=always): roomd exits 75 after a
	// factory reset or the fleet's reboot, and systemd starts it again.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			err := cmd.Wait()
			var exit *exec.ExitError
			if ctx.Err() != nil || !errors.As(err, &exit) || exit.ExitCode() != 75 {
				return
			}
			fmt.Fprintf(u.logs, "fleetwalk: roomd exited 75; started again as systemd would\n")
			if cmd, err = start(); err != nil {
				fmt.Fprintf(u.logs, "fleetwalk: restart roomd: %v\n", err)
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("roomd:\n%s", tail(u.logs.String(), 40))
		}
	})
	return u
}

// until runs roomctl status on the unit, as the installer does, until ok
// finds what they wait for.
func (u *simUnit) until(d time.Duration, what string, ok func(string) string) string {
	u.t.Helper()
	deadline := time.Now().Add(d)
	for {
		out, _ := exec.Command(filepath.Join(binDir, "roomctl"), "--socket", u.sock, "status").CombinedOutput()
		if got := ok(string(out)); got != "" {
			return got
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("%s: not within %s; last roomctl status:\n%s", what, d, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// certSerial is the serial of the certificate the unit holds now.
func (u *simUnit) certSerial() string {
	u.t.Helper()
	b, err := os.ReadFile(filepath.Join(u.identityDir, identity.CertFile))
	if err != nil {
		u.t.Fatalf("the unit's certificate: %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		u.t.Fatal("the unit's certificate is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		u.t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}
