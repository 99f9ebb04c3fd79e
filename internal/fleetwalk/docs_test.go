package fleetwalk

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the module root: the tests run in internal/fleetwalk.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// docBlock returns the fenced block between <!-- name:begin --> and
// <!-- name:end --> in the doc file (relative to the module root), without
// its fence lines: the text a fleet manager copies.
func docBlock(t *testing.T, file, name string) string {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(repoRoot(t), file))
	if err != nil {
		t.Fatal(err)
	}
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	_, rest, ok := strings.Cut(string(text), begin)
	if !ok {
		t.Fatalf("%s has no %s marker", file, begin)
	}
	rest, _, ok = strings.Cut(rest, end)
	if !ok {
		t.Fatalf("%s: %s has no %s", file, begin, end)
	}
	lines := strings.Split(strings.TrimLeft(strings.TrimRight(rest, " \n"), "\n"), "\n")
	// A block inside a list item is indented like its fence.
	indent := lines[0][:len(lines[0])-len(strings.TrimLeft(lines[0], " "))]
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, indent)
	}
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "```") || lines[len(lines)-1] != "```" {
		t.Fatalf("%s: between %s and %s is not one fenced block:\n%s", file, begin, end, rest)
	}
	return strings.Join(lines[1:len(lines)-1], "\n") + "\n"
}

// commands splits a block into its command lines: comments, blank lines and
// trailing "# ..." remarks dropped, "\" continuations joined.
func commands(block string) []string {
	var out []string
	var cur string
	for _, line := range strings.Split(block, "\n") {
		line = strings.TrimSpace(line)
		if cur == "" && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if i := strings.Index(line, " #"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		out = append(out, cur+line)
		cur = ""
	}
	return out
}

var (
	buildMu  sync.Mutex
	binDir   string
	buildErr = map[string]error{}
)

// binaries builds the named commands (fleetctl, roomd) once per test run
// and returns the directory that holds them, to put first on PATH.
// FLEETWALK_BIN names a directory of ready ones instead (e.g. the
// package's), so the walk can check what ships.
func binaries(t *testing.T, names ...string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if d := os.Getenv("FLEETWALK_BIN"); d != "" {
		binDir = d
		return d
	}
	if binDir == "" {
		dir, err := os.MkdirTemp("", "fleetwalk-bin")
		if err != nil {
			t.Fatal(err)
		}
		binDir = dir
	}
	for _, name := range names {
		err, done := buildErr[name]
		if !done {
			out, berr := exec.Command("go", "build", "-o", filepath.Join(binDir, name), "../../cmd/"+name).CombinedOutput()
			if berr != nil {
				err = fmt.Errorf("build %s: %v\n%s", name, berr, out)
			}
			buildErr[name] = err
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return binDir
}

// shell runs script with sh -e in dir with env added to the test's
// environment, and returns its output; a failure fails the test.
func shell(t *testing.T, dir string, env []string, script string) string {
	t.Helper()
	out, err := tryShell(dir, env, script)
	if err != nil {
		t.Fatalf("sh -e:\n%s\nfailed: %v\n%s", script, err, out)
	}
	return out
}

func tryShell(dir string, env []string, script string) (string, error) {
	cmd := exec.Command("sh", "-e", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
}

// fakeTool writes an executable shell script name into dir.
func fakeTool(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}
