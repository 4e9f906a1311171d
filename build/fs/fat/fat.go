// Package fat writes FAT32 filesystems (the EFI system partition) from a
// tree, once, without root, loop devices or mounts.
//
// The layout follows Microsoft's FAT32 specification (fatgen103): 512-byte
// sectors, 32 reserved sectors holding the boot sector, the FSInfo sector
// (free count and next-free hint filled in) and their backups at sectors 6
// and 7, two FATs sized by the specification's formula and then checked to
// hold an entry for every cluster, and the data region aligned to the
// cluster size. The cluster size follows fatgen103's table and is halved
// when needed so the volume always has at least 65525 clusters, the FAT32
// minimum; smaller volumes are refused rather than written as a FAT32 that
// drivers would read as FAT16.
//
// Directories are laid out first, from cluster 2 (the root) in depth-first
// name order, then file data in the same order, every file contiguous. Names
// that are 8.3 names are stored as short entries with NT lower-case flags;
// others get VFAT long-name entries and a deterministic "~N" short name.
// Times are stored as UTC wall-clock time at FAT's 2-second granularity.
// The output depends only on the tree and Options: the same inputs give
// the same bytes.
package fat

import (
	"errors"
	"io"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/tree"
)

// Sentinel errors. Errors returned by Write wrap them with the path or
// figures involved.
var (
	ErrFull            = errors.New("fat: image full")
	ErrTooSmall        = errors.New("fat: partition too small for FAT32")
	ErrTooLarge        = errors.New("fat: partition too large for FAT32")
	ErrUnsupportedType = errors.New("fat: unsupported file type")
	ErrInvalidName     = errors.New("fat: name not allowed in FAT")
	ErrDuplicateName   = errors.New("fat: names differ only in case")
	ErrDirFull         = errors.New("fat: too many entries in directory")
	ErrFileTooLarge    = errors.New("fat: file larger than 4 GiB - 1")
	ErrInvalidLabel    = errors.New("fat: invalid volume label")
	ErrContentSize     = errors.New("fat: content length differs from file size")
)

// DefaultLabel is the volume label used when Options.Label is empty.
const DefaultLabel = "EFI-SYSTEM"

// Options describe the volume to write.
type Options struct {
	// Size is the partition size in bytes (required). A trailing partial
	// sector is not used.
	Size int64
	// Label is the volume label, up to 11 characters that are valid in a
	// short name, or spaces; lower-case letters are upper-cased. Empty
	// means DefaultLabel.
	Label string
	// VolumeID is the volume serial number. Derive it from the build's
	// seed: it is never chosen at random.
	VolumeID uint32
	// Mtime is the time of the volume label and of any inode whose Mtime is
	// zero. A zero Mtime means 1980-01-01, FAT's epoch.
	Mtime time.Time
	// HiddenSectors is the partition's first LBA on its disk in 512-byte
	// sectors, stored in the boot sector's hidden-sectors field; 0 when the
	// volume is not placed on a disk yet.
	HiddenSectors uint32
}

// Write writes a FAT32 filesystem holding tree t to w, covering bytes
// 0 to opts.Size, and returns where every file's data lies. Only
// directories and regular files can be stored; any other type is an error
// naming its path, and hard links become separate copies.
//
// Write writes the reserved sectors, both FATs, every directory and every
// file's clusters (the tail of the last cluster zeroed) and the volume's
// last sector; free clusters are not written, so w must read as zeros
// there (a new or truncated file) for the image to be reproducible. A tree
// that does not fit is reported (ErrFull) before anything is written; after
// any other error the bytes written so far are not a valid volume.
func Write(w io.WriterAt, t *tree.Tree, opts Options) (*blockmap.Map, error) {
	label, err := volumeLabel(opts.Label)
	if err != nil {
		return nil, err
	}
	g, err := computeGeometry(opts.Size)
	if err != nil {
		return nil, err
	}
	p, err := plan(t, g, opts)
	if err != nil {
		return nil, err
	}
	wr := &writer{w: w, g: g, p: p, opts: opts, label: label}
	if err := wr.write(); err != nil {
		return nil, err
	}
	return wr.blockMap(), nil
}
