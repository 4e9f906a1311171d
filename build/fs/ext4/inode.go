package ext4

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// Inode flags.
const (
	flagIndex   = 0x1000  // hashed directory
	flagExtents = 0x80000 // i_block holds an extent tree
)

// Time limits of the inode encoding: a signed 32-bit seconds field plus
// two epoch bits in the extra field that add multiples of 2^32, so from
// 1901-12-13T20:45:52Z to 2446-05-10T22:38:55Z.
const (
	minInodeTime = -1 << 31
	maxInodeTime = 3<<32 + 1<<31 - 1
)

// checkTime refuses a time the inode encoding cannot hold.
func checkTime(t time.Time) error {
	if s := t.Unix(); s < minInodeTime || s > maxInodeTime {
		return fmt.Errorf("%w: mtime %s outside ext4's range (%s to %s)", ErrTree, t.UTC().Format(time.RFC3339Nano),
			time.Unix(minInodeTime, 0).UTC().Format(time.RFC3339), time.Unix(maxInodeTime, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// inodeTime encodes t, within the range checkTime allows, as the seconds
// field and the extra field (epoch bits and nanoseconds), as the kernel's
// ext4_encode_extra_time does.
func inodeTime(t time.Time) (lo, extra uint32) {
	sec := t.Unix()
	epoch := uint32((sec-int64(int32(sec)))>>32) & 3
	return uint32(sec), uint32(t.Nanosecond())<<2 | epoch
}

// extentTree builds the extent tree of ext over blocks (leaves first, as
// treeBlocks allocated them). It returns i_block and the tree blocks.
func extentTree(ext []extent, blocks []uint64) (root [60]byte, out [][]byte) {
	type entry struct {
		lblk uint64
		raw  [12]byte
	}
	level := make([]entry, len(ext))
	for i, e := range ext {
		level[i].lblk = e.lblk
		r := level[i].raw[:]
		binary.LittleEndian.PutUint32(r[0:], uint32(e.lblk))
		binary.LittleEndian.PutUint16(r[4:], uint16(e.len))
		binary.LittleEndian.PutUint16(r[6:], uint16(e.pblk>>32))
		binary.LittleEndian.PutUint32(r[8:], uint32(e.pblk))
	}
	depth := 0
	for len(level) > 4 {
		var up []entry
		for i := 0; i < len(level); i += extentsPerBlock {
			chunk := level[i:min(i+extentsPerBlock, len(level))]
			blk := make([]byte, BlockSize)
			putExtentHeader(blk, len(chunk), extentsPerBlock, depth)
			for k, e := range chunk {
				copy(blk[12+12*k:], e.raw[:])
			}
			p := blocks[len(out)]
			out = append(out, blk)
			var ix entry
			ix.lblk = chunk[0].lblk
			binary.LittleEndian.PutUint32(ix.raw[0:], uint32(chunk[0].lblk))
			binary.LittleEndian.PutUint32(ix.raw[4:], uint32(p))
			binary.LittleEndian.PutUint16(ix.raw[8:], uint16(p>>32))
			up = append(up, ix)
		}
		level = up
		depth++
	}
	putExtentHeader(root[:], len(level), 4, depth)
	for k, e := range level {
		copy(root[12+12*k:], e.raw[:])
	}
	return root, out
}

func putExtentHeader(b []byte, entries, maxEntries, depth int) {
	binary.LittleEndian.PutUint16(b[0:], 0xF30A)
	binary.LittleEndian.PutUint16(b[2:], uint16(entries))
	binary.LittleEndian.PutUint16(b[4:], uint16(maxEntries))
	binary.LittleEndian.PutUint16(b[6:], uint16(depth))
}

// encodeInode writes n's 256-byte inode record into buf; root is the
// extent tree root for extent-mapped inodes.
func encodeInode(buf []byte, n *node, root *[60]byte) {
	in := n.in
	le := binary.LittleEndian
	le.PutUint16(buf[0x00:], modeType[in.Type]|in.Perm&0o7777)
	le.PutUint16(buf[0x02:], uint16(in.UID))
	le.PutUint16(buf[0x78:], uint16(in.UID>>16))
	le.PutUint16(buf[0x18:], uint16(in.GID))
	le.PutUint16(buf[0x7A:], uint16(in.GID>>16))
	le.PutUint16(buf[0x1A:], uint16(n.links))

	var size uint64
	switch in.Type {
	case tree.Regular:
		size = uint64(in.Size)
	case tree.Dir:
		size = uint64(len(n.dir))
	case tree.Symlink:
		size = uint64(len(in.Target))
	}
	le.PutUint32(buf[0x04:], uint32(size))
	le.PutUint32(buf[0x6C:], uint32(size>>32))

	lo, extra := inodeTime(n.mtime)
	for _, off := range [4]int{0x08, 0x0C, 0x10, 0x90} { // atime, ctime, mtime, crtime
		le.PutUint32(buf[off:], lo)
	}
	for _, off := range [4]int{0x84, 0x88, 0x8C, 0x94} { // ctime, mtime, atime, crtime extra
		le.PutUint32(buf[off:], extra)
	}

	blocks := n.dataBlocks + uint64(len(n.treeBlocks))
	if n.xblock != nil {
		blocks++
		le.PutUint32(buf[0x68:], uint32(n.xblock.blk))
		le.PutUint16(buf[0x76:], uint16(n.xblock.blk>>32))
	}
	sectors := blocks * (BlockSize / 512)
	le.PutUint32(buf[0x1C:], uint32(sectors))
	le.PutUint16(buf[0x74:], uint16(sectors>>32))

	var flags uint32
	iblock := buf[0x28 : 0x28+60]
	switch {
	case in.Type == tree.CharDevice || in.Type == tree.BlockDevice:
		// Old encoding when both fit a byte, else the new one (12 bits of
		// major, 20 of minor: collect refused anything larger).
		if in.Major < 256 && in.Minor < 256 {
			le.PutUint32(iblock[0:], in.Major<<8|in.Minor)
		} else {
			le.PutUint32(iblock[4:], in.Minor&0xff|in.Major<<8|(in.Minor&^0xff)<<12)
		}
	case in.Type == tree.Symlink && fastSymlink(in):
		copy(iblock, in.Target)
	case in.Type == tree.FIFO || in.Type == tree.Socket:
	default:
		flags |= flagExtents
		copy(iblock, root[:])
	}
	if n.htree {
		flags |= flagIndex
	}
	le.PutUint32(buf[0x20:], flags)
	le.PutUint16(buf[0x80:], extraIsize)
	putInodeXattrs(buf[xattrInodeStart:inodeSize], n.xin)
}
