// Package tree is the in-memory model of a file tree that sources produce
// (OCI images, directories, tarballs, inline files) and filesystem writers
// consume. Nothing is extracted to the host: ownership, modes, times, xattrs,
// device numbers and hard links live here, so they survive without root.
//
// A directory entry (Entry) names an Inode; two entries that share one
// *Inode are hard links. Directory entries are kept sorted by name, so every
// walk is deterministic.
package tree

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// Type is the kind of an inode.
type Type uint8

// Inode types.
const (
	Regular Type = iota + 1
	Dir
	Symlink
	CharDevice
	BlockDevice
	FIFO
	Socket
)

var typeNames = map[Type]string{
	Regular:     "regular",
	Dir:         "dir",
	Symlink:     "symlink",
	CharDevice:  "char-device",
	BlockDevice: "block-device",
	FIFO:        "fifo",
	Socket:      "socket",
}

// String returns the type's name.
func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Sentinel errors.
var (
	ErrNotExist    = errors.New("tree: no such file or directory")
	ErrNotDir      = errors.New("tree: not a directory")
	ErrBadPath     = errors.New("tree: path escapes the root or is malformed")
	ErrExist       = errors.New("tree: file exists")
	ErrIsDir       = errors.New("tree: is a directory")
	ErrNameTooLong = errors.New("tree: name longer than 255 bytes")
)

// MaxNameLen is the longest name a directory entry may have, in bytes.
const MaxNameLen = 255

// Limits of Linux itself, whatever the filesystem: a writer that stored
// more could not have it read back as it is (see CheckLinux).
const (
	// MaxSymlinkLen is the longest symlink target readlink returns whole
	// (PATH_MAX - 1).
	MaxSymlinkLen = 4095
	// MaxXattrNameLen is the longest extended attribute name, namespace
	// included, that getxattr accepts (XATTR_NAME_MAX).
	MaxXattrNameLen = 255
	// MaxXattrValueLen is the largest value getxattr returns
	// (XATTR_SIZE_MAX).
	MaxXattrValueLen = 65536
	// MaxXattrListLen is the most bytes listxattr returns for one inode:
	// every name with its NUL (XATTR_LIST_MAX).
	MaxXattrListLen = 65536
	// MaxDevMajor and MaxDevMinor bound a device number (the kernel's
	// dev_t: 12 bits of major, 20 of minor).
	MaxDevMajor = 1<<12 - 1
	MaxDevMinor = 1<<20 - 1
	// NoID is (uid_t)-1: Linux reads it as "no owner" and shows 65534.
	NoID = 1<<32 - 1
)

// Extended attribute names of POSIX ACLs, whose values are in the
// kernel's xattr form: a little-endian u32 version 2, then 8-byte entries
// {u16 tag, u16 perm, u32 id} (see ACLEntry).
const (
	ACLAccess  = "system.posix_acl_access"
	ACLDefault = "system.posix_acl_default"
)

// ErrLinux means a value cannot be stored so that Linux reads it back as
// it is, on any filesystem.
var ErrLinux = errors.New("tree: Linux cannot read this back as it is")

// ACL entry tags (e_tag).
const (
	ACLUserObj  = 0x01
	ACLUser     = 0x02
	ACLGroupObj = 0x04
	ACLGroup    = 0x08
	ACLMask     = 0x10
	ACLOther    = 0x20
)

// ACLEntry is one entry of a POSIX ACL. ID is NoID for the entries that
// name no user or group.
type ACLEntry struct {
	Tag  uint16
	Perm uint16 // 4 read, 2 write, 1 execute
	ID   uint32
}

// EncodeACL returns the kernel's xattr form of an ACL.
func EncodeACL(entries []ACLEntry) []byte {
	b := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+8*len(entries)), 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.Tag)
		b = binary.LittleEndian.AppendUint16(b, e.Perm)
		b = binary.LittleEndian.AppendUint32(b, e.ID)
	}
	return b
}

