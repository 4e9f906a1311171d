package source

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/xzstream"
)

// Whiteout markers of the OCI image layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// MaxWindow is the largest history window (zstd window, xz dictionary)
// kiln decodes: what the zstd tool accepts without --memory, twice xz's
// largest preset (xz -9). The window is allocated before any data is
// read, so it comes from the untrusted header; gzip's (32 KiB) and
// bzip2's (900 kB blocks) are bounded by their formats.
const MaxWindow = 128 << 20

// Sentinel errors.
var (
	// ErrWindow means a compressed stream asks for a window or
	// dictionary larger than MaxWindow.
	ErrWindow = errors.New("source: compression window too large")
	// ErrTooLarge means a source holds more than its Budget allows.
	ErrTooLarge = errors.New("source: more data than the partition can hold")
	// ErrUnsupported means a tar entry carries something kiln cannot
	// store as it is (an unknown record, file flags, NFSv4 ACLs, ACLs with
	// user or group names); it is refused rather than dropped.
	ErrUnsupported = errors.New("source: tar entry cannot be stored as it is")
	// ErrConflict means members of one tar stream that cannot all be
	// applied as they are: GNU tar refuses one of a tarball's, the OCI
	// image-spec forbids a layer's (two members for one path, a member
	// below a file of the same layer), their result would depend on the
	// filesystem, or a hard link names nothing. It wraps ErrUnsupported:
	// the input is at fault.
	ErrConflict error = &wrapped{"source: members that cannot all be applied", ErrUnsupported}
)

// wrapped is a sentinel error that is also a kind of another.
type wrapped struct {
	msg    string
	parent error
}

func (e *wrapped) Error() string { return e.msg }
func (e *wrapped) Unwrap() error { return e.parent }

// Spool holds uncompressed tar streams on disk so that file content can
// be referenced (as tree.Section) instead of held in memory. Close removes
// the spool files; the trees built from it are unreadable afterwards.
type Spool struct {
	dir   string
	files []*os.File
}

// NewSpool creates a spool in a new temporary directory under dir ("" for
// the system default).
func NewSpool(dir string) (*Spool, error) {
	d, err := os.MkdirTemp(dir, "kiln-spool-")
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return &Spool{dir: d}, nil
}

// Close removes every spooled file.
func (s *Spool) Close() error {
	for _, f := range s.files {
		f.Close()
	}
	return os.RemoveAll(s.dir)
}

// Budget bounds the bytes one source may write into a spool: the
// uncompressed tar streams (every layer of an image) and the expanded
// content of sparse files. A decompression bomb stops at the first write
// past the bound, with ErrTooLarge, instead of filling the disk. The zero
// Budget, or a nil one, is unbounded.
type Budget struct {
	// Limit is the most bytes; zero or less means no bound.
	Limit int64
	// For says where the limit comes from, for the error (for example
	// "partition USR-A: 2 × its 64 MiB").
	For  string
	used int64
}

// Used returns the bytes taken so far.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used
}

func (b *Budget) take(n int64) error {
	if b == nil || b.Limit <= 0 {
		return nil
	}
	if n > b.Limit-b.used {
		return fmt.Errorf("%w: more than %d bytes uncompressed, the bound (%s)", ErrTooLarge, b.Limit, b.For)
	}
	b.used += n
	return nil
}

// budgetWriter writes to w what the budget allows, and nothing past it.
type budgetWriter struct {
	w io.Writer
	b *Budget
}

