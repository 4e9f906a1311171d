// Package squashfs writes squashfs 4.0 images straight from a tree.Tree,
// without root, loop devices or mounts.
//
// The image is laid out as mksquashfs lays it out:
//
//	superblock, compressor options,
//	data blocks and fragment blocks (in file order),
//	inode table, directory table,
//	fragment table, export table, id table, xattr tables,
//	zero padding to a 4 KiB boundary.
//
// File data is read, compressed on all cores and written in order through a
// bounded pipeline (never a whole file in memory). The tail end of every file
// is packed into a fragment block (mksquashfs -always-use-fragments),
// all-zero blocks are stored as sparse (size 0) blocks, blocks that do not
// shrink are stored uncompressed, and duplicates are shared as mksquashfs
// shares them: equal runs of full blocks and equal tail ends are stored once.
// Inodes use the extended form only when needed (hard links, xattrs, sparse
// or 4 GiB files, large or indexed directories); directories over one
// metadata block get an index; the export table is always written. The
// output depends only on the tree and the options: the same input gives the
// same bytes whatever the number of workers.
//
// The format is described in the Linux kernel's fs/squashfs/squashfs_fs.h and
// Documentation/filesystems/squashfs.rst.
package squashfs

import (
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/tree"
)

// Sentinel errors. Errors returned by Write wrap one of these (or an I/O
// error) with the path or table concerned.
var (
	ErrBlockSize    = errors.New("squashfs: block size must be a power of two from 4 KiB to 1 MiB")
	ErrCompression  = errors.New("squashfs: unknown compression")
	ErrLevel        = errors.New("squashfs: compression level out of range")
	ErrWorkers      = errors.New("squashfs: negative worker count")
	ErrNilTree      = errors.New("squashfs: tree has no root directory")
	ErrTooManyIDs   = errors.New("squashfs: more than 65535 distinct uids and gids")
	ErrXattrName    = errors.New("squashfs: xattr namespace not supported (only user., trusted., security.; squashfs has no POSIX ACLs)")
	ErrDevice       = errors.New("squashfs: device number out of range (major < 4096, minor < 1048576)")
	ErrShortContent = errors.New("squashfs: file content shorter than its size")
	ErrLongContent  = errors.New("squashfs: file content longer than its size")
	ErrTime         = errors.New("squashfs: mtime outside the unsigned 32-bit seconds squashfs stores (1970-01-01 to 2106-02-07)")
	ErrInode        = errors.New("squashfs: inode cannot be stored as it is")
	ErrName         = errors.New("squashfs: invalid directory entry name")
	ErrDirLink      = errors.New("squashfs: directory reachable by more than one name")
	ErrInodeType    = errors.New("squashfs: unknown inode type")
	ErrTooLarge     = errors.New("squashfs: image exceeds a format limit")
)

// Compression is the compressor used for data and metadata blocks.
type Compression uint8

// Compressors. The zero value is Zstd.
const (
	Zstd Compression = iota // zstd (squashfs compression id 6), the default
	Gzip                    // zlib streams (squashfs compression id 1, called "gzip")
)

var compressionNames = map[Compression]string{
	Zstd: "zstd",
	Gzip: "gzip",
}

