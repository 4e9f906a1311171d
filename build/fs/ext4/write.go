package ext4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/tree"
)

// Buffer sizes for streaming file data.
const (
	chunkSize = 1 << 20 // bytes read from a file at a time
	bufSize   = 8 << 20 // coalesced writes of consecutive blocks
)

var zeroBlock = make([]byte, BlockSize)

// write stores everything at the places l gives, in on-disk order after
// the metadata that must wait for the counts: (1) directories, slow
// symlinks and attribute blocks, (2) file data and extent trees, (3) the
// journal superblock, (4) inode tables, (5) bitmaps, group descriptors
// and superblocks.
func (b *builder) write(l *layout) (*blockmap.Map, error) {
	a := l.alloc
	bm := &blockmap.Map{Filesystem: "ext4", BlockSize: BlockSize}

	// (1) directories, slow symlinks, attribute blocks, and their trees
	for _, n := range b.nodes {
		if n == nil || n.ino == journalIno {
			continue
		}
		var data []byte
		switch {
		case n.in.Type == tree.Dir:
			data = n.dir
		case n.in.Type == tree.Symlink && !fastSymlink(n.in):
			data = make([]byte, BlockSize)
			copy(data, n.in.Target)
		default:
			continue
		}
		if err := b.writeExtents(n, data); err != nil {
			return nil, err
		}
	}
	for _, xb := range b.xblocks {
		binary.LittleEndian.PutUint32(xb.data[4:], xb.refs)
		if _, err := b.w.WriteAt(xb.data, int64(xb.blk)*BlockSize); err != nil {
			return nil, fmt.Errorf("writing attribute block: %w", err)
		}
	}

	// (2) file data, in inode order, through one coalescing buffer
	dw := &dataWriter{w: b.w, buf: make([]byte, bufSize)}
	for _, n := range b.nodes {
		if n == nil || n.in.Type != tree.Regular || n.ino == journalIno {
			continue
		}
		if err := b.writeFile(n, a, dw); err != nil {
			if errors.Is(err, errFull) {
				return nil, fmt.Errorf("%w: %s: at least %d bytes needed, %d bytes given",
					ErrImageFull, n.path, l.used*BlockSize, l.blocks*BlockSize)
			}
			return nil, err
		}
		for _, p := range n.paths {
			bm.Files = append(bm.Files, blockmap.File{Path: p, Size: n.in.Size, Extents: fileExtents(n)})
		}
	}
	if err := dw.flush(); err != nil {
		return nil, err
	}
	if !b.opts.Sparse && a.next != l.used {
		return nil, fmt.Errorf("ext4: internal error: data ends at block %d, planned %d", a.next, l.used)
	}
	if b.opts.ReadOnly && b.opts.Size == 0 && a.next < l.blocks {
		// Holes left blocks unused: shrink, keeping the last group.
		last := uint64(l.groups-1) * blocksPerGroup
		l.blocks = max(a.next, last+l.overhead(l.groups-1)+16)
	}

	// (3) journal
	if jn := b.nodes[journalIno]; jn != nil {
		if err := b.writeExtents(jn, journalSuperblock(b.opts.UUID, l.journal)); err != nil {
			return nil, err
		}
	}

	// (4) inode tables
	if err := b.writeInodeTables(l); err != nil {
		return nil, err
	}

	// (5) bitmaps, descriptors, superblocks
	if err := b.writeGroups(l); err != nil {
		return nil, err
	}

	bm.ImageSize = int64(l.blocks) * BlockSize
	bm.Metadata = a.meta
	bm.Sort()
	return bm, nil
}