// DecodeACL parses the kernel's xattr form of an ACL and checks it as the
// kernel does (posix_acl_valid): one owner, owning group and other entry,
// named users then named groups in between, a mask exactly when there is
// a named entry, permissions within rwx; and no name twice.
func DecodeACL(v []byte) ([]ACLEntry, error) {
	le := binary.LittleEndian
	if len(v) < 4 || (len(v)-4)%8 != 0 || le.Uint32(v) != 2 {
		return nil, errors.New("not a version 2 POSIX ACL")
	}
	var out []ACLEntry
	state, named := ACLUserObj, false
	ids := map[[2]uint32]bool{}
	for e := v[4:]; len(e) > 0; e = e[8:] {
		a := ACLEntry{Tag: le.Uint16(e), Perm: le.Uint16(e[2:]), ID: le.Uint32(e[4:])}
		if a.Perm&^7 != 0 {
			return nil, fmt.Errorf("ACL entry %d: permissions %#o beyond rwx", len(out), a.Perm)
		}
		bad := false
		switch a.Tag {
		case ACLUserObj:
			bad, state = state != ACLUserObj, ACLUser
		case ACLUser, ACLGroup:
			want := ACLUser
			if a.Tag == ACLGroup {
				want = ACLGroup
			}
			bad = state != want || a.ID == NoID || ids[[2]uint32{uint32(a.Tag), a.ID}]
			ids[[2]uint32{uint32(a.Tag), a.ID}] = true
			named = true
		case ACLGroupObj:
			bad, state = state != ACLUser, ACLGroup
		case ACLMask:
			bad, state = state != ACLGroup, ACLOther
		case ACLOther:
			bad = !(state == ACLOther || state == ACLGroup && !named)
			state = 0
		default:
			bad = true
		}
		if bad {
			return nil, fmt.Errorf("ACL entry %d (tag %#x, id %d) out of place, repeated or unknown", len(out), a.Tag, a.ID)
		}
		out = append(out, a)
	}
	if state != 0 {
		return nil, errors.New("ACL incomplete (owner, group, mask when needed, other)")
	}
	return out, nil
}

// CheckLinux reports the first value of n that no Linux filesystem gives
// back as it is: an owner of (uid_t)-1, a device number beyond dev_t, a
// symlink target that is empty, longer than MaxSymlinkLen or holds a NUL
// (readlink stops there), an extended attribute outside the namespaces
// Linux shows (user., trusted., security., the two POSIX ACLs), with a
// name or value over the limits, a user. attribute on an inode that is
// neither a regular file nor a directory (getxattr says ENODATA), a
// default ACL on a non-directory, an ACL the kernel would reject, or
// names listxattr cannot return at once. The error wraps ErrLinux and
// names the field; callers add the path.
func CheckLinux(n *Inode) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrLinux}, args...)...)
	}
	if n.UID == NoID || n.GID == NoID {
		return fail("owner %d:%d: %d is (uid_t)-1, which Linux reads as no owner", n.UID, n.GID, uint32(NoID))
	}
	switch n.Type {
	case CharDevice, BlockDevice:
		if n.Major > MaxDevMajor || n.Minor > MaxDevMinor {
			return fail("device number %d:%d beyond Linux's (major at most %d, minor at most %d)", n.Major, n.Minor, MaxDevMajor, MaxDevMinor)
		}
	case Symlink:
		switch {
		case n.Target == "":
			return fail("symlink target is empty")
		case len(n.Target) > MaxSymlinkLen:
			return fail("symlink target of %d bytes, readlink returns at most %d", len(n.Target), MaxSymlinkLen)
		case strings.IndexByte(n.Target, 0) >= 0:
			return fail("symlink target %q holds a NUL byte", n.Target)
		}
	}
	list := 0
	for _, x := range n.Xattrs {
		if err := checkXattr(n.Type, x); err != nil {
			return fail("xattr %q: %v", x.Name, err)
		}
		list += len(x.Name) + 1
	}
	if list > MaxXattrListLen {
		return fail("xattr names take %d bytes, listxattr returns at most %d", list, MaxXattrListLen)
	}
	return nil
}

