// Package lab is the QEMU hardware lab: Debian's own kernel under
// qemu-system-x86_64 (TCG) with vivid (camera), snd-aloop (microphone),
// gpio-sim (buttons, LED, shutter) and vicodec (a V4L2 memory-to-memory
// encoder), roomd inside, LiveKit and a headless Chromium far end outside.
// The test is lab_test.go; `make lab` runs it.
package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// initramfs collects files for a newc cpio archive (the kernel's initramfs
// format); directories are created as needed.
type initramfs struct {
	files map[string]entry
}

type entry struct {
	mode    uint32 // full st_mode
	data    []byte
	srcPath string
}

func newInitramfs() *initramfs { return &initramfs{files: map[string]entry{}} }

func (r *initramfs) dir(p string) {
	p = strings.TrimPrefix(filepath.Clean(p), "/")
	for p != "." && p != "" {
		if _, ok := r.files[p]; !ok {
			r.files[p] = entry{mode: 0o040755}
		}
		p = filepath.Dir(p)
	}
}

func (r *initramfs) bytes(p string, b []byte, perm uint32) {
	r.dir(filepath.Dir(p))
	r.files[strings.TrimPrefix(p, "/")] = entry{mode: 0o100000 | perm, data: b}
}

// copy adds the host file src at p, following symlinks.
func (r *initramfs) copy(p, src string, perm uint32) {
	r.dir(filepath.Dir(p))
	r.files[strings.TrimPrefix(p, "/")] = entry{mode: 0o100000 | perm, srcPath: src}
}

func (r *initramfs) symlink(p, target string) {
	r.dir(filepath.Dir(p))
	r.files[strings.TrimPrefix(p, "/")] = entry{mode: 0o120777, data: []byte(target)}
}

// tree copies a host directory (regular files and symlinks) to p.
func (r *initramfs) tree(p, src string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		dst := filepath.Join(p, rel)
		switch {
		case d.IsDir():
			r.dir(dst)
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(path)
			if err != nil {
				return err
			}
			r.symlink(dst, t)
		case d.Type().IsRegular():
			r.copy(dst, path, 0o644)
		}
		return nil
	})
}

// binary adds an executable and every shared library ldd names, at the
// paths ldd prints (the guest has no ld.so.cache; Debian's loader searches
// /lib/x86_64-linux-gnu by default).
func (r *initramfs) binary(p, src string) error {
	r.copy(p, src, 0o755)
	return r.libs(src)
}

func (r *initramfs) libs(src string) error {
	out, err := exec.Command("ldd", src).Output()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil
		}
		return fmt.Errorf("ldd %s: %w", src, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0]
		default:
			continue
		}
		if _, ok := r.files[strings.TrimPrefix(lib, "/")]; !ok {
			r.copy(lib, lib, 0o755)
		}
	}
	return nil
}

// write emits the archive, uncompressed: TCG decompresses slowly.
func (r *initramfs) write(w io.Writer) error {
	names := make([]string, 0, len(r.files))
	for n := range r.files {
		names = append(names, n)
	}
	sort.Strings(names)
	bw := bufio.NewWriterSize(w, 1<<20)
	ino := 1
	for _, n := range names {
		e := r.files[n]
		data := e.data
		if e.srcPath != "" {
			b, err := os.ReadFile(e.srcPath)
			if err != nil {
				return err
			}
			data = b
		}
		if err := newcEntry(bw, n, e.mode, data, ino); err != nil {
			return err
		}
		ino++
	}
	if err := newcEntry(bw, "TRAILER!!!", 0, nil, 0); err != nil {
		return err
	}
	return bw.Flush()
}

func newcEntry(w *bufio.Writer, name string, mode uint32, data []byte, ino int) error {
	nlink := 1
	if mode&0o040000 != 0 && mode&0o100000 == 0 {
		nlink = 2
	}
	fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.WriteString(name)
	w.WriteByte(0)
	pad(w, 110+len(name)+1)
	w.Write(data)
	pad(w, len(data))
	return nil
}

func pad(w *bufio.Writer, n int) {
	for n%4 != 0 {
		w.WriteByte(0)
		n++
	}
}

// moduleDeps reads a module's depends= from its .modinfo strings.
func moduleDeps(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.Index(b, []byte("\x00depends="))
	if i < 0 {
		return nil, nil
	}
	rest := b[i+len("\x00depends="):]
	v := string(rest[:bytes.IndexByte(rest, 0)])
	if v == "" {
		return nil, nil
	}
	return strings.Split(v, ","), nil
}

// moduleOrder resolves names (and out-of-tree paths) to .ko paths in load
// order, dependencies first. Names match file names with - and _ equal.
func moduleOrder(kernelModules string, oot map[string]string, want []string) ([]string, error) {
	index := map[string]string{}
	err := filepath.WalkDir(kernelModules, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			index[norm(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for n, p := range oot {
		index[norm(n)] = p
	}
	var order []string
	seen := map[string]bool{}
	var visit func(n string) error
	visit = func(n string) error {
		n = norm(n)
		if seen[n] {
			return nil
		}
		seen[n] = true
		p, ok := index[n]
		if !ok {
			return fmt.Errorf("module %s: not in %s (built into the kernel, or missing)", n, kernelModules)
		}
		deps, err := moduleDeps(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		order = append(order, p)
		return nil
	}
	for _, w := range want {
		if err := visit(w); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func norm(n string) string { return strings.ReplaceAll(n, "-", "_") }
