// Package source turns inputs (host directories, tarballs, OCI images,
// inline recipe files) into a tree.Tree without extracting anything.
package source

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/tree"
)

// pathMax is the longest path a system call takes (PATH_MAX, with its
// NUL); longer host paths are reached one directory at a time.
const pathMax = 4096

// FromDir reads the host directory root into a tree. Ownership, modes,
// nanosecond mtimes, xattrs, symlinks (not followed), device nodes, fifos,
// sockets and hard links (same device and inode) are kept. File content is
// referenced, not read: writers open the host file when they need it,
// without following a symlink that replaced it. Paths of any length are
// read: directories are opened relative to their parent, never through a
// path longer than PATH_MAX.
func FromDir(root string) (*tree.Tree, error) {
	d := &dirReader{root: root, seen: map[devIno]string{}}
	if _, err := os.Stat("/proc/self/fd"); err == nil {
		d.proc = true
	}
	fd, err := openDir(root, "")
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return nil, fmt.Errorf("dir source %s: not a directory", root)
	}
	if err != nil {
		return nil, d.fail("", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, d.fail("", err)
	}
	rootInode, err := d.inode(fd, "", "", &st)
	if err != nil {
		return nil, err
	}
	d.t = &tree.Tree{Root: rootInode}
	if err := d.readDir(fd, ""); err != nil {
		return nil, err
	}
	return d.t, nil
}

type devIno struct{ dev, ino uint64 }

// dirReader carries one FromDir call.
type dirReader struct {
	root string
	t    *tree.Tree
	seen map[devIno]string // first path of each hard-linked inode
	proc bool              // /proc/self/fd is there (see atXattrs)
}

// fail names the source and the file (once, however long) in an error.
func (d *dirReader) fail(rel string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	if rel == "" {
		return fmt.Errorf("dir source %s: %w", d.root, err)
	}
	return fmt.Errorf("dir source %s: %s: %w", d.root, rel, err)
}