func (w budgetWriter) Write(p []byte) (int, error) {
	if err := w.b.take(int64(len(p))); err != nil {
		return 0, err
	}
	return w.w.Write(p)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Rules are how the members of a tar stream become a tree.
type Rules uint8

const (
	// GNUTar extracts a plain tarball as GNU tar 1.34 does as root (tar
	// -xpf --xattrs --xattrs-include='*' --acls), member after member;
	// a member GNU tar refuses, or whose result depends on the
	// filesystem GNU tar extracts to, is refused (see gnutar.go).
	GNUTar Rules = iota
	// OCILayer applies an OCI image layer over lower layers as the
	// image-spec defines it, whatever the order of the layer's members:
	// whiteouts and opaque markers hide what lower layers hold, never the
	// layer's own members; a layer with two members for one path, or
	// members that cannot all hold, is refused (see ocilayer.go).
	OCILayer
)

var rulesNames = map[Rules]string{GNUTar: "GNU tar", OCILayer: "OCI layer"}

// String returns the rules' name.
func (r Rules) String() string {
	if s, ok := rulesNames[r]; ok {
		return s
	}
	return fmt.Sprintf("rules(%d)", uint8(r))
}

// LayerOptions control how a tar stream is applied to a tree.
type LayerOptions struct {
	// Name identifies the stream in errors ("layer sha256:ab12…", "tar
	// rootfs.tar").
	Name string
	// Rules are how the members apply: GNUTar (the zero value) for a
	// plain tarball, whose .wh. names are files like any other; OCILayer
	// for an image layer.
	Rules Rules
	// Budget bounds what the stream may spool; the layers of one image
	// share one. Nil is unbounded.
	Budget *Budget
}

// layer is one ApplyTar call.
type layer struct {
	s      *Spool
	o      LayerOptions
	raw    *os.File // the tar stream as read
	sparse *os.File // expanded sparse files, created when one comes
	end    int64    // bytes in sparse
}

// ApplyTar reads a tar stream into t, as a layer over what t already holds,
// by o.Rules. The stream is copied into the spool as it is read, and
// regular files reference their bytes there (sparse files: their expanded
// content). Everything a member says is stored or the member is refused:
// owners, modes, nanosecond times, device numbers, xattrs (SCHILY.xattr.*,
// LIBARCHIVE.xattr.*), POSIX ACLs (SCHILY.acl.access and .default, as the
// kernel's xattrs); a record kiln does not know, file flags or NFSv4 ACLs
// are errors (ErrUnsupported). A member whose path escapes the root, or
// that would be written through a symlink, is an error naming the stream
// and the member; so is one the rules refuse (ErrConflict).
func (s *Spool) ApplyTar(t *tree.Tree, r io.Reader, o LayerOptions) error {
	if _, ok := rulesNames[o.Rules]; !ok {
		return fmt.Errorf("%s: %v", o.Name, o.Rules)
	}
	f, err := os.CreateTemp(s.dir, "layer-*.tar")
	if err != nil {
		return fmt.Errorf("%s: spool: %w", o.Name, err)
	}
	s.files = append(s.files, f)
	l := &layer{s: s, o: o, raw: f}
	cr := &countingReader{r: io.TeeReader(r, budgetWriter{f, o.Budget})}
	if o.Rules == OCILayer {
		oci := newOCILayer(t)
		if err := l.read(cr, oci.add); err != nil {
			return err
		}
		if err := oci.apply(); err != nil {
			return l.fail(err)
		}
	} else {
		g := newGNUTar(t)
		if err := l.read(cr, g.apply); err != nil {
			return err
		}
	}
	// Drain the trailer (it counts against the budget too).
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return l.readErr(err)
	}
	return nil
}

// readErr wraps an error from reading the stream.
func (l *layer) readErr(err error) error {
	if errors.Is(err, ErrTooLarge) || errors.Is(err, ErrWindow) {
		return fmt.Errorf("%s: %w", l.o.Name, err)
	}
	return fmt.Errorf("%s: reading tar: %w", l.o.Name, err)
}

// memberError is an error about one member of the stream.
type memberError struct {
	m   *member
	err error
}

func (e *memberError) Error() string {
	return fmt.Sprintf("entry %q (member %d): %v", e.m.name, e.m.index, e.err)
}

func (e *memberError) Unwrap() error { return e.err }

// fail names the stream, and the member when err is about one.
func (l *layer) fail(err error) error {
	return fmt.Errorf("%s: %w", l.o.Name, err)
}

// memberKind is what a member asks for.
type memberKind uint8

const (
	memberInode    memberKind = iota + 1 // a file, directory, symlink, device or fifo
	memberLink                           // a hard link
	memberWhiteout                       // an OCI whiteout (.wh.NAME)
	memberOpaque                         // an OCI opaque marker (.wh..wh..opq)
)

// member is one member of a tar stream, read but not yet applied.
type member struct {
	index int    // position in the stream, from 1 (global headers aside)
	name  string // as the archive spells it
	path  string // cleaned, "" for the root
	kind  memberKind
	inode *tree.Inode // memberInode
	// link is a hard link's target; target the path a whiteout hides or
	// the directory an opaque marker empties. Both cleaned.
	link, target string
}

// what names the member's kind for messages ("a regular file").
func (m *member) what() string {
	switch m.kind {
	case memberLink:
		return "a hard link"
	case memberWhiteout:
		return "a whiteout"
	case memberOpaque:
		return "an opaque marker"
	}
	return typeName(m.inode.Type)
}

