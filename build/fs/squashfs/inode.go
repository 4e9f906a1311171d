package squashfs

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// Inode types (squashfs_fs.h). A directory entry always carries the basic
// type; the inode itself may be extended.
const (
	typeDir = iota + 1
	typeFile
	typeSymlink
	typeBlockDev
	typeCharDev
	typeFIFO
	typeSocket
	typeExtDir
	typeExtFile
	typeExtSymlink
	typeExtBlockDev
	typeExtCharDev
	typeExtFIFO
	typeExtSocket
)

// extended is the offset from a basic inode type to its extended type.
const extended = typeExtDir - typeDir

const (
	noXattr     = 0xffffffff // SQUASHFS_INVALID_XATTR
	maxDirCount = 256        // entries under one directory header
	maxIDs      = 1<<16 - 1  // the superblock's id count is 16 bits
)

var basicType = map[tree.Type]uint16{
	tree.Dir:         typeDir,
	tree.Regular:     typeFile,
	tree.Symlink:     typeSymlink,
	tree.BlockDevice: typeBlockDev,
	tree.CharDevice:  typeCharDev,
	tree.FIFO:        typeFIFO,
	tree.Socket:      typeSocket,
}

// xattrPrefixes are the namespaces squashfs stores, with their type ids.
var xattrPrefixes = []struct {
	prefix string
	id     uint16
}{
	{"user.", 0},
	{"trusted.", 1},
	{"security.", 2},
}

// metadata is everything after the data, built in memory.
type metadata struct {
	comp     compressor
	inodes   []byte // inode table
	dirs     []byte // directory table
	rootRef  uint64
	count    uint32   // inodes
	export   []uint64 // inode reference of inode number i+1
	ids      []uint32 // the id table
	xattrKV  []byte   // xattr key/value metadata blocks
	xattrIDs []byte   // xattr id entries, 16 bytes each
	nxattrs  uint32
}

// metaBuilder writes the inode and directory tables in one depth-first
// pass, in mksquashfs's order: a directory's entries in name order, each
// subdirectory's whole subtree before the subdirectory's own inode, a
// directory's listing just before its inode. Everything a listing or an
// inode refers to is therefore written before it.
type metaBuilder struct {
	p                    *planned
	mtime                time.Time // for inodes whose Mtime is zero (unset)
	bs                   int
	inodes, dirs, xattrs *metaWriter
	md                   *metadata
	idIndex              map[uint32]uint16
	xattrIndex           map[string]uint32
	refs                 map[*tree.Inode]uint64
	buf, kv              []byte
}

// buildMetadata writes the inode, directory, id, xattr and export tables.
func buildMetadata(p *planned, o Options) (*metadata, error) {
	c, err := newCompressor(o)
	if err != nil {
		return nil, err
	}
	b := &metaBuilder{
		p:          p,
		mtime:      o.Mtime,
		bs:         o.BlockSize,
		inodes:     newMetaWriter(c),
		dirs:       newMetaWriter(c),
		xattrs:     newMetaWriter(c),
		md:         &metadata{comp: c, count: p.count, export: make([]uint64, p.count)},
		idIndex:    map[uint32]uint16{},
		xattrIndex: map[string]uint32{},
		refs:       make(map[*tree.Inode]uint64, len(p.num)),
	}
	root, err := b.writeDir(p.root, "", p.count+1)
	if err != nil {
		return nil, err
	}
	b.md.rootRef = root
	b.md.inodes = b.inodes.bytes()
	b.md.dirs = b.dirs.bytes()
	b.md.xattrKV = b.xattrs.bytes()
	return b.md, nil
}

// dirEnt is one entry of a directory listing.
type dirEnt struct {
	name string
	ref  uint64 // inode reference
	num  uint32 // inode number
	typ  uint16 // basic inode type
}

// dirIndex is one entry of an extended directory's index: a directory
// header at byte index of the listing, in uncompressed metadata block
// block of the directory table, whose first entry is name.
type dirIndex struct {
	index uint32
	block int64
	name  string
}

