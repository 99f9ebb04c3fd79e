package archtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// repoLimits are the figures issue 17 set: no production file over 700
// lines, no function over 120 unless its comment says why it reads better
// whole, and cmd/roomd at most 800 non-test lines.
var repoLimits = Limits{
	MaxFileLines: 700,
	MaxFuncLines: 120,
	Packages:     map[string]int{"cmd/roomd": 800},
	Except: map[string]string{
		// The lab's echo bench (issue 17's helper does not own image/lab):
		// one measurement run from settle to report, to be split by its
		// owner.
		"image/lab/labbench/echo.go:echo": "lab bench, not shipped",
	},
}

// TestSizes fails when a production file, a function or cmd/roomd grows
// past the figures above, so a newcomer keeps finding each decision in a
// file they can read.
func TestSizes(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", Module).Output()
	if err != nil {
		t.Fatalf("find the module root: %v", err)
	}
	root := strings.TrimSpace(string(out))
	bad, err := Oversized(root, repoLimits)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Error(b)
	}
}

// TestOversizedCatchesEachLimit builds a tree that breaks each limit once
// (and one long function that says why it reads better whole), so a limit
// that stops catching its case is noticed while the repository is clean.
func TestOversizedCatchesEachLimit(t *testing.T) {
	root := t.TempDir()
	write := func(rel, text string) {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	body := func(n int) string { return strings.Repeat("\t_ = 0\n", n) }
	write("media/big/big.go", "package big\n"+strings.Repeat("\n", 70))
	write("media/long/long.go", "package long\n\ntype T struct{}\n\nfunc (*T) Long() {\n"+body(20)+"}\n\n"+
		"// Whole reads better whole: one case per code.\nfunc Whole() {\n"+body(20)+"}\n\nfunc short() {}\n")
	write("cmd/fat/main.go", "package main\n\nfunc main() {}\n"+strings.Repeat("// x\n", 30))
	write("cmd/fat/main_test.go", "package main\n"+strings.Repeat("// x\n", 500))
	write(".cache/skipped/x.go", "package x\n"+strings.Repeat("\n", 500))
	bad, err := Oversized(root, Limits{MaxFileLines: 60, MaxFuncLines: 10, Packages: map[string]int{"cmd/fat": 30}})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(bad, "\n")
	for _, want := range []string{"media/big/big.go: 71 lines", "media/long/long.go:T.Long: 22 lines", "cmd/fat: 33 non-test lines"} {
		if !strings.Contains(got, want) {
			t.Errorf("Oversized missed %q; said:\n%s", want, got)
		}
	}
	if len(bad) != 3 {
		t.Errorf("Oversized said %d things, want 3 (no Whole, no test file, nothing under .cache):\n%s", len(bad), got)
	}
}
