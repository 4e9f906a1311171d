package slot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/kiln-os/kiln/build/verity"
)

// BlockSize is the data and hash block size of kiln's verity slots.
const BlockSize = 4096

// ErrNoVerity is returned when a slot holds no filesystem followed by a
// dm-verity superblock where kiln puts one.
var ErrNoVerity = errors.New("slot: no kiln dm-verity superblock")

// pointerMagic starts the block that points to the verity superblock when
// the verity data area is larger than the filesystem (a layout's fixed
// fs-size): the first 4 KiB block after the filesystem holds the magic and
// the superblock's byte offset (u64 little-endian). It lies inside the
// verity data area, so dm-verity protects it like the filesystem.
var pointerMagic = []byte("KILNVPTR")

// Pointer returns the block that points from the end of a filesystem to
// the verity superblock at hashOffset.
func Pointer(hashOffset int64) []byte {
	b := make([]byte, BlockSize)
	copy(b, pointerMagic)
	binary.LittleEndian.PutUint64(b[8:], uint64(hashOffset))
	return b
}

// FilesystemEnd returns the byte length of the ext4 or squashfs filesystem
// at the start of r, from its superblock.
func FilesystemEnd(r io.ReaderAt, size int64) (int64, error) {
	sb := make([]byte, 2048)
	if _, err := r.ReadAt(sb, 0); err != nil {
		return 0, fmt.Errorf("slot: reading the filesystem superblock: %w", err)
	}
	le := binary.LittleEndian
	var end uint64
	switch {
	case bytes.Equal(sb[:4], []byte("hsqs")):
		end = le.Uint64(sb[40:]) // bytes_used
	case le.Uint16(sb[1024+0x38:]) == 0xef53:
		e := sb[1024:]
		logBS := le.Uint32(e[0x18:])
		if logBS > 6 {
			return 0, fmt.Errorf("%w: ext4 block size 1024<<%d", ErrNoVerity, logBS)
		}
		blocks := uint64(le.Uint32(e[0x04:]))
		if le.Uint32(e[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
			blocks |= uint64(le.Uint32(e[0x150:])) << 32
		}
		if blocks > uint64(size) {
			return 0, fmt.Errorf("%w: ext4 of %d blocks in a %d-byte slot", ErrNoVerity, blocks, size)
		}
		end = blocks << (10 + logBS)
	default:
		return 0, fmt.Errorf("%w: no ext4 or squashfs filesystem at the start of the slot", ErrNoVerity)
	}
	if end == 0 || end > uint64(size) {
		return 0, fmt.Errorf("%w: a filesystem of %d bytes in a %d-byte slot", ErrNoVerity, end, size)
	}
	return int64(end), nil
}

// Locate finds the verity superblock of a kiln USR slot r of size bytes
// from the slot alone: it is in the 4 KiB block right after the
// filesystem, or where the pointer block found there says. The superblock
// must describe exactly the blocks before it (data_blocks × 4096 = its
// offset), in 4 KiB blocks.
func Locate(r io.ReaderAt, size int64) (int64, *verity.Superblock, error) {
	end, err := FilesystemEnd(r, size)
	if err != nil {
		return 0, nil, err
	}
	at := (end + BlockSize - 1) / BlockSize * BlockSize
	if at > size-BlockSize {
		return 0, nil, fmt.Errorf("%w: the filesystem ends at byte %d, leaving no room in the %d-byte slot", ErrNoVerity, end, size)
	}
	head := make([]byte, 16)
	if _, err := r.ReadAt(head, at); err != nil {
		return 0, nil, fmt.Errorf("slot: reading byte %d: %w", at, err)
	}
	if bytes.Equal(head[:8], pointerMagic) {
		p := binary.LittleEndian.Uint64(head[8:])
		if p%BlockSize != 0 || p <= uint64(at) || p > uint64(size-BlockSize) {
			return 0, nil, fmt.Errorf("%w: the pointer after the filesystem (byte %d) names byte %d, not a block of the slot after it", ErrNoVerity, at, p)
		}
		at = int64(p)
	}
	sb, err := verity.ReadSuperblock(r, at)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrNoVerity, err)
	}
	if sb.DataBlockSize != BlockSize || sb.HashBlockSize != BlockSize || sb.DataBlocks*BlockSize != uint64(at) {
		return 0, nil, fmt.Errorf("%w: the superblock at byte %d describes %d blocks of %d bytes (hash blocks %d), not the %d bytes before it",
			ErrNoVerity, at, sb.DataBlocks, sb.DataBlockSize, sb.HashBlockSize, at)
	}
	if at+verity.HashTreeSize(sb.DataBlocks) > size {
		return 0, nil, fmt.Errorf("%w: the hash tree of %d blocks at byte %d runs past the %d-byte slot", ErrNoVerity, sb.DataBlocks, at, size)
	}
	return at, sb, nil
}
