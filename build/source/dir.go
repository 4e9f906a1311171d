// Package source turns inputs (host directories, tarballs, OCI images,
// inline recipe files) into a tree.Tree without extracting anything.
package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/tree"
)

// FromDir reads the host directory root into a tree. Ownership, modes,
// nanosecond mtimes, xattrs, symlinks (not followed), device nodes, fifos,
// sockets and hard links (same device and inode) are kept. File content is
// referenced, not read: writers open the host file when they need it.
func FromDir(root string) (*tree.Tree, error) {
	st, err := os.Lstat(root)
	if err != nil {
		return nil, fmt.Errorf("dir source %s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("dir source %s: not a directory", root)
	}
	rootInode, err := inodeFromHost(root, st)
	if err != nil {
		return nil, err
	}
	t := &tree.Tree{Root: rootInode}
	type devIno struct{ dev, ino uint64 }
	seen := map[devIno]string{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("dir source %s: %w", p, err)
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("dir source %s: %w", p, err)
		}
		sys, ok := info.Sys().(*syscall.Stat_t)
		if ok && !info.IsDir() && sys.Nlink > 1 {
			key := devIno{uint64(sys.Dev), uint64(sys.Ino)}
			if first, dup := seen[key]; dup {
				if err := t.Link(rel, first); err != nil {
					return fmt.Errorf("dir source %s: %w", p, err)
				}
				return nil
			}
			seen[key] = rel
		}
		n, err := inodeFromHost(p, info)
		if err != nil {
			return err
		}
		if err := t.Put(rel, n); err != nil {
			return fmt.Errorf("dir source %s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// inodeFromHost builds an inode from a host file's lstat information.
func inodeFromHost(p string, info fs.FileInfo) (*tree.Inode, error) {
	n := &tree.Inode{
		Perm:  uint16(info.Mode().Perm()),
		Mtime: info.ModTime(),
	}
	m := info.Mode()
	if m&fs.ModeSetuid != 0 {
		n.Perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		n.Perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		n.Perm |= 0o1000
	}
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		n.UID, n.GID = sys.Uid, sys.Gid
		n.Mtime = time.Unix(sys.Mtim.Sec, sys.Mtim.Nsec)
		n.Major, n.Minor = unix.Major(uint64(sys.Rdev)), unix.Minor(uint64(sys.Rdev))
	}
	switch {
	case m.IsDir():
		n.Type = tree.Dir
	case m.IsRegular():
		n.Type = tree.Regular
		n.Size = info.Size()
		n.Content = tree.HostFile(p)
	case m&fs.ModeSymlink != 0:
		n.Type = tree.Symlink
		target, err := os.Readlink(p)
		if err != nil {
			return nil, fmt.Errorf("dir source %s: %w", p, err)
		}
		n.Target = target
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice != 0:
		n.Type = tree.CharDevice
	case m&fs.ModeDevice != 0:
		n.Type = tree.BlockDevice
	case m&fs.ModeNamedPipe != 0:
		n.Type = tree.FIFO
	case m&fs.ModeSocket != 0:
		n.Type = tree.Socket
	default:
		return nil, fmt.Errorf("dir source %s: unsupported file mode %v", p, m)
	}
	if n.Type != tree.CharDevice && n.Type != tree.BlockDevice {
		n.Major, n.Minor = 0, 0
	}
	xattrs, err := readXattrs(p)
	if err != nil {
		return nil, fmt.Errorf("dir source %s: xattrs: %w", p, err)
	}
	n.Xattrs = xattrs
	return n, nil
}

// readXattrs lists and reads a file's extended attributes without
// following symlinks. Filesystems without xattr support give none.
func readXattrs(p string) ([]tree.Xattr, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) {
			return nil, nil
		}
		return nil, err
	}
	if size == 0 {
		return nil, nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var n tree.Inode
	for _, name := range splitNul(buf[:size]) {
		vsize, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		val := make([]byte, vsize)
		vsize, err = unix.Lgetxattr(p, name, val)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		n.SetXattr(name, val[:vsize])
	}
	return n.Xattrs, nil
}

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}
