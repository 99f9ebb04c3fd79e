package network

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The uids the test plays: roomd's user owns the spool; someone else.
const (
	konsultUID = 4242
	otherUID   = 4343
)

// TestNetworkHelperRefusesWhatRoomdsUserCrafted (issue 14, finding 3):
// roomd --apply-network runs as root on a folder roomd's user can write.
// Whatever that user puts there beyond what roomd's renderer writes for a
// valid [network] section is refused whole, with a reason that names the
// file and never its contents, and the profiles installed before stay in
// NetworkManager's folder. Before the fix the helper copied every
// konsult-*.nmconnection as it was (following links, blocking on a FIFO).
func TestNetworkHelperRefusesWhatRoomdsUserCrafted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the helper runs as root, and the test plays roomd's user (uid 4242) and root")
	}
	dir := t.TempDir()
	spool, nmDir := filepath.Join(dir, "spool"), filepath.Join(dir, "system-connections")
	for _, d := range []string{spool, nmDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(spool, konsultUID, konsultUID); err != nil {
		t.Fatal(err)
	}
	// Root's own secrets, which roomd's user must not reach.
	rootOnly := filepath.Join(dir, "root-only")
	if err := os.WriteFile(rootOnly, []byte("root secret: hunter2-do-not-leak\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The unit's own certificate and fleet CA, as enrolment leaves them.
	unitCert, fleetCA := filepath.Join(dir, "device.crt"), filepath.Join(dir, "ca.crt")
	for _, p := range []string{unitCert, fleetCA} {
		asKonsult(t, p, []byte("-----BEGIN CERTIFICATE-----\n"), konsultUID)
	}

	render := func(text string, id Identity) map[string][]byte {
		t.Helper()
		files, err := Render(mustDecode(t, text), id)
		if err != nil {
			t.Fatal(err)
		}
		return files
	}
	good := render("[network.ethernet]\n[[network.wifi]]\nssid = \"Clinic-Rooms\"\nsecurity = \"wpa2-personal\"\npsk = \"correct horse battery\"\n", Identity{})
	seq := 0
	// apply runs the helper as konsult-network.service does, with a
	// timeout: a helper that blocks (on a FIFO) is a failure too.
	apply := func(t *testing.T) (Result, error) {
		t.Helper()
		seq++
		asKonsult(t, filepath.Join(spool, RequestFile), []byte(fmt.Sprintf("%d\n", seq)), konsultUID)
		done := make(chan error, 1)
		go func() {
			done <- RunHelper(context.Background(), spool, nmDir, "", -1)
		}()
		var err error
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the helper hung")
		}
		var r Result
		b, _ := os.ReadFile(filepath.Join(spool, ResultFile))
		_ = json.Unmarshal(b, &r)
		return r, err
	}
	reset := func(t *testing.T) {
		t.Helper()
		ents, _ := os.ReadDir(spool)
		for _, e := range ents {
			if Owned(e.Name()) {
				if err := os.Remove(filepath.Join(spool, e.Name())); err != nil {
					t.Fatal(err)
				}
			}
		}
		for name, b := range good {
			asKonsult(t, filepath.Join(spool, name), b, konsultUID)
		}
	}
	reset(t)
	if r, err := apply(t); err != nil || !r.OK {
		t.Fatalf("the profiles roomd rendered were refused: %v %+v", err, r)
	}
	installed := snapshot(t, nmDir)
	if len(installed) != 2 {
		t.Fatalf("installed %v", installed)
	}

	eth := string(good["konsult-eth0.nmconnection"])
	tls := render(`[[network.wifi]]
ssid = "Clinic-Staff"
security = "enterprise"
eap = "tls"
identity = "room-3"
ca_cert = "enrolment"
domain_suffix_match = "radius.clinic.example"
`, Identity{CACert: fleetCA, ClientCert: unitCert, PrivateKey: rootOnly})["konsult-wifi-0.nmconnection"]
	for _, c := range []struct {
		name  string
		craft func(t *testing.T)
		want  string
	}{
		{"a link to a root-only file", func(t *testing.T) {
			p := filepath.Join(spool, "konsult-wifi-1.nmconnection")
			if err := os.Symlink(rootOnly, p); err != nil {
				t.Fatal(err)
			}
			_ = os.Lchown(p, konsultUID, konsultUID)
		}, "konsult-wifi-1.nmconnection is a symbolic link"},
		{"DNS 6.6.6.6 on a DHCP profile", func(t *testing.T) {
			asKonsult(t, filepath.Join(spool, "konsult-eth0.nmconnection"), []byte(strings.Replace(eth, "[ipv4]\n", "[ipv4]\ndns=6.6.6.6;\n", 1)), konsultUID)
		}, "network.ethernet.dns"},
		{"a route", func(t *testing.T) {
			asKonsult(t, filepath.Join(spool, "konsult-eth0.nmconnection"), []byte(strings.Replace(eth, "method=auto\n", "method=auto\nroute1=0.0.0.0/1,6.6.6.6\n", 1)), konsultUID)
		}, "[ipv4] route1 is not a key roomd writes"},
		{"802.1X with a root-only private key", func(t *testing.T) {
			asKonsult(t, filepath.Join(spool, "konsult-wifi-1.nmconnection"), []byte(strings.ReplaceAll(string(tls), "konsult-wifi-0", "konsult-wifi-1")), konsultUID)
		}, "[802-1x] private-key: the file it names is not readable by roomd's user"},
		{"a FIFO", func(t *testing.T) {
			p := filepath.Join(spool, "konsult-wifi-1.nmconnection")
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			_ = os.Chown(p, konsultUID, konsultUID)
		}, "konsult-wifi-1.nmconnection is not a regular file (a FIFO)"},
		{"an oversized file", func(t *testing.T) {
			big := strings.Replace(string(good["konsult-wifi-0.nmconnection"]), "konsult-wifi-0", "konsult-wifi-1", -1) + strings.Repeat("\n", 70<<10)
			asKonsult(t, filepath.Join(spool, "konsult-wifi-1.nmconnection"), []byte(big), konsultUID)
		}, "over the 65536-byte limit"},
		{"a file owned by another uid", func(t *testing.T) {
			asKonsult(t, filepath.Join(spool, "konsult-wifi-1.nmconnection"), []byte(strings.ReplaceAll(string(good["konsult-wifi-0.nmconnection"]), "konsult-wifi-0", "konsult-wifi-1")), otherUID)
		}, "konsult-wifi-1.nmconnection is owned by uid 4343, not by roomd's user (uid 4242)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			reset(t)
			c.craft(t)
			r, err := apply(t)
			if err == nil || r.OK || !strings.Contains(r.Error, c.want) {
				t.Fatalf("not refused as %q: err %v, result %+v", c.want, err, r)
			}
			t.Logf("refused: %s", r.Error)
			if strings.Contains(r.Error, "hunter2") || strings.Contains(r.Error, "6.6.6.6") {
				t.Errorf("the refusal quotes what the file holds: %s", r.Error)
			}
			if now := snapshot(t, nmDir); !equalFiles(now, installed) {
				t.Errorf("NetworkManager's folder changed: %v", keys(now))
			}
		})
	}

	// The request file itself: a link to a root-only file is not read,
	// and nothing of it reaches the result roomd's user can read.
	reset(t)
	_ = os.Remove(filepath.Join(spool, ResultFile))
	req := filepath.Join(spool, RequestFile)
	_ = os.Remove(req)
	if err := os.Symlink(rootOnly, req); err != nil {
		t.Fatal(err)
	}
	err := RunHelper(context.Background(), spool, nmDir, "", -1)
	b, _ := os.ReadFile(filepath.Join(spool, ResultFile))
	if err == nil || strings.Contains(err.Error()+string(b), "hunter2") {
		t.Fatalf("a request linked to a root-only file: err %v, result %s", err, b)
	}
}

// asKonsult writes a file as uid would have (owner, mode 0600).
func asKonsult(t *testing.T, p string, b []byte, uid int) {
	t.Helper()
	_ = os.Remove(p)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

func equalFiles(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