func checkXattr(t Type, x Xattr) error {
	switch {
	case len(x.Name) > MaxXattrNameLen:
		return fmt.Errorf("name of %d bytes, the most is %d", len(x.Name), MaxXattrNameLen)
	case strings.IndexByte(x.Name, 0) >= 0:
		return errors.New("name holds a NUL byte")
	case len(x.Value) > MaxXattrValueLen:
		return fmt.Errorf("value of %d bytes, the most is %d", len(x.Value), MaxXattrValueLen)
	}
	switch x.Name {
	case ACLAccess, ACLDefault:
		if x.Name == ACLDefault && t != Dir {
			return fmt.Errorf("a default ACL on a %v (only directories have one)", t)
		}
		if _, err := DecodeACL(x.Value); err != nil {
			return err
		}
		return nil
	}
	for _, ns := range []string{"user.", "trusted.", "security."} {
		if suffix, ok := strings.CutPrefix(x.Name, ns); ok {
			if suffix == "" {
				return errors.New("empty name after the namespace")
			}
			if ns == "user." && t != Regular && t != Dir {
				return fmt.Errorf("user. attribute on a %v: Linux keeps those for files and directories only", t)
			}
			return nil
		}
	}
	return errors.New("namespace Linux does not show (want user., trusted., security. or a POSIX ACL)")
}

// Content is where a regular file's bytes come from. Open may be called
// more than once (a writer may read a file twice, or from several
// goroutines); each call returns an independent reader from byte 0.
type Content interface {
	Open() (io.ReadCloser, error)
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string // full name with namespace, e.g. "security.capability"
	Value []byte
}

// Inode is a file's metadata and content. Several entries may point at the
// same Inode (hard links); writers detect that by pointer identity.
type Inode struct {
	Type Type
	Perm uint16 // permission bits including setuid, setgid and sticky (07777)
	UID  uint32
	GID  uint32
	// Mtime is kept to the nanosecond. The zero Time means unset: writers
	// store their Options.Mtime (the build's SOURCE_DATE_EPOCH).
	Mtime time.Time
	// Xattrs are sorted by Name (see SetXattr).
	Xattrs []Xattr

	// Size is the length of a regular file's content in bytes.
	Size int64
	// Content supplies a regular file's bytes; nil means Size zero bytes.
	Content Content

	// Target is a symlink's target, stored verbatim (never followed).
	Target string

	// Major and Minor are a device node's numbers.
	Major, Minor uint32

	// Entries are a directory's children, sorted by name.
	Entries []Entry
}

// Entry is a name in a directory.
type Entry struct {
	Name  string
	Inode *Inode
}

// IsDir reports whether the inode is a directory.
func (n *Inode) IsDir() bool { return n.Type == Dir }

// Child returns the inode named name in directory n, or nil.
func (n *Inode) Child(name string) *Inode {
	i := sort.Search(len(n.Entries), func(i int) bool { return n.Entries[i].Name >= name })
	if i < len(n.Entries) && n.Entries[i].Name == name {
		return n.Entries[i].Inode
	}
	return nil
}

// setChild inserts or replaces the entry name in directory n.
func (n *Inode) setChild(name string, child *Inode) {
	i := sort.Search(len(n.Entries), func(i int) bool { return n.Entries[i].Name >= name })
	if i < len(n.Entries) && n.Entries[i].Name == name {
		n.Entries[i].Inode = child
		return
	}
	n.Entries = append(n.Entries, Entry{})
	copy(n.Entries[i+1:], n.Entries[i:])
	n.Entries[i] = Entry{Name: name, Inode: child}
}

// removeChild deletes the entry name from directory n; it reports whether
// the entry existed.
func (n *Inode) removeChild(name string) bool {
	i := sort.Search(len(n.Entries), func(i int) bool { return n.Entries[i].Name >= name })
	if i < len(n.Entries) && n.Entries[i].Name == name {
		n.Entries = append(n.Entries[:i], n.Entries[i+1:]...)
		return true
	}
	return false
}

// SetXattr sets an extended attribute, keeping Xattrs sorted by name.
func (n *Inode) SetXattr(name string, value []byte) {
	i := sort.Search(len(n.Xattrs), func(i int) bool { return n.Xattrs[i].Name >= name })
	if i < len(n.Xattrs) && n.Xattrs[i].Name == name {
		n.Xattrs[i].Value = value
		return
	}
	n.Xattrs = append(n.Xattrs, Xattr{})
	copy(n.Xattrs[i+1:], n.Xattrs[i:])
	n.Xattrs[i] = Xattr{Name: name, Value: value}
}

