// Package ext4 writes an ext4 filesystem image from a tree.Tree in one
// pass, without root, loop devices or mounts.
//
// The image uses 4 KiB blocks, 256-byte inodes, extents, flex_bg (all
// bitmaps and inode tables packed after the primary group descriptors),
// sparse_super backups, hashed directory indexes for directories larger
// than one block, in-inode extended attributes with a (shared) xattr block
// for what does not fit, and nanosecond timestamps. There is no
// metadata_csum and no resize inode.
//
// The layout is a pure function of the tree and the Options: inode numbers
// follow the tree's sorted order, blocks are handed out by a bump allocator,
// and every time stored comes from the tree or Options.Mtime, so two builds
// of the same input are identical byte for byte.
//
// The writer assumes that the target reads as zeros wherever it does not
// write (a fresh file, or a region just truncated to zero): it skips the
// unused tails of inode tables and, with Options.Sparse, all-zero file
// blocks. Set Options.ZeroFill when the target may hold old data.
package ext4

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/tree"
)

// BlockSize is the filesystem block size in bytes.
const BlockSize = 4096

// Options fix everything about an image that does not come from the tree.
// Nothing is random and nothing is read from the clock.
type Options struct {
	// Size is the image size in bytes (rounded down to whole blocks). Zero
	// sizes the image to its content: exactly, in read-only mode; with a
	// quarter more free space (at least 8 MiB), in writable mode.
	Size int64
	// ReadOnly writes a filesystem for a verity-protected slot (USR): no
	// journal, the read-only feature set so the kernel never mounts it
	// writable, and no spare inodes. Otherwise the filesystem is writable
	// (OEM, ROOT): a journal, free space, and one inode per 16 KiB or a
	// quarter more inodes than the tree uses, whichever is more.
	ReadOnly bool
	// UUID is the filesystem UUID (also the journal's).
	UUID [16]byte
	// HashSeed seeds the directory index hash. All zeros selects the
	// kernel's default seed.
	HashSeed [16]byte
	// Label is the volume label, at most 16 bytes.
	Label string
	// Mtime is stored as the superblock's creation, write and check times,
	// as the time of a lost+found directory the writer adds and of inodes
	// whose tree Mtime is the zero Time (unset). Inode times are stored
	// with their nanoseconds from 1901-12-13 to 2446-05-10; a time outside
	// that range is an error (ErrTree).
	Mtime time.Time
	// Sparse leaves all-zero blocks of regular files unallocated (holes),
	// as mkfs.ext4 -d does. The block map then lists allocated extents
	// only, so a file whose extents cover less than its size has holes the
	// map does not place; leave Sparse off when a delta planner needs
	// exact maps.
	Sparse bool
	// ZeroFill writes zeros over the unused parts of inode tables, for a
	// target that may not read as zeros where the writer skips it.
	ZeroFill bool
}

// Sentinel errors. Errors returned by Write wrap one of them (or an error
// from the target or a content reader) with context.
var (
	// ErrImageFull means the tree does not fit in Options.Size; the
	// message names the bytes needed.
	ErrImageFull = errors.New("ext4: image full")
	// ErrOptions means Options are invalid.
	ErrOptions = errors.New("ext4: invalid options")
	// ErrTree means the tree holds something ext4 cannot store (a
	// directory reachable twice, an unknown inode type, a symlink target
	// longer than a block, a lost+found that is not a directory).
	ErrTree = errors.New("ext4: tree cannot be stored")
	// ErrTooManyLinks means an inode has more than 65000 names.
	ErrTooManyLinks = errors.New("ext4: too many links")
	// ErrXattr means an extended attribute has an unknown namespace or the
	// attributes of one inode do not fit in the inode plus one block.
	ErrXattr = errors.New("ext4: extended attributes cannot be stored")
	// ErrContentSize means a file's content was shorter or longer than
	// its Size.
	ErrContentSize = errors.New("ext4: content length differs from size")
)

// Write writes the filesystem for t to w, starting at offset 0, and
// returns its block map. The map's ImageSize is the number of bytes the
// filesystem occupies (a multiple of BlockSize); anything placed after
// the filesystem, such as a dm-verity hash tree, belongs at that offset.
// Regular files are streamed from their Content through a bounded buffer,
// one at a time, in inode order.
//
// Write is one call over the whole tree rather than a Writer fed entry by
// entry: placing anything needs all of it first (directory blocks hold
// inode numbers, the group count follows from the total size), so a Writer
// would only buffer the tree.
func Write(w io.WriterAt, t *tree.Tree, opts Options) (*blockmap.Map, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if t == nil || t.Root == nil || t.Root.Type != tree.Dir {
		return nil, fmt.Errorf("%w: root is not a directory", ErrTree)
	}
	b := &builder{w: w, t: t, opts: opts}
	if err := b.collect(); err != nil {
		return nil, err
	}
	l, err := b.size()
	if err != nil {
		return nil, err
	}
	return b.write(l)
}

func (o *Options) validate() error {
	if o.Size < 0 {
		return fmt.Errorf("%w: negative size %d", ErrOptions, o.Size)
	}
	if len(o.Label) > 16 {
		return fmt.Errorf("%w: label %q longer than 16 bytes", ErrOptions, o.Label)
	}
	if s := o.Mtime.Unix(); !o.Mtime.IsZero() && (s < 0 || s >= 1<<40) {
		return fmt.Errorf("%w: mtime %v outside the superblock's 1970 to 36812", ErrOptions, o.Mtime.UTC())
	}
	if o.Size/BlockSize > maxBlocks {
		return fmt.Errorf("%w: size %d beyond the 16 TiB of a filesystem without the 64bit feature", ErrOptions, o.Size)
	}
	return nil
}
