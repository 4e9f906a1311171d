package ext4

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sort"
)

// Directory index (htree) geometry for 4 KiB blocks without checksums.
const (
	dxRootLimit = (BlockSize - 32) / 8 // entries in the root block
	dxNodeLimit = (BlockSize - 8) / 8  // entries in an interior block
	hashHalfMD4 = 1
)

// dirent is one directory entry to write.
type dirent struct {
	name  string
	ino   uint32
	ftype uint8
	hash  uint32
}

func recLen(nameLen int) int { return 8 + pad4(nameLen) }

// buildDir lays out directory n: a linear directory when it fits one
// block, otherwise a hashed index over full leaf blocks.
func (b *builder) buildDir(n *node) error {
	ents := make([]dirent, 0, len(n.entries))
	size := recLen(1) + recLen(2)
	for _, e := range n.entries {
		c := b.byInode[e.Inode]
		ents = append(ents, dirent{name: e.Name, ino: c.ino, ftype: fileType[e.Inode.Type]})
		size += recLen(len(e.Name))
	}
	if size <= BlockSize {
		all := append([]dirent{{name: ".", ino: n.ino, ftype: 2}, {name: "..", ino: n.parent, ftype: 2}}, ents...)
		n.dir, _ = packLeaves(all)
		return nil
	}
	seed := hashSeed(b.opts.HashSeed)
	for i := range ents {
		ents[i].hash = dirHash(ents[i].name, seed)
	}
	sort.Slice(ents, func(i, j int) bool {
		if ents[i].hash != ents[j].hash {
			return ents[i].hash < ents[j].hash
		}
		return ents[i].name < ents[j].name
	})
	leaves, starts := packLeaves(ents)
	nleaves := len(leaves) / BlockSize
	// Index hashes: a leaf's first hash, with the low bit set when its hash
	// continues from the previous leaf (a collision across the split).
	idx := make([]uint32, nleaves)
	for i := 1; i < nleaves; i++ {
		h := ents[starts[i]].hash
		if ents[starts[i]-1].hash == h {
			h |= 1
		}
		idx[i] = h
	}
	var levels, nnodes int
	switch {
	case nleaves <= dxRootLimit:
	case nleaves <= dxRootLimit*dxNodeLimit:
		levels = 1
		nnodes = (nleaves + dxNodeLimit - 1) / dxNodeLimit
	default:
		return fmt.Errorf("%w: directory with %d entries needs the largedir feature", ErrTree, len(ents))
	}
	firstLeaf := 1 + nnodes
	out := make([]byte, (firstLeaf)*BlockSize, (firstLeaf)*BlockSize+len(leaves))
	root := out[:BlockSize]
	putDirent(root, n.ino, 12, ".", 2)
	putDirent(root[12:], n.parent, BlockSize-12, "..", 2)
	root[24+4] = hashHalfMD4
	root[24+5] = 8 // info_length
	root[24+6] = uint8(levels)
	if levels == 0 {
		putDxEntries(root[32:], dxRootLimit, idx, firstLeaf)
	} else {
		nodeHash := make([]uint32, nnodes)
		for k := range nnodes {
			nodeHash[k] = idx[k*dxNodeLimit]
			blk := out[(1+k)*BlockSize : (2+k)*BlockSize]
			binary.LittleEndian.PutUint16(blk[4:], BlockSize) // fake empty dirent
			end := min((k+1)*dxNodeLimit, nleaves)
			putDxEntries(blk[8:], dxNodeLimit, idx[k*dxNodeLimit:end], firstLeaf+k*dxNodeLimit)
		}
		putDxEntries(root[32:], dxRootLimit, nodeHash, 1)
	}
	n.dir = append(out, leaves...)
	n.htree = true
	return nil
}

// putDxEntries writes a count/limit header and entries pointing at
// consecutive blocks from first; hash[0] is implicit.
func putDxEntries(buf []byte, limit int, hash []uint32, first int) {
	binary.LittleEndian.PutUint16(buf[0:], uint16(limit))
	binary.LittleEndian.PutUint16(buf[2:], uint16(len(hash)))
	binary.LittleEndian.PutUint32(buf[4:], uint32(first))
	for i := 1; i < len(hash); i++ {
		binary.LittleEndian.PutUint32(buf[8*i:], hash[i])
		binary.LittleEndian.PutUint32(buf[8*i+4:], uint32(first+i))
	}
}

