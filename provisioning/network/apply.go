package network

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/konsult/konsult/internal/atomicfile"
)

// FileMode is every keyfile's mode: NetworkManager ignores keyfiles that
// group or others can read, and they hold Wi-Fi secrets.
const FileMode fs.FileMode = 0o600

// Owned reports whether a file name in the keyfile directory is one this
// package manages: konsult-<lowercase letters, digits, '-'>.nmconnection.
func Owned(name string) bool {
	if !strings.HasPrefix(name, Prefix) || !strings.HasSuffix(name, Suffix) {
		return false
	}
	mid := strings.TrimSuffix(strings.TrimPrefix(name, Prefix), Suffix)
	if mid == "" {
		return false
	}
	for _, r := range mid {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// IDs returns the connection ids of keyfiles (file names without
// ".nmconnection"), sorted: konsult-eth0 sorts before konsult-wifi-*. To
// activate Wi-Fi networks in priority order use Config.ConnectionIDs.
func IDs(files map[string][]byte) []string {
	ids := make([]string, 0, len(files))
	for name := range files {
		ids = append(ids, strings.TrimSuffix(name, Suffix))
	}
	sort.Strings(ids)
	return ids
}

// Apply makes dir hold exactly files among the konsult-*.nmconnection
// keyfiles: each file whose contents or mode differ is replaced atomically
// (temporary file, fsync, rename, fsync dir) with mode 0600, then every
// other konsult keyfile is removed. Files that Owned rejects are never
// read, written or removed. New files are written before stale ones go, so
// the unit is never left without a profile part-way. changed reports
// whether anything on disk changed; Apply(dir, nil) removes all konsult
// keyfiles. A file name in files that Owned rejects is an error and
// nothing is written.
func Apply(dir string, files map[string][]byte) (changed bool, err error) {
	for name := range files {
		if !Owned(name) {
			return false, fmt.Errorf("network: apply: %q is not a konsult keyfile name (konsult-*.nmconnection)", name)
		}
	}
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) && len(files) == 0 {
			return false, nil
		}
		return false, fmt.Errorf("network: apply: keyfile directory (is NetworkManager installed?): %w", err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		path := filepath.Join(dir, name)
		if same(path, files[name]) {
			continue
		}
		if err := atomicfile.Write(path, files[name], FileMode); err != nil {
			return changed, fmt.Errorf("network: apply: %w", err)
		}
		changed = true
	}
	stale, err := ownedFiles(dir)
	if err != nil {
		return changed, err
	}
	removed := false
	for _, name := range stale {
		if _, keep := files[name]; keep {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return changed, fmt.Errorf("network: apply: remove stale keyfile: %w", err)
		}
		changed, removed = true, true
	}
	if removed {
		if err := atomicfile.SyncDir(dir); err != nil {
			return changed, fmt.Errorf("network: apply: %w", err)
		}
	}
	return changed, nil
}

// same reports whether path is a regular file with mode 0600 and contents b.
func same(path string, b []byte) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != FileMode || fi.Size() != int64(len(b)) {
		return false
	}
	cur, err := os.ReadFile(path)
	return err == nil && bytes.Equal(cur, b)
}

// ownedFiles lists the konsult keyfiles in dir, sorted.
func ownedFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("network: list keyfiles: %w", err)
	}
	var out []string
	for _, e := range ents {
		if Owned(e.Name()) && !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Current reads the konsult keyfiles now in dir: the copy to hand back to
// Apply to roll back. A missing dir gives an empty map.
func Current(dir string) (map[string][]byte, error) {
	files := map[string][]byte{}
	names, err := ownedFiles(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return files, nil
	}
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("network: read current keyfile: %w", err)
		}
		files[name] = b
	}
	return files, nil
}