// isDir reports whether m is a directory.
func (m *member) isDir() bool { return m.kind == memberInode && m.inode.Type == tree.Dir }

// typeName names an inode type for messages ("a directory").
func typeName(t tree.Type) string {
	switch t {
	case tree.Regular:
		return "a regular file"
	case tree.Dir:
		return "a directory"
	case tree.CharDevice:
		return "a character device"
	case tree.BlockDevice:
		return "a block device"
	}
	return "a " + t.String()
}

// errorf is an error about m.
func (m *member) errorf(format string, args ...any) error {
	return &memberError{m, fmt.Errorf(format, args...)}
}

// read reads the stream's members and hands each to apply, in order.
// What a member carries is checked here; what it does to the tree is
// apply's.
func (l *layer) read(cr *countingReader, apply func(*member) error) error {
	tr := tar.NewReader(cr)
	for index := 1; ; index++ {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return l.readErr(err)
		}
		m := &member{index: index, name: h.Name}
		if h.Typeflag == tar.TypeXGlobalHeader {
			index--
			if err := globalHeader(h); err != nil {
				return l.fail(m.errorf("%w", err))
			}
			continue
		}
		if err := l.member(m, h, tr, cr); err != nil {
			return l.fail(m.errorf("%w", err))
		}
		if err := apply(m); err != nil {
			return l.fail(err)
		}
	}
}

// member fills m from its header (and, for a regular file, the content
// that follows it).
func (l *layer) member(m *member, h *tar.Header, tr *tar.Reader, cr *countingReader) error {
	names, err := tree.Clean(h.Name)
	if err != nil {
		return err
	}
	m.path = strings.Join(names, "/")
	if l.o.Rules == OCILayer {
		if ok, err := whiteout(m, names); ok || err != nil {
			return err
		}
	}
	if h.Typeflag == tar.TypeLink {
		target, err := tree.Clean(h.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target: %w", err)
		}
		m.kind, m.link = memberLink, strings.Join(target, "/")
		return nil
	}
	typ, ok := tarTypes[h.Typeflag]
	if !ok {
		return fmt.Errorf("%w: entry type %q", ErrUnsupported, h.Typeflag)
	}
	n, err := inodeFromHeader(h, typ)
	if err != nil {
		return err
	}
	switch typ {
	case tree.Regular:
		n.Size = h.Size
		sparse, err := isSparse(h)
		if err != nil {
			return err
		}
		switch {
		case sparse:
			// The stream holds the data runs, not the file: expand it.
			if n.Content, err = l.expand(tr, h.Size); err != nil {
				return err
			}
		case h.Size > 0:
			n.Content = tree.Section{R: l.raw, Offset: cr.n, Size: h.Size}
		}
	case tree.Symlink:
		n.Target = h.Linkname
	}
	m.kind, m.inode = memberInode, n
	return nil
}

// whiteout reads an OCI layer's whiteout names: .wh.NAME hides NAME,
// .wh..wh..opq the directory's children, whatever the member's type
// (umoci and containerd look at the name alone). Other .wh..wh. names
// (aufs' own) and .wh. in a directory's name are not in the layer format;
// they are refused, not taken for files.
func whiteout(m *member, names []string) (bool, error) {
	for i, name := range names {
		if !strings.HasPrefix(name, whiteoutPrefix) {
			continue
		}
		if i < len(names)-1 {
			return true, fmt.Errorf("%w: directory %q: a name beginning with %q hides a file, it cannot hold one", ErrUnsupported, name, whiteoutPrefix)
		}
		dir := strings.Join(names[:i], "/")
		switch {
		case name == whiteoutOpaque:
			m.kind, m.target = memberOpaque, dir
		case name == whiteoutPrefix:
			return true, fmt.Errorf("%w: a whiteout naming no file", ErrUnsupported)
		case strings.HasPrefix(name, whiteoutPrefix+whiteoutPrefix):
			return true, fmt.Errorf("%w: %q is aufs metadata, not part of an OCI layer", ErrUnsupported, name)
		case name == whiteoutPrefix+"." || name == whiteoutPrefix+"..":
			return true, fmt.Errorf("%w: a whiteout of %q", tree.ErrBadPath, strings.TrimPrefix(name, whiteoutPrefix))
		default:
			m.kind, m.target = memberWhiteout, path.Join(dir, strings.TrimPrefix(name, whiteoutPrefix))
		}
		return true, nil
	}
	return false, nil
}

