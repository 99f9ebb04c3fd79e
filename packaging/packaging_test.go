// Package packaging holds the files the konsult Debian package installs
// (unit, udev rules, default config, maintainer scripts) and their tests.
package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
			t.Fatalf("%s not found (apt-get install systemd): KONSULT_REQUIRE_REAL_PARTS=1", name)
		}
		t.Skipf("%s not found", name)
	}
	return p
}

// The unit must load cleanly in systemd itself, not only look right:
// systemd-analyze verify rejects unknown keys, bad values and a missing
// ExecStart binary.
func TestUnitPassesSystemdAnalyzeVerify(t *testing.T) {
	sa := requireTool(t, "systemd-analyze")
	unit, err := os.ReadFile("roomd.service")
	if err != nil {
		t.Fatal(err)
	}
	// The package's binary is not installed here: point ExecStart at one
	// that exists, keeping the flags.
	dir := t.TempDir()
	text := strings.Replace(string(unit), "ExecStart=/usr/bin/roomd ", "ExecStart=/bin/true ", 1)
	path := filepath.Join(dir, "roomd.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify roomd.service: %v\n%s", err, out)
	}
}

// The network helper's units load too, and the path unit names the file
// roomd writes.
func TestNetworkHelperUnitsVerify(t *testing.T) {
	sa := requireTool(t, "systemd-analyze")
	dir := t.TempDir()
	for _, name := range []string{"konsult-network.service", "konsult-network.path", "konsult-claim.service", "konsult-reset.path", "konsult-reset.service"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Replace(string(b), "ExecStart=/usr/bin/roomd ", "ExecStart=/bin/true ", 1)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(sa, "verify", "--man=no", filepath.Join(dir, "konsult-network.path"), filepath.Join(dir, "konsult-network.service"), filepath.Join(dir, "konsult-claim.service"), filepath.Join(dir, "konsult-reset.path"), filepath.Join(dir, "konsult-reset.service")).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify konsult-network units: %v\n%s", err, out)
	}
	p, _ := os.ReadFile("konsult-network.path")
	if !strings.Contains(string(p), "PathChanged=/var/lib/konsult/network/request") {
		t.Fatal("konsult-network.path does not watch roomd's request file")
	}
}

// What the issue asks of the service, checked line by line so a later edit
// cannot drop one silently.
func TestUnitHardening(t *testing.T) {
	b, err := os.ReadFile("roomd.service")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		have[strings.TrimSpace(l)] = true
	}
	for _, want := range []string{
		"Type=notify", "WatchdogSec=30s", "Restart=on-failure",
		"User=konsult", "SupplementaryGroups=gpio video audio", "DevicePolicy=closed",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"StateDirectory=konsult", "RuntimeDirectory=konsult", "CapabilityBoundingSet=",
		"After=network-online.target time-sync.target",
		// Issue 14: roomd's own journal namespace (a factory reset wipes it
		// and nothing else), and no core dumps (frames, keys, tokens).
		"LogNamespace=konsult", "LimitCORE=0",
		// Issue 16: a memory ceiling well above a call's 67 MB RSS.
		"MemoryHigh=384M", "MemoryMax=512M",
	} {
		if !have[want] {
			t.Errorf("roomd.service lacks %q", want)
		}
	}
}

// Issue 14, finding 4: the factory reset (root, triggered by a file the
// konsult user writes) may touch roomd's journal namespace only: every
// journalctl it runs names the namespace, and it can write no other journal
// directory. The root helpers dump no core (they hold Wi-Fi secrets and the
// claim code).
func TestRootHelpersStayInTheirLane(t *testing.T) {
	b, err := os.ReadFile("konsult-reset.service")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "ExecStart=") && strings.Contains(l, "journalctl") {
			n++
			if !strings.Contains(l, " --namespace=konsult ") {
				t.Errorf("konsult-reset.service runs journalctl outside roomd's namespace: %s", l)
			}
		}
		if rw, ok := strings.CutPrefix(l, "ReadWritePaths="); ok {
			for _, p := range strings.Fields(rw) {
				p = strings.TrimPrefix(p, "-")
				if strings.Contains(p, "/log/journal") && !strings.HasSuffix(p, "/%m.konsult") {
					t.Errorf("konsult-reset.service can write the journal directory %s, not only roomd's namespace", p)
				}
			}
		}
	}
	if n == 0 {
		t.Error("konsult-reset.service no longer wipes roomd's logs")
	}
	for _, name := range []string{"konsult-reset.service", "konsult-network.service", "konsult-claim.service"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains("\n"+string(b), "\nLimitCORE=0\n") {
			t.Errorf("%s lacks LimitCORE=0", name)
		}
	}
	if c, err := os.ReadFile("journald@konsult.conf"); err != nil || !strings.Contains(string(c), "\nMaxRetentionSec=") || !strings.Contains(string(c), "\nSystemMaxUse=") {
		t.Errorf("journald@konsult.conf gives roomd's namespace no retention or size limit: %v", err)
	}
}
