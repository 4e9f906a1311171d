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
)

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

// LayerOptions control how a tar stream is applied to a tree.
type LayerOptions struct {
	// Name identifies the stream in errors ("layer sha256:ab12…", "tar
	// rootfs.tar").
	Name string
	// Whiteouts applies OCI whiteout files (.wh.NAME deletes NAME from
	// lower layers, .wh..wh..opq empties a directory of lower layers'
	// entries). Plain tarballs keep such names as files.
	Whiteouts bool
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

// ApplyTar reads a tar stream into t, as a layer over what t already holds.
// The stream is copied into the spool as it is read, and regular files
// reference their bytes there (sparse files: their expanded content).
// Everything an entry says is stored or the entry is refused: owners,
// modes, nanosecond times, device numbers, xattrs (SCHILY.xattr.*,
// LIBARCHIVE.xattr.*), POSIX ACLs (SCHILY.acl.access and .default, as the
// kernel's xattrs); a record kiln does not know, file flags or NFSv4 ACLs
// are errors (ErrUnsupported). An entry whose path escapes the root, or
// that would be written through a symlink, is an error naming the stream
// and the entry.
func (s *Spool) ApplyTar(t *tree.Tree, r io.Reader, o LayerOptions) error {
	f, err := os.CreateTemp(s.dir, "layer-*.tar")
	if err != nil {
		return fmt.Errorf("%s: spool: %w", o.Name, err)
	}
	s.files = append(s.files, f)
	l := &layer{s: s, o: o, raw: f}
	cr := &countingReader{r: io.TeeReader(r, budgetWriter{f, o.Budget})}
	if err := l.apply(t, cr); err != nil {
		return err
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

func (l *layer) apply(t *tree.Tree, cr *countingReader) error {
	tr := tar.NewReader(cr)
	// Paths this layer created: an opaque marker hides only lower layers.
	added := map[string]bool{}
	var opaque []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return l.readErr(err)
		}
		fail := func(err error) error {
			return fmt.Errorf("%s: entry %q: %w", l.o.Name, h.Name, err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			if err := globalHeader(h); err != nil {
				return fail(err)
			}
			continue
		}
		names, err := tree.Clean(h.Name)
		if err != nil {
			return fail(err)
		}
		p := strings.Join(names, "/")
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		if l.o.Whiteouts && strings.HasPrefix(base, whiteoutPrefix) {
			if base == whiteoutOpaque {
				opaque = append(opaque, dir)
				continue
			}
			target := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
			if err := checkNoSymlinkParent(t, target); err != nil {
				return fail(err)
			}
			if err := t.Remove(target); err != nil {
				return fail(err)
			}
			continue
		}
		if len(names) == 0 {
			if h.Typeflag == tar.TypeDir {
				meta, err := inodeFromHeader(h, tree.Dir)
				if err != nil {
					return fail(err)
				}
				t.Root.Perm, t.Root.UID, t.Root.GID, t.Root.Mtime, t.Root.Xattrs = meta.Perm, meta.UID, meta.GID, meta.Mtime, meta.Xattrs
			}
			continue
		}
		if err := checkNoSymlinkParent(t, p); err != nil {
			return fail(err)
		}
		added[p] = true
		if h.Typeflag == tar.TypeLink {
			target, err := tree.Clean(h.Linkname)
			if err != nil {
				return fail(fmt.Errorf("hard link target: %w", err))
			}
			if err := t.Link(p, strings.Join(target, "/")); err != nil {
				return fail(err)
			}
			continue
		}
		typ, ok := tarTypes[h.Typeflag]
		if !ok {
			return fail(fmt.Errorf("%w: entry type %q", ErrUnsupported, h.Typeflag))
		}
		n, err := inodeFromHeader(h, typ)
		if err != nil {
			return fail(err)
		}
		switch typ {
		case tree.Regular:
			n.Size = h.Size
			sparse, err := isSparse(h)
			if err != nil {
				return fail(err)
			}
			switch {
			case sparse:
				// The stream holds the data runs, not the file: expand it.
				if n.Content, err = l.expand(tr, h.Size); err != nil {
					return fail(err)
				}
			case h.Size > 0:
				n.Content = tree.Section{R: l.raw, Offset: cr.n, Size: h.Size}
			}
		case tree.Symlink:
			n.Target = h.Linkname
		}
		// Put replaces what lower layers had at that path, except that a
		// directory over a directory keeps its children.
		if err := t.Put(p, n); err != nil {
			return fail(err)
		}
	}
	for _, dir := range opaque {
		d, err := t.Lookup(dir)
		if err != nil || d.Type != tree.Dir {
			continue
		}
		kept := d.Entries[:0]
		for _, e := range d.Entries {
			if added[path.Join(dir, e.Name)] {
				kept = append(kept, e)
			}
		}
		d.Entries = kept
	}
	return nil
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

// checkNoSymlinkParent refuses a path whose parent directories include a
// symlink in the tree: writing through it could land outside the root.
func checkNoSymlinkParent(t *tree.Tree, p string) error {
	names, err := tree.Clean(p)
	if err != nil {
		return err
	}
	n := t.Root
	for i, name := range names[:max(len(names)-1, 0)] {
		n = n.Child(name)
		if n == nil {
			return nil
		}
		if n.Type == tree.Symlink {
			return fmt.Errorf("%w: parent %q is a symlink (to %q)", tree.ErrBadPath, strings.Join(names[:i+1], "/"), n.Target)
		}
		if n.Type != tree.Dir {
			return fmt.Errorf("%w: parent %q is not a directory", tree.ErrNotDir, strings.Join(names[:i+1], "/"))
		}
	}
	return nil
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