// String returns the compressor's name as mksquashfs spells it.
func (c Compression) String() string {
	if s, ok := compressionNames[c]; ok {
		return s
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// id is the compressor's number in the superblock.
func (c Compression) id() uint16 {
	if c == Gzip {
		return 1
	}
	return 6
}

// Default option values.
const (
	DefaultBlockSize = 128 << 10 // bytes, as mksquashfs
	DefaultZstdLevel = 3
	DefaultGzipLevel = 9 // as mksquashfs
)

// Options configure Write. The zero value is valid: zstd level 3, 128 KiB
// blocks, mkfs_time 0, all cores.
type Options struct {
	// Compression selects the compressor (Zstd by default).
	Compression Compression
	// Level is the compression level: 1–22 for zstd, 1–9 for gzip; zero
	// picks DefaultZstdLevel or DefaultGzipLevel. The pure-Go zstd encoder
	// has four speed classes, picked as klauspost/compress's
	// EncoderLevelFromZstd does: 1–2 fastest, 3–5 default, 6–9 better,
	// 10–22 best. The level is recorded in the compressor options.
	Level int
	// BlockSize is the data block size in bytes: a power of two from 4 KiB
	// to 1 MiB. Zero means DefaultBlockSize.
	BlockSize int
	// Mtime is stored as the superblock's mkfs_time (unsigned 32-bit
	// seconds; outside that is ErrTime). The caller fixes it (SOURCE_DATE_EPOCH);
	// the zero Time stores 0. It is also the time of inodes whose tree
	// Mtime is the zero Time (unset). Inode times are whole seconds from
	// 1970 to 2106: squashfs has no field for fractions, and a time
	// outside that range is an error (ErrTime).
	Mtime time.Time
	// Workers is the number of compressing goroutines; 0 uses
	// runtime.GOMAXPROCS(0). The output does not depend on it.
	Workers int
}

// Validate reports whether the options are usable.
func (o Options) Validate() error {
	switch o.Compression {
	case Zstd:
		if o.Level < 0 || o.Level > 22 {
			return fmt.Errorf("%w: zstd level %d (want 1-22)", ErrLevel, o.Level)
		}
	case Gzip:
		if o.Level < 0 || o.Level > 9 {
			return fmt.Errorf("%w: gzip level %d (want 1-9)", ErrLevel, o.Level)
		}
	default:
		return fmt.Errorf("%w: %v", ErrCompression, o.Compression)
	}
	if bs := o.BlockSize; bs != 0 && (bs < 4<<10 || bs > 1<<20 || bs&(bs-1) != 0) {
		return fmt.Errorf("%w: %d", ErrBlockSize, bs)
	}
	if o.Workers < 0 {
		return fmt.Errorf("%w: %d", ErrWorkers, o.Workers)
	}
	if s := o.Mtime.Unix(); !o.Mtime.IsZero() && (s < 0 || s > math.MaxUint32) {
		return fmt.Errorf("%w: mkfs time %s", ErrTime, o.Mtime.UTC().Format(time.RFC3339))
	}
	return nil
}

// withDefaults fills in the zero fields.
func (o Options) withDefaults() Options {
	if o.Level == 0 {
		o.Level = DefaultZstdLevel
		if o.Compression == Gzip {
			o.Level = DefaultGzipLevel
		}
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.Workers == 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	return o
}

// Write writes a squashfs 4.0 image of t to w, starting at offset 0, and
// returns its block map: every regular file's path (each hard link's name
// included) with the image ranges of its compressed data blocks and
// fragment block. Map.ImageSize is the image size padded to 4 KiB; the
// padding is written as zeros, so the caller may place the dm-verity tree
// right after it.
func Write(w io.WriterAt, t *tree.Tree, opts Options) (*blockmap.Map, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if t == nil || t.Root == nil || t.Root.Type != tree.Dir {
		return nil, ErrNilTree
	}
	opts = opts.withDefaults()
	// (1) plan: the distinct regular files in data order, link counts,
	// inode numbers.
	p, err := plan(t)
	if err != nil {
		return nil, err
	}
	out := newBufWriter(w, 1<<20)
	dataStart := int64(superblockSize) + int64(len(compressorOptions(opts)))
	// (2) data and fragment blocks, compressed on all cores, written in
	// order after the superblock and compressor options.
	frags, dataEnd, err := writeData(out, p.files, opts, dataStart)
	if err != nil {
		return nil, err
	}
	// (3) inode and directory tables, id and xattr lists, export table,
	// all built in memory (they are small) in mksquashfs's order.
	md, err := buildMetadata(p, opts)
	if err != nil {
		return nil, err
	}
	// (4) the tables, after the data.
	sb, err := writeTables(out, md, frags, opts, dataEnd)
	if err != nil {
		return nil, err
	}
	// (5) padding to 4 KiB, then the superblock and compressor options at
	// offset 0.
	imageSize := (int64(sb.bytesUsed) + 4095) &^ 4095
	if err := out.writeAt(make([]byte, imageSize-int64(sb.bytesUsed)), int64(sb.bytesUsed)); err != nil {
		return nil, fmt.Errorf("squashfs: writing padding: %w", err)
	}
	head := append(sb.marshal(), compressorOptions(opts)...)
	if err := out.writeAt(head, 0); err != nil {
		return nil, fmt.Errorf("squashfs: writing superblock: %w", err)
	}
	if err := out.flush(); err != nil {
		return nil, fmt.Errorf("squashfs: writing image: %w", err)
	}
	// (6) the block map.
	m := &blockmap.Map{
		Filesystem: "squashfs",
		BlockSize:  int64(opts.BlockSize),
		ImageSize:  imageSize,
		Metadata: []blockmap.Extent{
			{Offset: 0, Length: dataStart},
			{Offset: int64(sb.inodeTableStart), Length: int64(sb.bytesUsed - sb.inodeTableStart)},
		},
	}
	for _, f := range p.files {
		for _, path := range f.paths {
			m.Files = append(m.Files, blockmap.File{Path: path, Size: f.inode.Size, Extents: f.extents(frags)})
		}
	}
	m.Sort()
	return m, nil
}
