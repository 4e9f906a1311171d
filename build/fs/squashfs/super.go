package squashfs

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

const (
	superblockSize = 96
	magic          = 0x73717368 // "hsqs"
	noTable        = ^uint64(0) // SQUASHFS_INVALID_BLK
)

// Superblock flags (squashfs_fs.h).
const (
	flagNoXattrs        = 1 << 9
	flagAlwaysFragments = 1 << 5
	flagDuplicates      = 1 << 6
	flagExportable      = 1 << 7
	flagCompressorOpts  = 1 << 10
)

// superblock is the 96-byte squashfs_super_block.
type superblock struct {
	inodes            uint32
	mkfsTime          uint32
	blockSize         uint32
	fragments         uint32
	compression       uint16
	blockLog          uint16
	flags             uint16
	ids               uint16
	rootInode         uint64
	bytesUsed         uint64
	idTableStart      uint64
	xattrIDTableStart uint64
	inodeTableStart   uint64
	dirTableStart     uint64
	fragTableStart    uint64
	exportTableStart  uint64
}

func (s *superblock) marshal() []byte {
	le := binary.LittleEndian
	b := make([]byte, 0, superblockSize)
	b = le.AppendUint32(b, magic)
	b = le.AppendUint32(b, s.inodes)
	b = le.AppendUint32(b, s.mkfsTime)
	b = le.AppendUint32(b, s.blockSize)
	b = le.AppendUint32(b, s.fragments)
	b = le.AppendUint16(b, s.compression)
	b = le.AppendUint16(b, s.blockLog)
	b = le.AppendUint16(b, s.flags)
	b = le.AppendUint16(b, s.ids)
	b = le.AppendUint16(b, 4) // major
	b = le.AppendUint16(b, 0) // minor
	for _, v := range []uint64{s.rootInode, s.bytesUsed, s.idTableStart, s.xattrIDTableStart,
		s.inodeTableStart, s.dirTableStart, s.fragTableStart, s.exportTableStart} {
		b = le.AppendUint64(b, v)
	}
	return b
}

// writeTables writes, from offset at on, the inode table, the directory
// table, the fragment, export and id tables and the xattr tables, in that
// order (the kernel checks that each table ends before the next begins),
// and returns the filled-in superblock.
func writeTables(out *bufWriter, md *metadata, frags []fragment, o Options, at int64) (*superblock, error) {
	if len(md.ids) == 0 {
		return nil, fmt.Errorf("squashfs: internal error: empty id table")
	}
	le := binary.LittleEndian
	sb := &superblock{
		inodes:      md.count,
		mkfsTime:    unixTime(o.Mtime),
		blockSize:   uint32(o.BlockSize),
		fragments:   uint32(len(frags)),
		compression: o.Compression.id(),
		blockLog:    uint16(bits.TrailingZeros32(uint32(o.BlockSize))),
		flags:       flagAlwaysFragments | flagDuplicates | flagExportable | flagCompressorOpts,
		ids:         uint16(len(md.ids)),
		rootInode:   md.rootRef,
	}
	pos := at
	var werr error
	put := func(b []byte) {
		if werr == nil {
			werr = out.writeAt(b, pos)
		}
		pos += int64(len(b))
	}
	table := func(data, prefix []byte) uint64 {
		b, index := lookupTable(md.comp, data, prefix, pos)
		put(b)
		return uint64(index)
	}

	// (1) inode table, (2) directory table
	sb.inodeTableStart = uint64(pos)
	put(md.inodes)
	sb.dirTableStart = uint64(pos)
	put(md.dirs)

	// (3) fragment table: start, size word, unused
	var fr []byte
	for _, f := range frags {
		fr = le.AppendUint64(fr, uint64(f.start))
		fr = le.AppendUint32(fr, f.word)
		fr = le.AppendUint32(fr, 0)
	}
	sb.fragTableStart = table(fr, nil)

	// (4) export table: inode number → inode reference
	ex := make([]byte, 0, 8*len(md.export))
	for _, r := range md.export {
		ex = le.AppendUint64(ex, r)
	}
	sb.exportTableStart = table(ex, nil)

	// (5) id table
	ids := make([]byte, 0, 4*len(md.ids))
	for _, id := range md.ids {
		ids = le.AppendUint32(ids, id)
	}
	sb.idTableStart = table(ids, nil)

	// (6) xattr key/value blocks, xattr id blocks, then the xattr id table
	// header (key/value start, count) and its index.
	sb.xattrIDTableStart = noTable
	if md.nxattrs == 0 {
		sb.flags |= flagNoXattrs
	} else {
		kvStart := uint64(pos)
		put(md.xattrKV)
		head := le.AppendUint64(nil, kvStart)
		head = le.AppendUint32(head, md.nxattrs)
		head = le.AppendUint32(head, 0)
		sb.xattrIDTableStart = table(md.xattrIDs, head)
	}
	if werr != nil {
		return nil, fmt.Errorf("squashfs: writing tables: %w", werr)
	}
	sb.bytesUsed = uint64(pos)
	return sb, nil
}