// Tree is a file tree with a root directory.
type Tree struct {
	Root *Inode
}

// New returns a tree holding an empty root directory (mode 0755, owned by
// 0:0) with the given modification time.
func New(mtime time.Time) *Tree {
	return &Tree{Root: &Inode{Type: Dir, Perm: 0o755, Mtime: mtime}}
}

// Clean turns p into the list of its names, relative to the root. A leading
// "/" or "./" is accepted; ".." anywhere, empty names inside the path, NUL
// bytes and names over MaxNameLen are rejected. The root itself is an empty
// list.
func Clean(p string) ([]string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return nil, fmt.Errorf("%w: %q", ErrBadPath, p)
	}
	var names []string
	for _, name := range strings.Split(p, "/") {
		switch name {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("%w: %q", ErrBadPath, p)
		}
		if len(name) > MaxNameLen {
			return nil, fmt.Errorf("%w: %q", ErrNameTooLong, p)
		}
		names = append(names, name)
	}
	return names, nil
}

// Lookup returns the inode at path p without following symlinks.
func (t *Tree) Lookup(p string) (*Inode, error) {
	names, err := Clean(p)
	if err != nil {
		return nil, err
	}
	n := t.Root
	for i, name := range names {
		if n.Type != Dir {
			return nil, fmt.Errorf("%s: %w", path.Join(names[:i]...), ErrNotDir)
		}
		n = n.Child(name)
		if n == nil {
			return nil, fmt.Errorf("%s: %w", p, ErrNotExist)
		}
	}
	return n, nil
}

// parent returns the directory that holds the last name of p, creating
// missing parents as directories with the given template's owner, mode 0755
// and mtime when mkdir is true.
func (t *Tree) parent(names []string, mkdir bool, mtime time.Time) (*Inode, error) {
	n := t.Root
	for i, name := range names[:len(names)-1] {
		c := n.Child(name)
		if c == nil {
			if !mkdir {
				return nil, fmt.Errorf("%s: %w", path.Join(names[:i+1]...), ErrNotExist)
			}
			c = &Inode{Type: Dir, Perm: 0o755, Mtime: mtime}
			n.setChild(name, c)
		}
		if c.Type != Dir {
			return nil, fmt.Errorf("%s: %w", path.Join(names[:i+1]...), ErrNotDir)
		}
		n = c
	}
	return n, nil
}

// Put places inode at path p, creating missing parent directories (mode
// 0755, root-owned, with the inode's mtime). An existing entry at p is
// replaced, except that a directory put over a directory keeps the old
// directory's children (as a tar or OCI layer does).
func (t *Tree) Put(p string, inode *Inode) error {
	names, err := Clean(p)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		if inode.Type != Dir {
			return fmt.Errorf("/: %w", ErrIsDir)
		}
		inode.Entries = mergeEntries(t.Root.Entries, inode.Entries)
		t.Root = inode
		return nil
	}
	dir, err := t.parent(names, true, inode.Mtime)
	if err != nil {
		return err
	}
	name := names[len(names)-1]
	if old := dir.Child(name); old != nil && old.Type == Dir && inode.Type == Dir {
		inode.Entries = mergeEntries(old.Entries, inode.Entries)
	}
	dir.setChild(name, inode)
	return nil
}

func mergeEntries(old, add []Entry) []Entry {
	if len(add) == 0 {
		return old
	}
	d := &Inode{Type: Dir, Entries: old}
	for _, e := range add {
		d.setChild(e.Name, e.Inode)
	}
	return d.Entries
}

// Link makes path p a hard link to the inode at target. Directories cannot
// be hard-linked.
func (t *Tree) Link(p, target string) error {
	n, err := t.Lookup(target)
	if err != nil {
		return fmt.Errorf("link %s: %w", p, err)
	}
	if n.Type == Dir {
		return fmt.Errorf("link %s to %s: %w", p, target, ErrIsDir)
	}
	names, err := Clean(p)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("link /: %w", ErrExist)
	}
	dir, err := t.parent(names, true, n.Mtime)
	if err != nil {
		return err
	}
	dir.setChild(names[len(names)-1], n)
	return nil
}