// packLeaves writes entries into as few blocks as they fit, the last entry
// of each block stretched to the block's end. It returns the blocks and
// the index of the first entry of each block.
func packLeaves(ents []dirent) ([]byte, []int) {
	out := make([]byte, BlockSize)
	starts := []int{0}
	off, last := 0, -1 // offset in the current block, offset of its last entry
	for i, e := range ents {
		rl := recLen(len(e.name))
		if off+rl > BlockSize {
			stretch(out[len(out)-BlockSize:], last)
			out = append(out, make([]byte, BlockSize)...)
			starts = append(starts, i)
			off = 0
		}
		putDirent(out[len(out)-BlockSize+off:], e.ino, rl, e.name, e.ftype)
		last = off
		off += rl
	}
	if last < 0 { // no entries: one empty record over the block
		binary.LittleEndian.PutUint16(out[4:], BlockSize)
	} else {
		stretch(out[len(out)-BlockSize:], last)
	}
	return out, starts
}

// stretch extends the entry at off to the end of blk.
func stretch(blk []byte, off int) {
	binary.LittleEndian.PutUint16(blk[off+4:], uint16(BlockSize-off))
}

func putDirent(buf []byte, ino uint32, rl int, name string, ftype uint8) {
	binary.LittleEndian.PutUint32(buf[0:], ino)
	binary.LittleEndian.PutUint16(buf[4:], uint16(rl))
	buf[6] = uint8(len(name))
	buf[7] = ftype
	copy(buf[8:], name)
}

// hashSeed turns the superblock's seed bytes into the hash's initial
// state; all zeros selects the default.
func hashSeed(s [16]byte) [4]uint32 {
	var seed [4]uint32
	zero := true
	for i := range seed {
		seed[i] = binary.LittleEndian.Uint32(s[4*i:])
		zero = zero && seed[i] == 0
	}
	if zero {
		return [4]uint32{0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476}
	}
	return seed
}

// dirHash is the half-MD4 directory hash with unsigned characters (the
// superblock says so with EXT2_FLAGS_UNSIGNED_HASH).
func dirHash(name string, seed [4]uint32) uint32 {
	buf := seed
	var in [8]uint32
	for p := name; ; p = p[32:] {
		hashBuf(p, in[:]) // the pad is made of the length still to hash
		halfMD4(&buf, &in)
		if len(p) <= 32 {
			break
		}
	}
	h := buf[1] &^ 1
	if h == 0x7fffffff<<1 { // the kernel reserves the end-of-directory cookie
		h = (0x7fffffff - 1) << 1
	}
	return h
}

// hashBuf fills in from up to 32 bytes of msg, padded with a byte pattern
// made of the length of msg.
func hashBuf(msg string, in []uint32) {
	n := len(msg)
	pad := uint32(n) | uint32(n)<<8
	pad |= pad << 16
	if n > 4*len(in) {
		n = 4 * len(in)
	}
	val := pad
	k := 0
	for i := range n {
		val = uint32(msg[i]) + val<<8
		if i%4 == 3 {
			in[k] = val
			k++
			val = pad
		}
	}
	if k < len(in) {
		in[k] = val
		k++
	}
	for ; k < len(in); k++ {
		in[k] = pad
	}
}

// halfMD4 is the cut-down MD4 transform of the directory hash.
func halfMD4(buf *[4]uint32, in *[8]uint32) {
	const k2, k3 = 0x5A827999, 0x6ED9EBA1
	f := func(x, y, z uint32) uint32 { return z ^ (x & (y ^ z)) }
	g := func(x, y, z uint32) uint32 { return (x & y) + ((x ^ y) & z) }
	h := func(x, y, z uint32) uint32 { return x ^ y ^ z }
	a, b, c, d := buf[0], buf[1], buf[2], buf[3]
	r := func(fn func(x, y, z uint32) uint32, a *uint32, b, c, d, x uint32, s int) {
		*a = bits.RotateLeft32(*a+fn(b, c, d)+x, s)
	}
	for _, i := range [2]int{0, 4} {
		r(f, &a, b, c, d, in[i], 3)
		r(f, &d, a, b, c, in[i+1], 7)
		r(f, &c, d, a, b, in[i+2], 11)
		r(f, &b, c, d, a, in[i+3], 19)
	}
	for _, i := range [2]int{1, 0} {
		r(g, &a, b, c, d, in[i]+k2, 3)
		r(g, &d, a, b, c, in[i+2]+k2, 5)
		r(g, &c, d, a, b, in[i+4]+k2, 9)
		r(g, &b, c, d, a, in[i+6]+k2, 13)
	}
	for _, i := range [2]int{3, 1} {
		r(h, &a, b, c, d, in[i]+k3, 3)
		r(h, &d, a, b, c, in[i+4]+k3, 9)
		r(h, &c, d, a, b, in[i-1]+k3, 11)
		r(h, &b, c, d, a, in[i+3]+k3, 15)
	}
	buf[0] += a
	buf[1] += b
	buf[2] += c
	buf[3] += d
}

// dirBlocks reports the blocks of a directory inode.
func (n *node) dirBlocks() uint64 { return uint64(len(n.dir) / BlockSize) }
