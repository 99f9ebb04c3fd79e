package archtest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Limits are the size rules of docs/DESIGN.md ("Layers and imports"): a
// production file (not _test.go) of at most MaxFileLines lines, a function
// of at most MaxFuncLines unless its doc comment says why it reads better
// whole, and each folder of Packages at most its figure of non-test lines
// (cmd/roomd: a command that only wires).
type Limits struct {
	MaxFileLines int
	MaxFuncLines int
	Packages     map[string]int // folder (slash-separated, from the root) → most non-test lines
	// Except are "path:func" entries allowed over MaxFuncLines, each with
	// why; a function whose comment says "whole" needs none.
	Except map[string]string
}

// Oversized walks the Go files under root (skipping hidden folders and
// testdata) and returns one line per broken limit, sorted.
func Oversized(root string, lim Limits) ([]string, error) {
	var bad []string
	pkgLines := map[string]int{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, path, src, parser.ParseComments)
		if err != nil {
			return fmt.Errorf("parse %s: %w", rel, err)
		}
		lines := fset.File(f.Pos()).LineCount()
		pkgLines[filepath.ToSlash(filepath.Dir(rel))] += lines
		if lim.MaxFileLines > 0 && lines > lim.MaxFileLines {
			bad = append(bad, fmt.Sprintf("%s: %d lines, over %d: split it by concern", rel, lines, lim.MaxFileLines))
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			if lim.MaxFuncLines <= 0 || n <= lim.MaxFuncLines {
				continue
			}
			key := rel + ":" + funcName(fd)
			if lim.Except[key] != "" || fd.Doc != nil && strings.Contains(fd.Doc.Text(), "whole") {
				continue
			}
			bad = append(bad, fmt.Sprintf("%s: %d lines, over %d: split it, or say in its comment why it reads better whole", key, n, lim.MaxFuncLines))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for dir, most := range lim.Packages {
		if n := pkgLines[dir]; n > most {
			bad = append(bad, fmt.Sprintf("%s: %d non-test lines, over %d: move its decisions down into appliance/", dir, n, most))
		}
	}
	sort.Strings(bad)
	return bad, nil
}

// funcName is "Name" or "Recv.Name".
func funcName(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	t := fd.Recv.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	switch x := t.(type) {
	case *ast.IndexExpr:
		t = x.X
	case *ast.IndexListExpr:
		t = x.X
	}
	if id, ok := t.(*ast.Ident); ok {
		return id.Name + "." + fd.Name.Name
	}
	return fd.Name.Name
}
