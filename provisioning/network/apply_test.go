package network

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
)

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// foreign files and directories Apply must never touch.
var foreign = map[string]string{
	"Wired connection 1.nmconnection":  "[connection]\nid=Wired connection 1\n",
	"preconfigured.nmconnection":       "[connection]\nid=preconfigured\n",
	"Konsult-eth0.nmconnection":        "capital K: not ours\n",
	"konsult-eth0.nmconnection.bak":    "not ours\n",
	"konsult-notes.txt":                "not ours\n",
	"konsult-.nmconnection":            "empty middle: not ours\n",
	"konsult-Wifi-0.nmconnection":      "upper case: not ours\n",
	"konsult-wifi 0.nmconnection":      "space: not ours\n",
	"xkonsult-wifi-0.nmconnection":     "not ours\n",
	".konsult-wifi-0.nmconnection.tmp": "hidden: not ours\n",
}

func writeForeign(t *testing.T, dir string) {
	t.Helper()
	for name, text := range foreign {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "konsult-dir.nmconnection"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func checkForeign(t *testing.T, dir string) {
	t.Helper()
	for name, text := range foreign {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		fi, err2 := os.Stat(p)
		if err != nil || err2 != nil || string(b) != text || fi.Mode().Perm() != 0o644 {
			t.Errorf("foreign file %q changed: %v %v", name, err, err2)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "konsult-dir.nmconnection")); err != nil || !fi.IsDir() {
		t.Errorf("foreign directory changed: %v", err)
	}
}

func TestApply(t *testing.T) {
	old := syscall.Umask(0) // a umask that would leave wide modes if Apply trusted it
	defer syscall.Umask(old)
	dir := t.TempDir()
	writeForeign(t, dir)
	// A konsult keyfile from an earlier config, readable by all.
	stale := filepath.Join(dir, "konsult-wifi-7.nmconnection")
	if err := os.WriteFile(stale, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := newPKI(t)
	files, err := Render(mustDecode(t, fullConfigTOML(p)), p.identity)
	if err != nil {
		t.Fatal(err)
	}

	changed, err := Apply(dir, files)
	if err != nil || !changed {
		t.Fatalf("Apply = %v, %v; want changed", changed, err)
	}
	checkForeign(t, dir)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale konsult keyfile kept: %v", err)
	}
	cur, err := Current(dir)
	if err != nil || !reflect.DeepEqual(cur, files) {
		t.Fatalf("Current = %v, %v; want the applied files", IDs(cur), err)
	}
	for name := range files {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", name, fi.Mode(), err)
		}
	}
	for _, name := range listDir(t, dir) {
		if strings.Contains(name, ".tmp-") {
			t.Errorf("temporary file left: %s", name)
		}
	}

	// Again: nothing to do.
	if changed, err := Apply(dir, files); err != nil || changed {
		t.Fatalf("second Apply = %v, %v; want unchanged", changed, err)
	}

	// A mode drifted by hand is put back.
	if err := os.Chmod(filepath.Join(dir, "konsult-eth0.nmconnection"), 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := Apply(dir, files); err != nil || !changed {
		t.Fatalf("Apply after chmod = %v, %v; want changed", changed, err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "konsult-eth0.nmconnection")); fi.Mode() != 0o600 {
		t.Fatalf("mode not restored: %v", fi.Mode())
	}

	// Fewer networks: the dropped one goes, the rest stay.
	fewer := map[string][]byte{"konsult-eth0.nmconnection": files["konsult-eth0.nmconnection"]}
	if changed, err := Apply(dir, fewer); err != nil || !changed {
		t.Fatalf("Apply fewer = %v, %v", changed, err)
	}
	if cur, _ := Current(dir); !reflect.DeepEqual(cur, fewer) {
		t.Fatalf("after fewer: %v", IDs(cur))
	}

	// Letting go: nil removes all konsult keyfiles and nothing else.
	if changed, err := Apply(dir, nil); err != nil || !changed {
		t.Fatalf("Apply nil = %v, %v", changed, err)
	}
	if cur, _ := Current(dir); len(cur) != 0 {
		t.Fatalf("after nil: %v", IDs(cur))
	}
	checkForeign(t, dir)
}

// Files are replaced by rename, never rewritten in place: a reader holding
// the old file (NetworkManager mid-read) sees all of the old contents, and
// the new file appears whole.
func TestApplyReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	name := "konsult-eth0.nmconnection"
	oldText := []byte(strings.Repeat("old line\n", 1000))
	if _, err := Apply(dir, map[string][]byte{name: oldText}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before, _ := f.Stat()
	newText := []byte("new\n")
	if _, err := Apply(dir, map[string][]byte{name: newText}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(oldText)+10)
	n, _ := f.ReadAt(buf, 0)
	if string(buf[:n]) != string(oldText) {
		t.Fatal("the old file was rewritten in place, not replaced")
	}
	after, err := os.Stat(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Fatal("same inode: not replaced by rename")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != string(newText) {
		t.Fatalf("new contents %q", b)
	}
}

func TestApplyRefusesForeignNames(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"../konsult-eth0.nmconnection", "konsult-eth0", "other.nmconnection", "konsult-a/b.nmconnection", "Konsult-eth0.nmconnection"} {
		if _, err := Apply(dir, map[string][]byte{"konsult-eth0.nmconnection": []byte("x"), name: []byte("x")}); err == nil {
			t.Errorf("Apply accepted %q", name)
		}
	}
	if names := listDir(t, dir); len(names) != 0 {
		t.Fatalf("a refused Apply wrote %v", names)
	}
}

func TestApplyMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "system-connections")
	if changed, err := Apply(dir, nil); err != nil || changed {
		t.Fatalf("Apply nil to a missing dir = %v, %v; want a no-op", changed, err)
	}
	if cur, err := Current(dir); err != nil || len(cur) != 0 {
		t.Fatalf("Current of a missing dir = %v, %v", cur, err)
	}
	_, err := Apply(dir, map[string][]byte{"konsult-eth0.nmconnection": []byte("x")})
	if err == nil || !strings.Contains(err.Error(), "is NetworkManager installed?") {
		t.Fatalf("Apply to a missing dir: %v", err)
	}
}
