package source

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kiln-os/kiln/build/tree"
)

// Whiteout markers of the OCI image layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
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
}

// ApplyTar reads a tar stream into t, as a layer over what t already holds.
// The stream is copied into the spool as it is read, and regular files
// reference their bytes there. An entry whose path escapes the root, or
// that would be written through a symlink, is an error naming the stream
// and the entry.
func (s *Spool) ApplyTar(t *tree.Tree, r io.Reader, o LayerOptions) error {
	f, err := os.CreateTemp(s.dir, "layer-*.tar")
	if err != nil {
		return fmt.Errorf("%s: spool: %w", o.Name, err)
	}
	s.files = append(s.files, f)
	cr := &countingReader{r: io.TeeReader(r, f)}
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
			return fmt.Errorf("%s: reading tar: %w", o.Name, err)
		}
		fail := func(err error) error {
			return fmt.Errorf("%s: entry %q: %w", o.Name, h.Name, err)
		}
		names, err := tree.Clean(h.Name)
		if err != nil {
			return fail(err)
		}
		p := strings.Join(names, "/")
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		if o.Whiteouts && strings.HasPrefix(base, whiteoutPrefix) {
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
				meta := inodeFromHeader(h)
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
		n := inodeFromHeader(h)
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			n.Type = tree.Regular
			n.Size = h.Size
			if h.Size > 0 {
				n.Content = tree.Section{R: f, Offset: cr.n, Size: h.Size}
			}
		case tar.TypeDir:
			n.Type = tree.Dir
		case tar.TypeSymlink:
			n.Type, n.Target = tree.Symlink, h.Linkname
		case tar.TypeChar:
			n.Type = tree.CharDevice
		case tar.TypeBlock:
			n.Type = tree.BlockDevice
		case tar.TypeFifo:
			n.Type = tree.FIFO
		default:
			return fail(fmt.Errorf("unsupported tar entry type %q", h.Typeflag))
		}
		// Put replaces what lower layers had at that path, except that a
		// directory over a directory keeps its children.
		if err := t.Put(p, n); err != nil {
			return fail(err)
		}
	}
	// Drain the trailer so the whole stream is spooled.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return fmt.Errorf("%s: reading tar: %w", o.Name, err)
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

// inodeFromHeader takes the metadata of a tar header: mode bits, owner,
// nanosecond mtime (PAX), device numbers, and xattrs (PAX SCHILY.xattr.*).
func inodeFromHeader(h *tar.Header) *tree.Inode {
	n := &tree.Inode{
		Perm:  uint16(h.Mode & 0o7777),
		UID:   uint32(h.Uid),
		GID:   uint32(h.Gid),
		Mtime: h.ModTime,
		Major: uint32(h.Devmajor),
		Minor: uint32(h.Devminor),
	}
	if n.Mtime.IsZero() {
		n.Mtime = time.Unix(0, 0)
	}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			n.SetXattr(name, []byte(v))
		}
	}
	return n
}

// FromTar reads a plain tarball (optionally gzip-, zstd- or
// xz-compressed) into a new tree.
func (s *Spool) FromTar(p string, mtime time.Time) (*tree.Tree, error) {
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
	if err := s.ApplyTar(t, r, LayerOptions{Name: "tar " + p}); err != nil {
		return nil, err
	}
	return t, nil
}

// Decompress detects gzip, bzip2, xz and zstd by their magic bytes and
// returns a reader of the uncompressed stream (the input itself when it is
// not compressed).
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
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		x, err := xz.NewReader(br)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(x), nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return io.NopCloser(bzip2.NewReader(br)), nil
	}
	return io.NopCloser(br), nil
}