// writeDir writes everything below directory d, then d's listing and inode,
// and returns d's inode reference. parent is the parent's inode number.
func (b *metaBuilder) writeDir(d *tree.Inode, path string, parent uint32) (uint64, error) {
	name := path
	if name == "" {
		name = "/"
	}
	ents := make([]dirEnt, 0, len(d.Entries))
	subdirs := uint32(0)
	for _, e := range d.Entries {
		n := e.Inode
		cp := e.Name
		if path != "" {
			cp = path + "/" + e.Name
		}
		ref, ok := b.refs[n]
		if !ok {
			var err error
			if n.Type == tree.Dir {
				ref, err = b.writeDir(n, cp, b.p.num[d])
			} else {
				ref, err = b.writeInode(n, cp)
			}
			if err != nil {
				return 0, err
			}
		}
		if n.Type == tree.Dir {
			subdirs++
		}
		ents = append(ents, dirEnt{name: e.Name, ref: ref, num: b.p.num[n], typ: basicType[n.Type]})
	}

	// The listing, then the inode that points at it.
	listRef := b.dirs.ref()
	size, index, err := b.writeListing(ents)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	xid, err := b.xattr(d)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	start, offset := listRef>>16, uint16(listRef&0xffff)
	if start > math.MaxUint32 {
		return 0, fmt.Errorf("%w: directory table over 4 GiB", ErrTooLarge)
	}
	if len(index) > math.MaxUint16 {
		return 0, fmt.Errorf("%w: %s: directory too large", ErrTooLarge, name)
	}
	ref := b.inodes.ref()
	nlink := 2 + subdirs
	le := binary.LittleEndian
	if xid == noXattr && len(index) == 0 && size <= math.MaxUint16 {
		buf, err := b.header(b.buf[:0], typeDir, d)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		buf = le.AppendUint32(buf, uint32(start))
		buf = le.AppendUint32(buf, nlink)
		buf = le.AppendUint16(buf, uint16(size))
		buf = le.AppendUint16(buf, offset)
		buf = le.AppendUint32(buf, parent)
		b.emit(d, ref, buf)
		return ref, nil
	}
	buf, err := b.header(b.buf[:0], typeExtDir, d)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	buf = le.AppendUint32(buf, nlink)
	buf = le.AppendUint32(buf, size)
	buf = le.AppendUint32(buf, uint32(start))
	buf = le.AppendUint32(buf, parent)
	buf = le.AppendUint16(buf, uint16(len(index)))
	buf = le.AppendUint16(buf, offset)
	buf = le.AppendUint32(buf, xid)
	for _, ix := range index {
		blk := b.dirs.blockStart(ix.block)
		if blk > math.MaxUint32 {
			return 0, fmt.Errorf("%w: directory table over 4 GiB", ErrTooLarge)
		}
		buf = le.AppendUint32(buf, ix.index)
		buf = le.AppendUint32(buf, uint32(blk))
		buf = le.AppendUint32(buf, uint32(len(ix.name)-1))
		buf = append(buf, ix.name...)
	}
	b.emit(d, ref, buf)
	return ref, nil
}

// writeListing appends a directory's listing to the directory table and
// returns the directory's file_size (listing bytes + 3, for "." and "..")
// and its index. A new header starts every 256 entries, when the inode
// metadata block changes, when the inode number is out of the 16-bit
// signed reach of the header's, and when the listing crosses into a new
// metadata block; every header that starts in a new metadata block gets an
// index entry, so a lookup reads at most about one block.
func (b *metaBuilder) writeListing(ents []dirEnt) (uint32, []dirIndex, error) {
	le := binary.LittleEndian
	start := b.dirs.pos()
	buf := b.kv[:0]
	var (
		index       []dirIndex
		hdrAt       = -1 // offset in buf of the open header
		count       int
		hdrBlk      uint64
		hdrBase     uint32
		hdrMeta     int64
		lastIndexed = start / metadataSize
	)
	for _, e := range ents {
		blk := e.ref >> 16
		at := start + int64(len(buf))
		delta := int64(e.num) - int64(hdrBase)
		if hdrAt < 0 || count == maxDirCount || blk != hdrBlk ||
			delta < math.MinInt16 || delta > math.MaxInt16 || at/metadataSize != hdrMeta {
			if blk > math.MaxUint32 {
				return 0, nil, fmt.Errorf("%w: inode table over 4 GiB", ErrTooLarge)
			}
			if hdrAt >= 0 {
				le.PutUint32(buf[hdrAt:], uint32(count-1))
			}
			if m := at / metadataSize; m != lastIndexed {
				index = append(index, dirIndex{index: uint32(len(buf)), block: m, name: e.name})
				lastIndexed = m
			}
			hdrAt, count, hdrBlk, hdrBase, hdrMeta = len(buf), 0, blk, e.num, at/metadataSize
			buf = le.AppendUint32(buf, 0)
			buf = le.AppendUint32(buf, uint32(blk))
			buf = le.AppendUint32(buf, e.num)
			delta = 0
		}
		buf = le.AppendUint16(buf, uint16(e.ref&0xffff))
		buf = le.AppendUint16(buf, uint16(int16(delta)))
		buf = le.AppendUint16(buf, e.typ)
		buf = le.AppendUint16(buf, uint16(len(e.name)-1))
		buf = append(buf, e.name...)
		count++
	}
	if hdrAt >= 0 {
		le.PutUint32(buf[hdrAt:], uint32(count-1))
	}
	b.dirs.write(buf)
	b.kv = buf
	if int64(len(buf))+3 > math.MaxUint32 {
		return 0, nil, fmt.Errorf("%w: directory listing over 4 GiB", ErrTooLarge)
	}
	return uint32(len(buf)) + 3, index, nil
}