// Remove deletes path p and everything below it. Removing a path that does
// not exist is not an error (a whiteout may name a file a lower layer never
// had).
func (t *Tree) Remove(p string) error {
	names, err := Clean(p)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		t.Root.Entries = nil
		return nil
	}
	dir, err := t.parent(names, false, time.Time{})
	if errors.Is(err, ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	dir.removeChild(names[len(names)-1])
	return nil
}

// Sub returns a tree whose root is the directory at p. The inodes are
// shared, not copied.
func (t *Tree) Sub(p string) (*Tree, error) {
	n, err := t.Lookup(p)
	if err != nil {
		return nil, err
	}
	if n.Type != Dir {
		return nil, fmt.Errorf("%s: %w", p, ErrNotDir)
	}
	return &Tree{Root: n}, nil
}

// WalkFunc is called for every entry of a walk with its slash-separated
// path relative to the root ("" for the root itself, then "etc",
// "etc/passwd", ...).
type WalkFunc func(p string, n *Inode) error

// SkipDir returned by a WalkFunc on a directory skips its children.
var SkipDir = errors.New("tree: skip this directory")

// Walk calls fn for the root and then every entry in depth-first, name
// order. A hard-linked inode is visited once per name.
func (t *Tree) Walk(fn WalkFunc) error {
	err := walk("", t.Root, fn)
	if errors.Is(err, SkipDir) {
		return nil
	}
	return err
}

func walk(p string, n *Inode, fn WalkFunc) error {
	if err := fn(p, n); err != nil {
		return err
	}
	if n.Type != Dir {
		return nil
	}
	for _, e := range n.Entries {
		cp := e.Name
		if p != "" {
			cp = p + "/" + e.Name
		}
		err := walk(cp, e.Inode, fn)
		if errors.Is(err, SkipDir) && e.Inode.Type == Dir {
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// ClampTimes sets every mtime later than limit to limit and keeps earlier
// ones exactly: the reproducible-builds rule for SOURCE_DATE_EPOCH (as
// tar --clamp-mtime, mkosi and Debian apply it). Files a git checkout or
// an unpacked archive just wrote then give the same image as the files
// of any other checkout of the same commit. Hard links and subtrees share
// inodes, so they are clamped once for every tree holding them.
func (t *Tree) ClampTimes(limit time.Time) {
	_ = t.Walk(func(_ string, n *Inode) error {
		if n.Mtime.After(limit) {
			n.Mtime = limit
		}
		return nil
	})
}

// Stats summarises a tree.
type Stats struct {
	Inodes  int   // distinct inodes, hard links counted once
	Entries int   // names, the root included
	Bytes   int64 // content bytes of distinct regular inodes
}

// Stats counts the tree's inodes, names and content bytes.
func (t *Tree) Stats() Stats {
	var s Stats
	seen := map[*Inode]bool{}
	_ = t.Walk(func(_ string, n *Inode) error {
		s.Entries++
		if !seen[n] {
			seen[n] = true
			s.Inodes++
			if n.Type == Regular {
				s.Bytes += n.Size
			}
		}
		return nil
	})
	return s
}

// Links counts how many names point at each inode; a directory counts its
// own name only (writers add "." and ".." themselves).
func (t *Tree) Links() map[*Inode]int {
	m := map[*Inode]int{}
	_ = t.Walk(func(_ string, n *Inode) error {
		m[n]++
		return nil
	})
	return m
}

// Bytes is content held in memory (inline recipe files, small fixtures).
type Bytes []byte

// Open returns a reader over the bytes.
func (b Bytes) Open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b)), nil
}

// HostFile is content read from a file on the host when a writer needs it.
type HostFile string

// Open opens the host file.
func (f HostFile) Open() (io.ReadCloser, error) { return os.Open(string(f)) }

// Section is content that is a byte range of a larger io.ReaderAt (an
// uncompressed tar layer spooled to disk, for example).
type Section struct {
	R      io.ReaderAt
	Offset int64
	Size   int64
}

// Open returns a reader over the section.
func (s Section) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.NewSectionReader(s.R, s.Offset, s.Size)), nil
}

var (
	_ Content = Bytes(nil)
	_ Content = HostFile("")
	_ Content = Section{}
)
