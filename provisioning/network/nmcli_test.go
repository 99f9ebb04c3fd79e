package network

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// EnvNMCLI names an nmcli executable for the keyfile check (its
// libraries must be findable, e.g. through LD_LIBRARY_PATH).
const EnvNMCLI = "KONSULT_NMCLI"

type nmcli struct {
	path string
	env  []string
}

// findNMCLI finds NetworkManager's nmcli: $KONSULT_NMCLI, the copy
// .ci/setup unpacks into .cache/nm (network-manager is deliberately not
// installed), or nmcli on $PATH. Missing, the test is skipped, or fails
// when KONSULT_REQUIRE_REAL_PARTS=1.
func findNMCLI(t *testing.T) nmcli {
	t.Helper()
	if p := os.Getenv(EnvNMCLI); p != "" {
		return nmcli{path: p}
	}
	if root := repoRoot(); root != "" {
		nm := filepath.Join(root, ".cache", "nm")
		bin := filepath.Join(nm, "usr", "bin", "nmcli")
		if _, err := os.Stat(bin); err == nil {
			libs, _ := filepath.Glob(filepath.Join(nm, "usr", "lib", "*-linux-gnu"))
			more, _ := filepath.Glob(filepath.Join(nm, "lib", "*-linux-gnu"))
			libs = append(libs, more...)
			if old := os.Getenv("LD_LIBRARY_PATH"); old != "" {
				libs = append(libs, old)
			}
			return nmcli{path: bin, env: []string{"LD_LIBRARY_PATH=" + strings.Join(libs, ":")}}
		}
	}
	if p, err := exec.LookPath("nmcli"); err == nil {
		return nmcli{path: p}
	}
	msg := "nmcli not found (.cache/nm/usr/bin/nmcli or $" + EnvNMCLI + "); run .ci/setup, which unpacks network-manager's nmcli into .cache/nm without installing the daemon"
	if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
		t.Fatal(msg + " (KONSULT_REQUIRE_REAL_PARTS=1, so this is fatal)")
	}
	t.Skip(msg + " (set KONSULT_REQUIRE_REAL_PARTS=1 to make this fatal)")
	return nmcli{}
}

func repoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.Contains(b, []byte("module github.com/konsult/konsult")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// check feeds a keyfile to `nmcli --offline connection modify`, which
// parses it with NetworkManager's keyfile reader, verifies and normalizes
// the connection and prints it back as a keyfile.
func (n nmcli) check(keyfile []byte) (out []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.path, "--offline", "connection", "modify", "connection.autoconnect", "yes")
	cmd.Env = append(os.Environ(), n.env...)
	cmd.Stdin = bytes.NewReader(keyfile)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nmcli --offline: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// roundTrip checks that NetworkManager accepts keyfile and keeps every key
// it sets with the same value. nmcli alone is not enough: it drops unknown
// keys and sections and defaults unparsable booleans without an error.
func (n nmcli) roundTrip(t *testing.T, name string, keyfile []byte) []string {
	t.Helper()
	out, err := n.check(keyfile)
	if err != nil {
		return []string{err.Error()}
	}
	in, got := parseKeyfile(t, keyfile), parseKeyfile(t, out)
	var problems []string
	for sec, keys := range in {
		for k, v := range keys {
			g, ok := got[sec][k]
			show := func(s string) string { // keep the fixtures' secrets out of test logs
				if k == "psk" || k == "password" {
					return "(secret)"
				}
				return fmt.Sprintf("%q", s)
			}
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("%s: [%s] %s dropped by NetworkManager (unknown key or default value)", name, sec, k))
			case g != v:
				problems = append(problems, fmt.Sprintf("%s: [%s] %s = %s written, NetworkManager has %s", name, sec, k, show(v), show(g)))
			}
		}
	}
	sort.Strings(problems)
	return problems
}

// Every keyfile Render makes is one NetworkManager 1.42 reads back
// unchanged.
func TestRenderedKeyfilesPassNetworkManager(t *testing.T) {
	n := findNMCLI(t)
	p := newPKI(t)
	configs := map[string]string{
		"full":              fullConfigTOML(p),
		"dhcp":              "[network.ethernet]\n",
		"static no gateway": "[network.ethernet]\ninterface = \"end0\"\nmethod = \"static\"\naddress = \"10.0.0.5/8\"\n",
		"tricky ssids": "[[network.wifi]]\nssid = \" a;b\\\\c#=\"\nsecurity = \"wpa2-personal\"\npsk = \"" + strings.Repeat("0f", 32) + "\"\n" +
			"[[network.wifi]]\nssid = \"Café Ω\"\nsecurity = \"wpa3-personal\"\npsk = \"  spaces both ends  \"\n" +
			"[[network.wifi]]\nssid = \"tls explicit\"\nsecurity = \"enterprise\"\neap = \"tls\"\nidentity = \"unit@clinic.example\"\nca_cert = " + tomlString(p.caPEM) + "\ndomain_suffix_match = \"clinic.example\"\npriority = 999\n",
	}
	checked := 0
	for cname, text := range configs {
		files, err := Render(mustDecode(t, text), p.identity)
		if err != nil {
			t.Fatalf("%s: Render: %v", cname, err)
		}
		for _, name := range IDs(files) {
			for _, problem := range n.roundTrip(t, cname+"/"+name, files[name+Suffix]) {
				t.Error(problem)
			}
			checked++
		}
	}
	t.Logf("%d keyfiles accepted by %s", checked, n.path)
}

// The check itself must catch what nmcli lets through silently, and what it
// refuses.
func TestNetworkManagerCheckCatchesBadKeyfiles(t *testing.T) {
	n := findNMCLI(t)
	files, err := Render(mustDecode(t, "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n"), Identity{})
	if err != nil {
		t.Fatal(err)
	}
	good := files["konsult-wifi-0.nmconnection"]
	if p := n.roundTrip(t, "good", good); len(p) > 0 {
		t.Fatalf("good keyfile: %v", p)
	}
	for name, bad := range map[string]string{
		"unknown key-mgmt": strings.Replace(string(good), "key-mgmt=wpa-psk", "key-mgmt=wpa-personal", 1),
		"misspelt key":     strings.Replace(string(good), "psk=", "pks=", 1),
		"bad boolean":      strings.Replace(string(good), "mode=infrastructure", "hidden=maybe\nmode=infrastructure", 1),
		"bad uuid":         strings.Replace(string(good), "uuid=", "uuid=x", 1),
		"no ssid":          strings.Replace(string(good), "ssid=C\n", "", 1),
		"bad address":      "[connection]\nid=konsult-eth0\nuuid=" + stableUUID("konsult-eth0") + "\ntype=ethernet\n\n[ipv4]\naddress1=10.0.0.300/24\nmethod=manual\n",
	} {
		if p := n.roundTrip(t, name, []byte(bad)); len(p) == 0 {
			t.Errorf("%s: not caught", name)
		} else {
			t.Logf("%s: caught: %s", name, p[0])
		}
	}
}