// writeInode writes a non-directory inode and returns its reference.
func (b *metaBuilder) writeInode(n *tree.Inode, path string) (uint64, error) {
	le := binary.LittleEndian
	xid, err := b.xattr(n)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	nlink := b.p.links[n]
	typ := basicType[n.Type]
	ext := xid != noXattr
	var rec *fileRec
	if n.Type == tree.Regular {
		rec = b.p.recs[n]
		d := rec.data()
		if want := n.Size / int64(b.bs); int64(len(d.sizes)) != want {
			return 0, fmt.Errorf("squashfs: internal error: %s: %d blocks written, want %d", path, len(d.sizes), want)
		}
		ext = ext || nlink > 1 || d.start > math.MaxUint32 || n.Size > math.MaxUint32 || d.sparse > 0
	}
	if ext {
		typ += extended
	}
	buf, err := b.header(b.buf[:0], typ, n)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	switch n.Type {
	case tree.Regular:
		d := rec.data()
		if !ext {
			buf = le.AppendUint32(buf, uint32(d.start))
			buf = le.AppendUint32(buf, rec.frag)
			buf = le.AppendUint32(buf, rec.fragOff)
			buf = le.AppendUint32(buf, uint32(n.Size))
		} else {
			buf = le.AppendUint64(buf, uint64(d.start))
			buf = le.AppendUint64(buf, uint64(n.Size))
			buf = le.AppendUint64(buf, uint64(d.sparse))
			buf = le.AppendUint32(buf, nlink)
			buf = le.AppendUint32(buf, rec.frag)
			buf = le.AppendUint32(buf, rec.fragOff)
			buf = le.AppendUint32(buf, xid)
		}
		for _, w := range d.sizes {
			buf = le.AppendUint32(buf, w)
		}
	case tree.Symlink:
		buf = le.AppendUint32(buf, nlink)
		buf = le.AppendUint32(buf, uint32(len(n.Target)))
		buf = append(buf, n.Target...)
		if ext {
			buf = le.AppendUint32(buf, xid)
		}
	case tree.BlockDevice, tree.CharDevice:
		if n.Major >= 1<<12 || n.Minor >= 1<<20 {
			return 0, fmt.Errorf("%w: %s: %d:%d", ErrDevice, path, n.Major, n.Minor)
		}
		// Linux's new_encode_dev: minor bits 0-7, major bits 8-19,
		// minor bits 8-19 at bits 20-31.
		rdev := n.Minor&0xff | n.Major<<8 | (n.Minor&^0xff)<<12
		buf = le.AppendUint32(buf, nlink)
		buf = le.AppendUint32(buf, rdev)
		if ext {
			buf = le.AppendUint32(buf, xid)
		}
	case tree.FIFO, tree.Socket:
		buf = le.AppendUint32(buf, nlink)
		if ext {
			buf = le.AppendUint32(buf, xid)
		}
	default:
		return 0, fmt.Errorf("%w: %s: %v", ErrInodeType, path, n.Type)
	}
	ref := b.inodes.ref()
	b.emit(n, ref, buf)
	return ref, nil
}