// writeExtents writes data (whole blocks, possibly fewer than the inode
// maps) at n's planned extents and its extent tree blocks.
func (b *builder) writeExtents(n *node, data []byte) error {
	for _, e := range n.ext {
		lo := e.lblk * BlockSize
		if lo >= uint64(len(data)) {
			break
		}
		hi := min(uint64(len(data)), (e.lblk+e.len)*BlockSize)
		if _, err := b.w.WriteAt(data[lo:hi], int64(e.pblk)*BlockSize); err != nil {
			return fmt.Errorf("writing %s: %w", n.path, err)
		}
	}
	root, blocks := extentTree(n.ext, n.treeBlocks)
	for i, blk := range blocks {
		if _, err := b.w.WriteAt(blk, int64(n.treeBlocks[i])*BlockSize); err != nil {
			return fmt.Errorf("writing %s extent tree: %w", n.path, err)
		}
	}
	n.root = root
	return nil
}

// writeFile streams a regular file's content into newly allocated blocks,
// leaving all-zero blocks as holes when Options.Sparse is set, then writes
// its extent tree.
func (b *builder) writeFile(n *node, a *allocator, dw *dataWriter) error {
	size := n.in.Size
	n.ext, n.treeBlocks, n.dataBlocks = n.ext[:0], n.treeBlocks[:0], 0
	if size < 0 || blocksFor(size) > maxBlocks {
		return fmt.Errorf("%w: %s: size %d", ErrTree, n.path, size)
	}
	if n.in.Content == nil {
		if size != 0 {
			return fmt.Errorf("%s: %w: no content for %d bytes", n.path, ErrContentSize, size)
		}
		n.root, _ = extentTree(nil, nil)
		return nil
	}
	rc, err := n.in.Content.Open()
	if err != nil {
		return fmt.Errorf("reading %s: %w", n.path, err)
	}
	defer rc.Close()
	var lblk uint64
	for left := size; left > 0; {
		want := min(left, chunkSize)
		nb := int(blocksFor(want))
		reg, pos, err := dw.region(nb * BlockSize)
		if err != nil {
			return err
		}
		if _, err := io.ReadFull(rc, reg[:want]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return fmt.Errorf("%s: %w: ended before %d bytes", n.path, ErrContentSize, size)
			}
			return fmt.Errorf("reading %s: %w", n.path, err)
		}
		clear(reg[want:])
		left -= want
		for i := 0; i < nb; {
			if b.opts.Sparse && isZero(reg, i) {
				i++
				continue
			}
			j := i + 1
			for j < nb && !(b.opts.Sparse && isZero(reg, j)) {
				j++
			}
			for i < j {
				p, got, err := a.alloc(uint64(j-i), false)
				if err != nil {
					return err
				}
				if err := dw.emit(pos+i*BlockSize, p, int(got)); err != nil {
					return err
				}
				n.ext = appendRun(n.ext, lblk+uint64(i), p, got)
				n.dataBlocks += got
				i += int(got)
			}
		}
		lblk += uint64(nb)
	}
	var one [1]byte
	if k, _ := rc.Read(one[:]); k > 0 {
		return fmt.Errorf("%s: %w: longer than %d bytes", n.path, ErrContentSize, size)
	}
	if n.treeBlocks, err = a.treeBlocks(n.ext, n.treeBlocks); err != nil {
		return err
	}
	root, blocks := extentTree(n.ext, n.treeBlocks)
	for i, blk := range blocks {
		reg, pos, err := dw.region(BlockSize)
		if err != nil {
			return err
		}
		copy(reg, blk)
		if err := dw.emit(pos, n.treeBlocks[i], 1); err != nil {
			return err
		}
	}
	n.root = root
	return nil
}

func isZero(reg []byte, i int) bool {
	return bytes.Equal(reg[i*BlockSize:(i+1)*BlockSize], zeroBlock)
}

// fileExtents turns a file's extents into image byte ranges, merging
// neighbours and cutting the last block at the end of the file.
func fileExtents(n *node) []blockmap.Extent {
	var out []blockmap.Extent
	nb := blocksFor(n.in.Size)
	for _, e := range n.ext {
		off, length := int64(e.pblk)*BlockSize, int64(e.len)*BlockSize
		if e.lblk+e.len == nb {
			length -= int64(nb)*BlockSize - n.in.Size
		}
		if k := len(out) - 1; k >= 0 && out[k].Offset+out[k].Length == off {
			out[k].Length += length
			continue
		}
		out = append(out, blockmap.Extent{Offset: off, Length: length})
	}
	return out
}

