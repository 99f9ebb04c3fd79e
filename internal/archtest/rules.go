package archtest

import (
	"fmt"
	"sort"
	"strings"
)

// Module is the import path every package of the repository starts with.
const Module = "github.com/konsult/konsult"

// lower are the three trees under appliance: each stands alone, so a change
// in one (a new media connector, a new board) cannot reach into another and
// the brain is the only place they meet.
var lower = []string{"hal", "media", "provisioning"}

// Package is the part of `go list -json` the rules read.
type Package struct {
	ImportPath   string
	Imports      []string // non-test files
	Deps         []string // non-test files, transitively
	TestImports  []string // _test.go files of the package itself
	XTestImports []string // _test.go files of package x_test
	Error        *struct{ Err string }
}

// tree is the top-level folder of a repository package ("media" for
// media/capture), or "" for a package outside the repository.
func tree(path string) string {
	rest, ok := strings.CutPrefix(path, Module+"/")
	if !ok {
		return ""
	}
	top, _, _ := strings.Cut(rest, "/")
	return top
}

func isLower(t string) bool {
	for _, l := range lower {
		if t == l {
			return true
		}
	}
	return false
}

func isTestSupport(path string) bool {
	return tree(path) == "internal"
}

// forbidden says why from may not import to, or "" if it may.
func forbidden(from, to string) string {
	ft, tt := tree(from), tree(to)
	switch {
	case tt == "":
		return ""
	case tt == "cmd" && ft != "cmd":
		return "only cmd/ imports cmd/ (a command is the top of the graph)"
	case ft == "appliance" && tt == "cmd":
		return "appliance/ imports no cmd/"
	case isLower(ft) && tt == "appliance":
		return ft + "/ is below appliance/ and may not import it"
	case isLower(ft) && isLower(tt) && ft != tt:
		return ft + "/ may not import " + tt + "/: hal, media and provisioning import neither each other nor appliance"
	}
	return ""
}

// Check returns one line per broken rule, sorted. Non-test code is checked
// through its transitive dependencies, so a helper under internal/ cannot
// carry media into hal. Test files are checked on their direct imports, and
// may import test support (internal/).
func Check(pkgs []Package) []string {
	var bad []string
	for _, p := range pkgs {
		direct := map[string]bool{}
		for _, imp := range p.Imports {
			direct[imp] = true
		}
		for _, dep := range p.Deps {
			why := forbidden(p.ImportPath, dep)
			if why == "" {
				continue
			}
			if direct[dep] {
				bad = append(bad, fmt.Sprintf("%s imports %s: %s", p.ImportPath, dep, why))
			} else {
				bad = append(bad, fmt.Sprintf("%s depends on %s through another package (go list -deps): %s", p.ImportPath, dep, why))
			}
		}
		for _, set := range []struct {
			files string
			imps  []string
		}{{"test files", p.TestImports}, {"x_test files", p.XTestImports}} {
			for _, imp := range set.imps {
				if isTestSupport(imp) {
					continue
				}
				if why := forbidden(p.ImportPath, imp); why != "" {
					bad = append(bad, fmt.Sprintf("%s (%s) imports %s: %s", p.ImportPath, set.files, imp, why))
				}
			}
		}
	}
	sort.Strings(bad)
	return bad
}
