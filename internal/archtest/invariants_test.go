package archtest

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var (
	// "invariant 7", "Invariants 1–4", "invariants 1-4"
	citation = regexp.MustCompile(`(?i)\binvariants? (\d+)(?:\s*[-–]\s*(\d+))?`)
	// "4. **Fail closed.**" in docs/DESIGN.md's invariants section
	numbered = regexp.MustCompile(`(?m)^(\d+)\. \*\*`)
)

// TestCitedInvariantsAreInDesign fails when a Go comment or message cites
// an invariant number that docs/DESIGN.md does not state, so a reader who
// follows "invariant N" from the code finds that rule under that number.
func TestCitedInvariantsAreInDesign(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", Module).Output()
	if err != nil {
		t.Fatalf("find the module root: %v", err)
	}
	root := strings.TrimSpace(string(out))
	doc, err := os.ReadFile(filepath.Join(root, "docs", "DESIGN.md"))
	if err != nil {
		t.Fatalf("read the design: %v", err)
	}
	section, _, _ := strings.Cut(string(doc[strings.Index(string(doc), "## The privacy invariants"):]), "\n## Layers")
	stated := map[int]bool{}
	for _, m := range numbered.FindAllStringSubmatch(section, -1) {
		n, _ := strconv.Atoi(m[1])
		stated[n] = true
	}
	if len(stated) < 8 {
		t.Fatalf("docs/DESIGN.md states %d numbered invariants, want at least 8: is the section still headed \"## The privacy invariants\"?", len(stated))
	}
	cited := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		for _, m := range citation.FindAllStringSubmatch(string(src), -1) {
			lo, _ := strconv.Atoi(m[1])
			hi := lo
			if m[2] != "" {
				hi, _ = strconv.Atoi(m[2])
			}
			for n := lo; n <= hi; n++ {
				cited++
				if !stated[n] {
					t.Errorf("%s cites %q, but docs/DESIGN.md states no invariant %d", rel, m[0], n)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the module: %v", err)
	}
	if cited == 0 {
		t.Fatal("no Go file cites an invariant: the pattern no longer matches how the code cites them")
	}
}