// tarTypes maps the entry types kiln stores to inode types. GNU's old
// sparse type and the contiguous-file type are regular files.
var tarTypes = map[byte]tree.Type{
	tar.TypeReg:       tree.Regular,
	tar.TypeCont:      tree.Regular,
	tar.TypeGNUSparse: tree.Regular,
	tar.TypeDir:       tree.Dir,
	tar.TypeSymlink:   tree.Symlink,
	tar.TypeChar:      tree.CharDevice,
	tar.TypeBlock:     tree.BlockDevice,
	tar.TypeFifo:      tree.FIFO,
}

// isSparse reports whether archive/tar expands h's content from a sparse
// map (GNU's old sparse type, PAX sparse formats 0.0, 0.1 and 1.0): then
// the stream holds only the data runs. Sparse records of a version
// archive/tar does not expand are refused: their raw bytes are not the
// file.
func isSparse(h *tar.Header) (bool, error) {
	if h.Typeflag == tar.TypeGNUSparse {
		return true, nil
	}
	rec := h.PAXRecords
	major, minor := rec["GNU.sparse.major"], rec["GNU.sparse.minor"]
	switch {
	case major == "0" && (minor == "0" || minor == "1"), major == "1" && minor == "0":
		return true, nil
	case major != "" || minor != "":
		return false, fmt.Errorf("%w: GNU sparse format %s.%s", ErrUnsupported, major, minor)
	case rec["GNU.sparse.map"] != "":
		return true, nil
	}
	for k := range rec {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return false, fmt.Errorf("%w: PAX record %s without a sparse map", ErrUnsupported, k)
		}
	}
	return false, nil
}

// expand copies a sparse file's content (size bytes, its holes as zeros)
// from tr into the layer's sparse spool file, leaving all-zero blocks as
// holes there, and returns it as content.
func (l *layer) expand(tr *tar.Reader, size int64) (tree.Content, error) {
	if l.sparse == nil {
		f, err := os.CreateTemp(l.s.dir, "sparse-*.bin")
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		l.s.files = append(l.s.files, f)
		l.sparse = f
	}
	start := l.end
	buf := make([]byte, 1<<20)
	zero := make([]byte, 4096)
	var done int64
	for done < size {
		n, err := io.ReadFull(tr, buf[:min(int64(len(buf)), size-done)])
		if n > 0 {
			if berr := l.o.Budget.take(int64(n)); berr != nil {
				return nil, berr
			}
			for off := 0; off < n; off += len(zero) {
				blk := buf[off:min(off+len(zero), n)]
				if bytes.Equal(blk, zero[:len(blk)]) {
					continue
				}
				if _, werr := l.sparse.WriteAt(blk, start+done+int64(off)); werr != nil {
					return nil, fmt.Errorf("spool: %w", werr)
				}
			}
			done += int64(n)
		}
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, fmt.Errorf("sparse file ended after %d of %d bytes", done, size)
			}
			return nil, l.readErr(err)
		}
	}
	l.end = start + size
	if err := l.sparse.Truncate(l.end); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return tree.Section{R: l.sparse, Offset: start, Size: size}, nil
}

// globalHeader accepts a PAX global header that only comments (git
// archive writes the commit there); records that would apply to every
// later entry are refused, as archive/tar does not apply them.
func globalHeader(h *tar.Header) error {
	for _, k := range sortedKeys(h.PAXRecords) {
		if k != "comment" {
			return fmt.Errorf("%w: global PAX record %q (it would apply to every later entry)", ErrUnsupported, k)
		}
	}
	return nil
}

// checkParents checks the directories that lead to p in t: a missing one
// will be made, a symlink is refused (writing through it could land
// anywhere; kiln never follows one) and so is any other non-directory.
func checkParents(t *tree.Tree, p string) error {
	names := strings.Split(p, "/")
	n := t.Root
	for i, name := range names[:len(names)-1] {
		n = n.Child(name)
		switch {
		case n == nil:
			return nil
		case n.Type == tree.Symlink:
			return fmt.Errorf("%w: parent %q is a symlink (to %q)", tree.ErrBadPath, strings.Join(names[:i+1], "/"), n.Target)
		case n.Type != tree.Dir:
			return fmt.Errorf("%w: parent %q is %s: %w", ErrConflict, strings.Join(names[:i+1], "/"), typeName(n.Type), tree.ErrNotDir)
		}
	}
	return nil
}