// emit appends an inode's bytes to the inode table and records its
// reference.
func (b *metaBuilder) emit(n *tree.Inode, ref uint64, buf []byte) {
	b.inodes.write(buf)
	b.buf = buf
	b.refs[n] = ref
	b.md.export[b.p.num[n]-1] = ref
}

// header appends the fields every inode starts with.
func (b *metaBuilder) header(buf []byte, typ uint16, n *tree.Inode) ([]byte, error) {
	uid, err := b.id(n.UID)
	if err != nil {
		return nil, err
	}
	gid, err := b.id(n.GID)
	if err != nil {
		return nil, err
	}
	mtime := n.Mtime
	if mtime.IsZero() {
		mtime = b.mtime
	}
	var sec int64
	if !mtime.IsZero() {
		sec = mtime.Unix()
	}
	if sec < 0 || sec > math.MaxUint32 {
		return nil, fmt.Errorf("%w: %s", ErrTime, mtime.UTC().Format(time.RFC3339Nano))
	}
	le := binary.LittleEndian
	buf = le.AppendUint16(buf, typ)
	buf = le.AppendUint16(buf, n.Perm&0o7777)
	buf = le.AppendUint16(buf, uid)
	buf = le.AppendUint16(buf, gid)
	buf = le.AppendUint32(buf, uint32(sec)) // whole seconds
	buf = le.AppendUint32(buf, b.p.num[n])
	return buf, nil
}

// unixTime returns t in seconds, clamped to the unsigned 32-bit range
// (the superblock's mkfs_time).
func unixTime(t time.Time) uint32 {
	s := t.Unix()
	if t.IsZero() || s < 0 {
		return 0
	}
	return uint32(min(s, math.MaxUint32))
}

// id returns the id table index of a uid or gid, adding it on first use.
func (b *metaBuilder) id(v uint32) (uint16, error) {
	if i, ok := b.idIndex[v]; ok {
		return i, nil
	}
	if len(b.md.ids) >= maxIDs {
		return 0, fmt.Errorf("%w: %d is one more", ErrTooManyIDs, v)
	}
	i := uint16(len(b.md.ids))
	b.idIndex[v] = i
	b.md.ids = append(b.md.ids, v)
	return i, nil
}

// xattr returns the xattr id of an inode's xattrs (noXattr when it has
// none), adding them to the xattr table unless the same set was seen.
// Values are stored inline.
func (b *metaBuilder) xattr(n *tree.Inode) (uint32, error) {
	if len(n.Xattrs) == 0 {
		return noXattr, nil
	}
	le := binary.LittleEndian
	kv := b.kv[:0]
	size := 0
	for _, x := range n.Xattrs {
		typ, suffix, ok := uint16(0), "", false
		for _, p := range xattrPrefixes {
			if s, found := strings.CutPrefix(x.Name, p.prefix); found {
				typ, suffix, ok = p.id, s, true
				break
			}
		}
		if !ok || suffix == "" || len(suffix) > math.MaxUint16 {
			return 0, fmt.Errorf("%w: %q", ErrXattrName, x.Name)
		}
		if len(x.Value) > math.MaxInt32 {
			return 0, fmt.Errorf("%w: xattr %s value too large", ErrTooLarge, x.Name)
		}
		kv = le.AppendUint16(kv, typ)
		kv = le.AppendUint16(kv, uint16(len(suffix)))
		kv = append(kv, suffix...)
		kv = le.AppendUint32(kv, uint32(len(x.Value)))
		kv = append(kv, x.Value...)
		// the size listxattr and getxattr need: "name\0" plus value
		size += len(x.Name) + 1 + len(x.Value)
	}
	b.kv = kv
	if id, ok := b.xattrIndex[string(kv)]; ok {
		return id, nil
	}
	id := b.md.nxattrs
	b.md.nxattrs++
	b.xattrIndex[string(kv)] = id
	b.md.xattrIDs = le.AppendUint64(b.md.xattrIDs, b.xattrs.ref())
	b.md.xattrIDs = le.AppendUint32(b.md.xattrIDs, uint32(len(n.Xattrs)))
	b.md.xattrIDs = le.AppendUint32(b.md.xattrIDs, uint32(size))
	b.xattrs.write(kv)
	return id, nil
}
