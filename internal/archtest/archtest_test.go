package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// listModule runs `go list -json` over every package of the module, tests
// included, from the module's root (found by go itself, whatever the
// working directory of the test).
func listModule(t *testing.T) []Package {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the import rules are read with the go command: %v", err)
	}
	root, err := exec.Command(goBin, "list", "-m", "-f", "{{.Dir}}", Module).Output()
	if err != nil {
		t.Fatalf("find the module root: %v", err)
	}
	cmd := exec.Command(goBin, "list", "-e", "-json=ImportPath,Imports,Deps,TestImports,XTestImports,Error", "./...")
	cmd.Dir = strings.TrimSpace(string(root))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./... in %s: %v\n%s", cmd.Dir, err, stderr.String())
	}
	var pkgs []Package
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p Package
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("read go list output: %v", err)
		}
		// A package go cannot read has imports nobody can check.
		if p.Error != nil {
			t.Errorf("go list %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestImportDirection fails when any package of the repository breaks the
// layer rules: cmd → appliance → (hal, media, provisioning), none of the
// three lower trees importing another or appliance, and only cmd importing
// cmd. There is no allow-list: when this test was written no package broke
// a rule.
func TestImportDirection(t *testing.T) {
	pkgs := listModule(t)
	seen := map[string]bool{}
	for _, p := range pkgs {
		seen[tree(p.ImportPath)] = true
	}
	// A listing that silently lost a tree would pass for the wrong reason.
	for _, want := range []string{"cmd", "appliance", "hal", "media", "provisioning", "internal"} {
		if !seen[want] {
			t.Fatalf("go list found no package under %s/ (found %d packages): the check would prove nothing", want, len(pkgs))
		}
	}
	for _, v := range Check(pkgs) {
		t.Error(v)
	}
}

// TestCheckCatchesEachRule feeds Check one package per rule, so a rule that
// stops catching its case is noticed even while the repository is clean.
func TestCheckCatchesEachRule(t *testing.T) {
	m := func(s string) string { return Module + "/" + s }
	cases := []struct {
		name string
		pkg  Package
		bad  bool
	}{
		{"hal imports media", Package{ImportPath: m("hal/led"), Imports: []string{m("media/gate")}, Deps: []string{m("media/gate")}}, true},
		{"media imports provisioning", Package{ImportPath: m("media/whip"), Imports: []string{m("provisioning/ca")}, Deps: []string{m("provisioning/ca")}}, true},
		{"provisioning imports appliance", Package{ImportPath: m("provisioning/link"), Imports: []string{m("appliance")}, Deps: []string{m("appliance")}}, true},
		{"hal reaches media through internal", Package{ImportPath: m("hal/sim"), Imports: []string{m("internal/x")}, Deps: []string{m("internal/x"), m("media/gate")}}, true},
		{"appliance imports cmd", Package{ImportPath: m("appliance/agent"), Imports: []string{m("cmd/roomd")}, Deps: []string{m("cmd/roomd")}}, true},
		{"image imports cmd", Package{ImportPath: m("image/lab"), Imports: []string{m("cmd/roomd")}, Deps: []string{m("cmd/roomd")}}, true},
		{"media test imports hal", Package{ImportPath: m("media/capture"), TestImports: []string{m("hal/sim")}}, true},
		{"provisioning x_test imports media", Package{ImportPath: m("provisioning/link"), XTestImports: []string{m("internal/farend")}}, false},
		{"provisioning x_test imports media/gate", Package{ImportPath: m("provisioning/link"), XTestImports: []string{m("media/gate")}}, true},
		{"test imports cmd", Package{ImportPath: m("media/livekit"), TestImports: []string{m("cmd/roomd")}}, true},
		{"test imports internal support", Package{ImportPath: m("hal/sim"), TestImports: []string{m("internal/lossynet")}}, false},
		{"appliance imports all three", Package{ImportPath: m("appliance"), Imports: []string{m("hal"), m("media"), m("provisioning/link")}, Deps: []string{m("hal"), m("media"), m("provisioning/link")}}, false},
		{"cmd imports cmd and everything", Package{ImportPath: m("cmd/roomd"), Imports: []string{m("cmd/x"), m("hal/sim")}, Deps: []string{m("cmd/x"), m("hal/sim")}}, false},
		{"within one tree", Package{ImportPath: m("media/capture"), Imports: []string{m("media/gate")}, Deps: []string{m("media/gate"), "github.com/pion/webrtc/v4"}}, false},
	}
	for _, c := range cases {
		got := Check([]Package{c.pkg})
		if (len(got) > 0) != c.bad {
			t.Errorf("%s: Check says %q, want a violation: %v", c.name, got, c.bad)
		}
	}
}
