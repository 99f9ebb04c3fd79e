package network

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// MaxKeyfileSize caps a spooled keyfile. The largest one Render writes (an
// 802.1X profile with a CA certificate inline) is a few KiB.
const MaxKeyfileSize = 64 << 10

// Spool is the folder roomd renders keyfiles into for the root helper
// (roomd --apply-network), read as root. Its owner (roomd's user) is not
// trusted: every file is opened relative to the folder, never following a
// symbolic link (a link to a root-only file would be read as root), without
// blocking on a FIFO, and accepted only as a regular, singly linked file
// owned by that user and at most MaxKeyfileSize bytes.
type Spool struct {
	dir string
	f   *os.File // the folder, opened with O_NOFOLLOW
	UID int      // who must own every file: the folder's owner, or as given
	GID int      // the folder's group (roomd's group)
}

// OpenSpool opens dir as a spool. uid < 0 means "whoever owns dir". A dir
// that is itself a symbolic link is refused.
func OpenSpool(dir string, uid int) (*Spool, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("network spool %s: not a folder (a symbolic link?): refused", dir)
		}
		return nil, fmt.Errorf("network spool: %w", &os.PathError{Op: "open", Path: dir, Err: err})
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("network spool %s: %w", dir, err)
	}
	s := &Spool{dir: dir, f: os.NewFile(uintptr(fd), dir), UID: uid, GID: int(st.Gid)}
	if uid < 0 {
		s.UID = int(st.Uid)
	}
	return s, nil
}

// Close closes the folder.
func (s *Spool) Close() error { return s.f.Close() }

// ReadFile reads one file of the spool with the checks above, at most max
// bytes. The error names the file and what is wrong with it, never its
// contents.
func (s *Spool) ReadFile(name string, max int64) ([]byte, error) {
	if name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("%s: not a plain file name", name)
	}
	fd, err := unix.Openat(int(s.f.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ELOOP):
			return nil, fmt.Errorf("%s is a symbolic link: refused (the helper reads only regular files roomd wrote)", name)
		case errors.Is(err, unix.ENOENT):
			return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("%s is not a regular file (%s): refused", name, fileKind(st.Mode))
	case int(st.Uid) != s.UID:
		return nil, fmt.Errorf("%s is owned by uid %d, not by roomd's user (uid %d): refused", name, st.Uid, s.UID)
	case st.Nlink != 1:
		return nil, fmt.Errorf("%s has %d hard links: refused (roomd writes each file once)", name, st.Nlink)
	case st.Size > max:
		return nil, fmt.Errorf("%s is %d bytes, over the %d-byte limit: refused", name, st.Size, max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s grew over the %d-byte limit while read: refused", name, max)
	}
	return b, nil
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFDIR:
		return "a folder"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	}
	return "not a plain file"
}

// Keyfiles reads every konsult keyfile in the spool (names Owned accepts)
// and checks each with VerifyKeyfile. Any refusal fails the whole set, so
// nothing of a tampered spool is installed.
func (s *Spool) Keyfiles() (map[string][]byte, error) {
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("network spool %s: %w", s.dir, err)
	}
	names, err := s.f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("network spool %s: %w", s.dir, err)
	}
	sort.Strings(names)
	files := map[string][]byte{}
	var errs []error
	for _, name := range names {
		if !Owned(name) {
			continue
		}
		b, err := s.ReadFile(name, MaxKeyfileSize)
		if err == nil {
			err = VerifyKeyfile(name, b, s.readableByOwner)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		files[name] = b
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("network: refused the spooled profiles, nothing installed: %w", errors.Join(errs...))
	}
	return files, nil
}

// readableByOwner allows a file a keyfile names (the unit's certificate and
// key for EAP-TLS, the fleet CA) only if roomd's user could read it itself:
// NetworkManager reads it as root, so anything else would let that user
// reach a root-only key. No component of the path may be a symbolic link.
func (s *Spool) readableByOwner(path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return errors.New("is not a clean absolute path")
	}
	for p := path; ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		if err != nil {
			return errors.New("does not exist")
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return errors.New("goes through a symbolic link")
		}
		if p == "/" {
			break
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return errors.New("does not exist")
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return errors.New("is not a regular file")
	}
	ok := int(st.Uid) == s.UID && st.Mode&0o400 != 0 ||
		int(st.Gid) == s.GID && st.Mode&0o040 != 0 ||
		st.Mode&0o004 != 0
	if !ok {
		return fmt.Errorf("is not readable by roomd's user (owner uid %d, group %d, mode %#o)", st.Uid, st.Gid, st.Mode&0o777)
	}
	return nil
}

// WriteFile replaces name in the spool atomically (a new file, fsync,
// rename, fsync of the folder), all relative to the opened folder, so a
// folder swapped for a link meanwhile cannot redirect the write.
func (s *Spool) WriteFile(name string, data []byte, mode uint32) error {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := "." + name + ".tmp-" + hex.EncodeToString(rnd[:])
	dfd := int(s.f.Fd())
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	if err := f.Chmod(os.FileMode(mode)); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	ok = true
	return unix.Fsync(dfd)
}