// linkTarget returns the inode a hard link to p names: it must exist, be
// reached through directories only and not be a directory.
func linkTarget(t *tree.Tree, p string) (*tree.Inode, error) {
	if err := checkParents(t, p); err != nil {
		return nil, fmt.Errorf("hard link to %q: %w", p, err)
	}
	n, err := t.Lookup(p)
	if err != nil {
		return nil, fmt.Errorf("%w: hard link to %q, which does not exist", ErrConflict, p)
	}
	if n.Type == tree.Dir {
		return nil, fmt.Errorf("%w: hard link to the directory %q: %w", ErrConflict, p, tree.ErrIsDir)
	}
	return n, nil
}

// setRoot gives the root directory n's metadata; its children stay.
func setRoot(t *tree.Tree, n *tree.Inode) {
	r := t.Root
	r.Perm, r.UID, r.GID, r.Mtime, r.Xattrs = n.Perm, n.UID, n.GID, n.Mtime, n.Xattrs
}

// inodeFromHeader takes the metadata of a tar header for an inode of type
// typ: mode bits, owner, nanosecond mtime (PAX), device numbers, and the
// PAX records (see paxRecords).
func inodeFromHeader(h *tar.Header, typ tree.Type) (*tree.Inode, error) {
	for _, v := range []struct {
		name string
		v    int64
	}{{"uid", int64(h.Uid)}, {"gid", int64(h.Gid)}, {"device major", h.Devmajor}, {"device minor", h.Devminor}} {
		if v.v < 0 || v.v > math.MaxUint32 {
			return nil, fmt.Errorf("%w: %s %d outside 0 to %d", ErrUnsupported, v.name, v.v, uint32(math.MaxUint32))
		}
	}
	n := &tree.Inode{
		Type:  typ,
		Perm:  uint16(h.Mode & 0o7777),
		UID:   uint32(h.Uid),
		GID:   uint32(h.Gid),
		Mtime: h.ModTime,
	}
	if typ == tree.CharDevice || typ == tree.BlockDevice {
		n.Major, n.Minor = uint32(h.Devmajor), uint32(h.Devminor)
	}
	if n.Mtime.IsZero() {
		n.Mtime = time.Unix(0, 0)
	}
	if err := paxRecords(n, h.PAXRecords); err != nil {
		return nil, err
	}
	return n, nil
}

// paxInformational are the PAX records archive/tar applies itself or that
// describe nothing a filesystem image stores (access, change and creation
// times: the image's are its mtime; star's device and inode of the
// source; Windows symlink kinds; character sets).
var paxInformational = map[string]bool{
	"path": true, "linkpath": true, "size": true, "uid": true, "gid": true, "uname": true, "gname": true,
	"mtime": true, "atime": true, "ctime": true, "comment": true, "charset": true, "hdrcharset": true,
	"SCHILY.dev": true, "SCHILY.ino": true, "SCHILY.nlink": true,
	"LIBARCHIVE.creationtime": true, "LIBARCHIVE.symlinktype": true,
}