// dataWriter coalesces writes of consecutive blocks. Callers get a region
// of its buffer to fill, then emit runs of that region's blocks at their
// image blocks; runs move down over skipped (hole) blocks as needed.
type dataWriter struct {
	w     io.WriterAt
	buf   []byte
	off   int    // start of the pending bytes in buf
	n     int    // pending bytes
	start uint64 // image block of buf[off]
}

// region returns size bytes of buffer after the pending bytes and their
// position in the buffer.
func (d *dataWriter) region(size int) ([]byte, int, error) {
	if d.off+d.n+size > len(d.buf) {
		if err := d.flush(); err != nil {
			return nil, 0, err
		}
	}
	p := d.off + d.n
	return d.buf[p : p+size], p, nil
}

// emit queues count blocks found at buf[pos:] for image block blk.
func (d *dataWriter) emit(pos int, blk uint64, count int) error {
	if d.n > 0 && d.start+uint64(d.n/BlockSize) != blk {
		if err := d.flush(); err != nil {
			return err
		}
	}
	if d.n == 0 {
		d.off, d.start = pos, blk
	} else if dst := d.off + d.n; dst != pos {
		copy(d.buf[dst:], d.buf[pos:pos+count*BlockSize])
	}
	d.n += count * BlockSize
	return nil
}

func (d *dataWriter) flush() error {
	if d.n > 0 {
		if _, err := d.w.WriteAt(d.buf[d.off:d.off+d.n], int64(d.start)*BlockSize); err != nil {
			return fmt.Errorf("writing file data: %w", err)
		}
	}
	d.off, d.n = 0, 0
	return nil
}

// journalSuperblock is the first block of an empty internal jbd2 journal.
func journalSuperblock(uuid [16]byte, blocks uint64) []byte {
	buf := make([]byte, BlockSize)
	be := binary.BigEndian
	be.PutUint32(buf[0x00:], 0xC03B3998) // magic
	be.PutUint32(buf[0x04:], 4)          // superblock v2
	be.PutUint32(buf[0x0C:], BlockSize)
	be.PutUint32(buf[0x10:], uint32(blocks)) // s_maxlen
	be.PutUint32(buf[0x14:], 1)              // s_first
	be.PutUint32(buf[0x18:], 1)              // s_sequence
	copy(buf[0x30:], uuid[:])
	be.PutUint32(buf[0x40:], 1) // s_nr_users
	return buf
}

// writeInodeTables encodes every inode and writes the used part of each
// group's table (all of it with ZeroFill).
func (b *builder) writeInodeTables(l *layout) error {
	last := uint64(len(b.nodes) - 1)
	table := make([]byte, last*inodeSize)
	for _, n := range b.nodes {
		if n == nil {
			continue
		}
		encodeInode(table[uint64(n.ino-1)*inodeSize:uint64(n.ino)*inodeSize], n, &n.root)
	}
	ipg := uint64(l.ipg)
	for g := range uint64(l.groups) {
		first := g * ipg // index of the group's first inode
		var data []byte
		if first < last {
			data = table[first*inodeSize : min(last, first+ipg)*inodeSize]
		}
		if b.opts.ZeroFill {
			full := make([]byte, ipg*inodeSize)
			copy(full, data)
			data = full
		}
		if len(data) == 0 {
			continue
		}
		if _, err := b.w.WriteAt(data, int64(l.itable[g])*BlockSize); err != nil {
			return fmt.Errorf("writing inode table of group %d: %w", g, err)
		}
	}
	return nil
}

