package boot

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// Archive is an initramfs in the kernel's "newc" cpio format, built in
// memory from entries added in any order and written sorted, with fixed
// inode numbers and times: the same entries give the same bytes.
type Archive struct {
	entries map[string]cpioEntry
	mtime   int64
}

type cpioEntry struct {
	mode fs.FileMode
	data []byte // file content, or a symlink target
}

// NewArchive returns an empty archive whose entries carry mtime.
func NewArchive(mtime int64) *Archive {
	return &Archive{entries: map[string]cpioEntry{}, mtime: mtime}
}

// File adds a regular file with permission bits perm; its parent
// directories are added as needed.
func (a *Archive) File(name string, perm fs.FileMode, data []byte) error {
	return a.add(name, cpioEntry{mode: perm & fs.ModePerm, data: data})
}

// Dir adds a directory.
func (a *Archive) Dir(name string) error {
	return a.add(name, cpioEntry{mode: fs.ModeDir | 0o755})
}

// Symlink adds a symbolic link to target.
func (a *Archive) Symlink(name, target string) error {
	return a.add(name, cpioEntry{mode: fs.ModeSymlink | 0o777, data: []byte(target)})
}

func (a *Archive) add(name string, e cpioEntry) error {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" || name == "." {
		return fmt.Errorf("boot: cpio: empty name")
	}
	if old, ok := a.entries[name]; ok && !(old.mode.IsDir() && e.mode.IsDir()) {
		return fmt.Errorf("boot: cpio: %s added twice", name)
	}
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if old, ok := a.entries[dir]; ok {
			if !old.mode.IsDir() {
				return fmt.Errorf("boot: cpio: %s is not a directory", dir)
			}
			continue
		}
		a.entries[dir] = cpioEntry{mode: fs.ModeDir | 0o755}
	}
	a.entries[name] = e
	return nil
}

// WriteTo writes the archive, names sorted (so directories come before
// what they hold), ending with the TRAILER!!! entry.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	cw := &countingWriter{w: w}
	for i, n := range names {
		e := a.entries[n]
		mode := uint32(e.mode.Perm())
		nlink := 1
		switch {
		case e.mode.IsDir():
			mode |= 0o040000
			nlink = 2
		case e.mode&fs.ModeSymlink != 0:
			mode |= 0o120000
		default:
			mode |= 0o100000
		}
		writeCpioHeader(cw, uint32(i+1), mode, uint32(nlink), a.mtime, n, len(e.data))
		cw.Write(e.data)
		cw.pad(4)
	}
	writeCpioHeader(cw, 0, 0, 1, 0, "TRAILER!!!", 0)
	cw.pad(512)
	return cw.n, cw.err
}

// writeCpioHeader writes a newc header and the name, padded to 4 bytes.
func writeCpioHeader(w *countingWriter, ino, mode, nlink uint32, mtime int64, name string, size int) {
	fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, uint32(mtime), size, 0, 0, 0, 0, len(name)+1, 0)
	io.WriteString(w, name)
	w.Write([]byte{0})
	w.pad(4)
}

type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

func (c *countingWriter) pad(align int64) {
	if r := c.n % align; r != 0 {
		c.Write(make([]byte, align-r))
	}
}