// paxRecords applies an entry's PAX records to n: xattrs in GNU tar's and
// star's form (SCHILY.xattr.NAME=value) and libarchive's
// (LIBARCHIVE.xattr.URL-ENCODED-NAME=base64), which must agree when both
// are present; POSIX ACLs (SCHILY.acl.access, SCHILY.acl.default);
// SELinux labels (RHT.security.selinux) when the same label is also
// SCHILY.xattr.security.selinux; empty file flags. Any other record that
// is not informational is refused: dropping it would make the image
// differ from the archive without an error.
func paxRecords(n *tree.Inode, rec map[string]string) error {
	xattrs := map[string][]byte{}
	for _, k := range sortedKeys(rec) {
		v := rec[k]
		switch {
		case paxInformational[k] || strings.HasPrefix(k, "GNU.sparse."):
		case strings.HasPrefix(k, "SCHILY.xattr."):
			name := strings.TrimPrefix(k, "SCHILY.xattr.")
			if old, ok := xattrs[name]; ok && string(old) != v {
				return fmt.Errorf("%w: xattr %q: SCHILY and LIBARCHIVE records differ", ErrUnsupported, name)
			}
			xattrs[name] = []byte(v)
		case strings.HasPrefix(k, "LIBARCHIVE.xattr."):
			name, value, err := libarchiveXattr(strings.TrimPrefix(k, "LIBARCHIVE.xattr."), v)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", ErrUnsupported, k, err)
			}
			if old, ok := xattrs[name]; ok && !bytes.Equal(old, value) {
				return fmt.Errorf("%w: xattr %q: SCHILY and LIBARCHIVE records differ", ErrUnsupported, name)
			}
			xattrs[name] = value
		case k == "SCHILY.acl.access" || k == "SCHILY.acl.default":
		case k == "RHT.security.selinux":
			if _, ok := rec["SCHILY.xattr.security.selinux"]; !ok {
				return fmt.Errorf("%w: %s (tar --selinux) without SCHILY.xattr.security.selinux: the label's exact bytes are unknown (use tar --xattrs)", ErrUnsupported, k)
			}
		case k == "SCHILY.fflags":
			if v != "" {
				return fmt.Errorf("%w: file flags %s=%q (chattr) cannot be stored", ErrUnsupported, k, v)
			}
		default:
			return fmt.Errorf("%w: PAX record %q is not understood (%q)", ErrUnsupported, k, v)
		}
	}
	for _, name := range sortedKeys(xattrs) {
		n.SetXattr(name, xattrs[name])
	}
	// ACLs last: they must agree with the mode, and a SCHILY.xattr form of
	// the same ACL with them.
	for _, a := range []struct{ key, xattr string }{{"SCHILY.acl.access", tree.ACLAccess}, {"SCHILY.acl.default", tree.ACLDefault}} {
		text, ok := rec[a.key]
		if !ok {
			continue
		}
		value, err := aclFromText(text, a.xattr == tree.ACLDefault, n)
		if err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrUnsupported, a.key, text, err)
		}
		if old, ok := xattrs[a.xattr]; ok && !bytes.Equal(old, value) {
			return fmt.Errorf("%w: %s and SCHILY.xattr.%s differ", ErrUnsupported, a.key, a.xattr)
		}
		if value != nil {
			n.SetXattr(a.xattr, value)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// FromTar reads a plain tarball (optionally gzip-, bzip2-, zstd- or
// xz-compressed) into a new tree whose root has the given mtime unless
// the tarball sets it. b bounds what it may spool (nil: unbounded).
func (s *Spool) FromTar(p string, mtime time.Time, b *Budget) (*tree.Tree, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("tar source: %w", err)
	}
	defer f.Close()
	r, err := Decompress(f)
	if err != nil {
		return nil, fmt.Errorf("tar source %s: %w", p, err)
	}
	defer r.Close()
	t := tree.New(mtime)
	if err := s.ApplyTar(t, r, LayerOptions{Name: "tar " + p, Budget: b}); err != nil {
		return nil, err
	}
	return t, nil
}

// Decompress detects gzip, bzip2, xz and zstd by their magic bytes and
// returns a reader of the uncompressed stream (the input itself when it is
// not compressed). A zstd window or xz dictionary larger than MaxWindow is
// refused with ErrWindow before it is allocated.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(6)
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(MaxWindow),
			zstd.WithDecoderMaxMemory(MaxWindow))
		if err != nil {
			return nil, err
		}
		return zstdReader{d}, nil
	case bytes.HasPrefix(magic, xzstream.Magic):
		x, err := xzstream.NewReader(br, MaxWindow)
		if err != nil {
			return nil, xzWindow(err)
		}
		return io.NopCloser(xzReader{x}), nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return io.NopCloser(bzip2.NewReader(br)), nil
	}
	return io.NopCloser(br), nil
}

// xzReader reports a dictionary over the limit as ErrWindow.
type xzReader struct{ r io.Reader }

func (x xzReader) Read(p []byte) (int, error) {
	n, err := x.r.Read(p)
	return n, xzWindow(err)
}

// xzWindow wraps xzstream's dictionary error in ErrWindow.
func xzWindow(err error) error {
	if errors.Is(err, xzstream.ErrDictionary) {
		return fmt.Errorf("%w: %w", ErrWindow, err)
	}
	return err
}

// mib formats a size in MiB when it is a whole number of them.
func mib(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// zstdReader reports a window over the limit as ErrWindow.
type zstdReader struct{ d *zstd.Decoder }

func (z zstdReader) Read(p []byte) (int, error) {
	n, err := z.d.Read(p)
	if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		err = fmt.Errorf("%w: zstd frame wants a window over %s: %w", ErrWindow, mib(MaxWindow), err)
	}
	return n, err
}

func (z zstdReader) Close() error {
	z.d.Close()
	return nil
}