// readDir adds the entries of directory rel (open as fd) to the tree,
// then descends into its subdirectories, each opened relative to fd and
// closed before the next, so only one descriptor per level is open.
func (d *dirReader) readDir(fd int, rel string) error {
	// Read the names through a duplicate: the caller closes fd.
	dup, err := unix.Dup(fd)
	if err != nil {
		return d.fail(rel, err)
	}
	f := os.NewFile(uintptr(dup), rel)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return d.fail(rel, err)
	}
	var subdirs []string
	for _, name := range names {
		p := name
		if rel != "" {
			p = rel + "/" + name
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return d.fail(p, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
			key := devIno{uint64(st.Dev), st.Ino}
			if first, dup := d.seen[key]; dup {
				if err := d.t.Link(p, first); err != nil {
					return d.fail(p, err)
				}
				continue
			}
			d.seen[key] = p
		}
		n, err := d.inode(fd, name, p, &st)
		if err != nil {
			return err
		}
		if err := d.t.Put(p, n); err != nil {
			return d.fail(p, err)
		}
		if n.Type == tree.Dir {
			subdirs = append(subdirs, name)
		}
	}
	for _, name := range subdirs {
		p := name
		if rel != "" {
			p = rel + "/" + name
		}
		sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return d.fail(p, err)
		}
		err = d.subdir(sub, p)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// subdir reads directory p, open as fd: its xattrs (through fd, which
// has no path length limit) and its entries.
func (d *dirReader) subdir(fd int, p string) error {
	n, err := d.t.Lookup(p)
	if err != nil {
		return d.fail(p, err)
	}
	if n.Xattrs, err = fdXattrs(fd); err != nil {
		return d.fail(p, fmt.Errorf("xattrs: %w", err))
	}
	return d.readDir(fd, p)
}

// inode builds the inode of entry name of directory dirfd (rel is its path
// in the tree; name "" is dirfd itself) from its lstat information.
func (d *dirReader) inode(dirfd int, name, rel string, st *unix.Stat_t) (*tree.Inode, error) {
	n := &tree.Inode{
		Perm:  uint16(st.Mode & 0o7777),
		UID:   st.Uid,
		GID:   st.Gid,
		Mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		n.Type = tree.Dir
	case unix.S_IFREG:
		n.Type = tree.Regular
		n.Size = st.Size
		n.Content = hostFile{root: d.root, rel: rel}
	case unix.S_IFLNK:
		n.Type = tree.Symlink
		target, err := readlinkat(dirfd, name, st.Size)
		if err != nil {
			return nil, d.fail(rel, fmt.Errorf("readlink: %w", err))
		}
		n.Target = target
	case unix.S_IFCHR:
		n.Type = tree.CharDevice
	case unix.S_IFBLK:
		n.Type = tree.BlockDevice
	case unix.S_IFIFO:
		n.Type = tree.FIFO
	case unix.S_IFSOCK:
		n.Type = tree.Socket
	default:
		return nil, d.fail(rel, fmt.Errorf("unsupported file mode %#o", st.Mode))
	}
	if n.Type == tree.CharDevice || n.Type == tree.BlockDevice {
		n.Major, n.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	var err error
	switch {
	case name == "":
		n.Xattrs, err = fdXattrs(dirfd)
	case n.Type != tree.Dir: // directories: when they are opened
		p := d.root + "/" + rel
		if d.proc {
			p = "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
		}
		n.Xattrs, err = pathXattrs(p)
	}
	if err != nil {
		return nil, d.fail(rel, fmt.Errorf("xattrs: %w", err))
	}
	return n, nil
}

// readlinkat reads a symlink's target of size bytes (as lstat gave it),
// growing the buffer if the target changed.
func readlinkat(dirfd int, name string, size int64) (string, error) {
	buf := make([]byte, max(size, 64)+1)
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// openDir opens directory rel of root (root itself for "") without
// following a symlink at its last name, however long the path.
func openDir(root, rel string) (int, error) {
	return openBeneath(root, rel, unix.O_RDONLY|unix.O_DIRECTORY)
}

// openBeneath opens root/rel with flags plus O_NOFOLLOW and O_CLOEXEC.
// A path longer than PATH_MAX is walked in pieces, each directory opened
// relative to the previous one.
func openBeneath(root, rel string, flags int) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	full := root
	if rel != "" {
		full = root + "/" + rel
	}
	if len(full) < pathMax {
		return unix.Open(full, flags, 0)
	}
	dir, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	names := strings.Split(rel, "/")
	for len(names) > 1 {
		// As many parent names as fit one call.
		k, l := 0, 0
		for k < len(names)-1 && l+len(names[k])+1 < pathMax {
			l += len(names[k]) + 1
			k++
		}
		next, err := unix.Openat(dir, strings.Join(names[:k], "/"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(dir)
		if err != nil {
			return -1, err
		}
		dir, names = next, names[k:]
	}
	fd, err := unix.Openat(dir, names[0], flags, 0)
	unix.Close(dir)
	return fd, err
}

// hostFile is a regular file of a dir: source, opened when a writer reads
// it: never through a symlink that took its place, and refused if it is
// no longer a regular file.
type hostFile struct{ root, rel string }

// Open opens the file. Its errors name the source directory but not the
// file: the writer that reads it names the file (its path in the tree is
// its path in the source), and a path of kilobytes is printed once.
func (h hostFile) Open() (io.ReadCloser, error) {
	fd, err := openBeneath(h.root, h.rel, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("dir source %s: open: %w", h.root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		if err == nil {
			err = errors.New("no longer a regular file")
		}
		return nil, fmt.Errorf("dir source %s: %w", h.root, err)
	}
	return os.NewFile(uintptr(fd), h.rel), nil
}

var _ tree.Content = hostFile{}

// fdXattrs reads the extended attributes of an open file.
func fdXattrs(fd int) ([]tree.Xattr, error) {
	return readXattrs(
		func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) })
}

// pathXattrs reads the extended attributes of the file at p without
// following a symlink there. Entries are named through
// /proc/self/fd/DIRFD/NAME when /proc is mounted (there is no
// lgetxattrat), so the path stays short however deep the directory.
func pathXattrs(p string) ([]tree.Xattr, error) {
	return readXattrs(
		func(buf []byte) (int, error) { return unix.Llistxattr(p, buf) },
		func(name string, buf []byte) (int, error) { return unix.Lgetxattr(p, name, buf) })
}

// readXattrs lists and reads extended attributes. Filesystems without
// xattr support give none.
func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]tree.Xattr, error) {
	var names []byte
	for {
		size, err := list(nil)
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				return nil, nil
			}
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		if size == 0 {
			return nil, nil
		}
		names = make([]byte, size)
		size, err = list(names)
		if errors.Is(err, syscall.ERANGE) {
			continue // the list grew
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		names = names[:size]
		break
	}
	var n tree.Inode
	for _, name := range splitNul(names) {
		for {
			vsize, err := get(name, nil)
			if err != nil {
				return nil, fmt.Errorf("getxattr %s: %w", name, err)
			}
			val := make([]byte, vsize)
			vsize, err = get(name, val)
			if errors.Is(err, syscall.ERANGE) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("getxattr %s: %w", name, err)
			}
			n.SetXattr(name, val[:vsize])
			break
		}
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