// writeGroups writes the bitmaps, the group descriptors and the
// superblock with its copies.
func (b *builder) writeGroups(l *layout) error {
	bitmap := l.alloc.bitmap
	// Blocks past the end of the filesystem are marked in use.
	for blk := l.blocks; blk < uint64(l.groups)*blocksPerGroup; blk++ {
		bitmap[blk/8] |= 1 << (blk % 8)
	}
	last := uint64(len(b.nodes) - 1)
	ipg := uint64(l.ipg)
	dirs := make([]uint32, l.groups)
	for _, n := range b.nodes {
		if n != nil && n.in.Type == tree.Dir {
			dirs[uint64(n.ino-1)/ipg]++
		}
	}
	gdt := make([]byte, uint64(l.gdtBlocks)*BlockSize)
	var freeBlocks, freeInodes uint64
	ibm := make([]byte, BlockSize)
	for g := range uint64(l.groups) {
		bb := bitmap[g*BlockSize : (g+1)*BlockSize]
		used := 0
		for i := 0; i < len(bb); i += 8 {
			used += bits.OnesCount64(binary.LittleEndian.Uint64(bb[i:]))
		}
		// The blocks past the end count as used above; they are not free.
		fb := uint64(blocksPerGroup - used)
		// Inode bitmap: inodes 1..last are in use, the tail past ipg is padding.
		clear(ibm)
		inUse := min(ipg, max(last, g*ipg)-g*ipg)
		for i := uint64(0); i < blocksPerGroup; i++ {
			if i < inUse || i >= ipg {
				ibm[i/8] |= 1 << (i % 8)
			}
		}
		fi := ipg - inUse
		freeBlocks += fb
		freeInodes += fi
		if _, err := b.w.WriteAt(bb, int64(l.bbitmap[g])*BlockSize); err != nil {
			return fmt.Errorf("writing block bitmap of group %d: %w", g, err)
		}
		if _, err := b.w.WriteAt(ibm, int64(l.ibitmap[g])*BlockSize); err != nil {
			return fmt.Errorf("writing inode bitmap of group %d: %w", g, err)
		}
		d := gdt[g*descSize:]
		le := binary.LittleEndian
		le.PutUint32(d[0x00:], uint32(l.bbitmap[g]))
		le.PutUint32(d[0x04:], uint32(l.ibitmap[g]))
		le.PutUint32(d[0x08:], uint32(l.itable[g]))
		le.PutUint16(d[0x0C:], uint16(fb))
		le.PutUint16(d[0x0E:], uint16(fi))
		le.PutUint16(d[0x10:], uint16(dirs[g]))
	}
	for _, s := range l.alloc.backups {
		if s >= l.blocks {
			break
		}
		g := uint32(s / blocksPerGroup)
		blk := make([]byte, BlockSize)
		sbOff := 0
		if g == 0 {
			sbOff = 1024
		}
		b.superblock(blk[sbOff:sbOff+1024], l, freeBlocks, freeInodes, g)
		if _, err := b.w.WriteAt(blk, int64(s)*BlockSize); err != nil {
			return fmt.Errorf("writing superblock of group %d: %w", g, err)
		}
		if _, err := b.w.WriteAt(gdt, int64(s+1)*BlockSize); err != nil {
			return fmt.Errorf("writing group descriptors of group %d: %w", g, err)
		}
	}
	// Give the image its full length even if its last block is free.
	if lb := l.blocks - 1; bitmap[lb/8]&(1<<(lb%8)) == 0 {
		if _, err := b.w.WriteAt(zeroBlock, int64(lb)*BlockSize); err != nil {
			return fmt.Errorf("writing last block: %w", err)
		}
	}
	return nil
}

// Feature flags.
const (
	compatHasJournal = 0x4
	compatExtAttr    = 0x8
	compatDirIndex   = 0x20

	incompatFiletype = 0x2
	incompatExtents  = 0x40
	incompatFlexBG   = 0x200

	roCompatSparseSuper = 0x1
	roCompatLargeFile   = 0x2
	roCompatHugeFile    = 0x8
	roCompatDirNlink    = 0x20
	roCompatExtraIsize  = 0x40
	roCompatReadOnly    = 0x1000
)

// superblock encodes the superblock for group g into buf (1024 bytes).
func (b *builder) superblock(buf []byte, l *layout, freeBlocks, freeInodes uint64, g uint32) {
	le := binary.LittleEndian
	o := b.opts
	le.PutUint32(buf[0x00:], l.ipg*l.groups)
	le.PutUint32(buf[0x04:], uint32(l.blocks))
	le.PutUint32(buf[0x0C:], uint32(freeBlocks))
	le.PutUint32(buf[0x10:], uint32(freeInodes))
	le.PutUint32(buf[0x14:], 0) // s_first_data_block
	le.PutUint32(buf[0x18:], 2) // log2(4096) - 10
	le.PutUint32(buf[0x1C:], 2)
	le.PutUint32(buf[0x20:], blocksPerGroup)
	le.PutUint32(buf[0x24:], blocksPerGroup)
	le.PutUint32(buf[0x28:], l.ipg)
	t, thi := sbTime(o.Mtime)
	le.PutUint32(buf[0x30:], t) // s_wtime
	buf[0x274] = thi
	le.PutUint16(buf[0x36:], 0xFFFF) // s_max_mnt_count: no forced checks
	le.PutUint16(buf[0x38:], 0xEF53)
	le.PutUint16(buf[0x3A:], 1) // s_state: clean
	le.PutUint16(buf[0x3C:], 1) // s_errors: continue
	le.PutUint32(buf[0x40:], t) // s_lastcheck
	buf[0x277] = thi
	le.PutUint32(buf[0x4C:], 1) // dynamic revision
	le.PutUint32(buf[0x54:], firstIno)
	le.PutUint16(buf[0x58:], inodeSize)
	le.PutUint16(buf[0x5A:], uint16(g))
	compat := uint32(compatExtAttr | compatDirIndex)
	ro := uint32(roCompatSparseSuper | roCompatLargeFile | roCompatHugeFile | roCompatDirNlink | roCompatExtraIsize)
	if o.ReadOnly {
		ro |= roCompatReadOnly
	}
	if l.journal > 0 {
		compat |= compatHasJournal
		le.PutUint32(buf[0xE0:], journalIno)
		buf[0xFD] = 1 // s_jnl_backup_type: i_block copy
		jn := b.nodes[journalIno]
		copy(buf[0x10C:0x10C+60], jn.root[:])
		size := l.journal * BlockSize
		le.PutUint32(buf[0x10C+60:], uint32(size>>32))
		le.PutUint32(buf[0x10C+64:], uint32(size))
	}
	le.PutUint32(buf[0x5C:], compat)
	le.PutUint32(buf[0x60:], incompatFiletype|incompatExtents|incompatFlexBG)
	le.PutUint32(buf[0x64:], ro)
	copy(buf[0x68:0x78], o.UUID[:])
	copy(buf[0x78:0x88], o.Label)
	copy(buf[0xEC:0xFC], o.HashSeed[:])
	buf[0xFC] = hashHalfMD4
	le.PutUint32(buf[0x100:], 0x0C) // default mount options: user_xattr, acl
	le.PutUint32(buf[0x108:], t)    // s_mkfs_time
	buf[0x276] = thi
	le.PutUint16(buf[0x15C:], extraIsize) // s_min_extra_isize
	le.PutUint16(buf[0x15E:], extraIsize) // s_want_extra_isize
	le.PutUint32(buf[0x160:], 0x2)        // s_flags: unsigned directory hash
	buf[0x174] = logGroupsFlex
}

// sbTime encodes a superblock time: 32 bits plus a high byte.
func sbTime(t time.Time) (uint32, uint8) {
	if t.IsZero() || t.Unix() < 0 {
		return 0, 0
	}
	s := min(uint64(t.Unix()), 1<<40-1)
	return uint32(s), uint8(s >> 32)
}
