package ext4

import (
	"errors"
	"fmt"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/tree"
)

// Geometry constants.
const (
	blocksPerGroup  = 8 * BlockSize // one bitmap block per group
	inodeSize       = 256
	extraIsize      = 32 // i_extra_isize: extra times, crtime, version_hi, projid
	inodesPerBlock  = BlockSize / inodeSize
	descSize        = 32
	maxBlocks       = 1<<32 - 1 // without the 64bit feature
	maxExtentLen    = 32768     // longest initialized extent
	extentsPerBlock = (BlockSize - 12) / 12
	bytesPerInode   = 16384 // writable mode, as mke2fs
	logGroupsFlex   = 4
	minJournal      = 1024
)

// errFull is returned by the allocator; callers turn it into ErrImageFull
// with the size needed.
var errFull = errors.New("ext4: out of blocks")

// extent maps len logical blocks from lblk to physical blocks from pblk.
type extent struct {
	lblk uint64
	len  uint64
	pblk uint64
}

// appendRun adds a mapping to ext, merging it into the last extent when
// both are contiguous, and splitting at maxExtentLen. The result does not
// depend on how a contiguous range was split into runs.
func appendRun(ext []extent, lblk, pblk, n uint64) []extent {
	for n > 0 {
		if k := len(ext) - 1; k >= 0 {
			e := &ext[k]
			if e.lblk+e.len == lblk && e.pblk+e.len == pblk && e.len < maxExtentLen {
				add := min(n, maxExtentLen-e.len)
				e.len += add
				lblk, pblk, n = lblk+add, pblk+add, n-add
				continue
			}
		}
		add := min(n, maxExtentLen)
		ext = append(ext, extent{lblk, add, pblk})
		lblk, pblk, n = lblk+add, pblk+add, n-add
	}
	return ext
}

// treeBlockCount is the number of extent tree blocks for e extents when
// the inode's i_block holds the root (4 entries).
func treeBlockCount(e int) int {
	total := 0
	for e > 4 {
		e = (e + extentsPerBlock - 1) / extentsPerBlock
		total += e
	}
	return total
}

// hasBackup reports whether group g holds a superblock copy
// (sparse_super: groups 0, 1 and powers of 3, 5 and 7).
func hasBackup(g uint32) bool {
	if g <= 1 {
		return true
	}
	for _, p := range [3]uint32{3, 5, 7} {
		x := g
		for x%p == 0 {
			x /= p
		}
		if x == 1 {
			return true
		}
	}
	return false
}

// geometry is the shape of a filesystem of a given size.
type geometry struct {
	blocks    uint64 // 0 while sizing: no limit
	groups    uint32
	ipg       uint32 // inodes per group
	gdtBlocks uint32
	journal   uint64 // journal blocks, 0 for none
}

func (g geometry) itableBlocks() uint64 { return uint64(g.ipg) / inodesPerBlock }

// overhead is the number of blocks a superblock copy takes in group grp.
func (g geometry) overhead(grp uint32) uint64 {
	if hasBackup(grp) {
		return 1 + uint64(g.gdtBlocks)
	}
	return 0
}

func groupsFor(blocks uint64) uint32 {
	return uint32((blocks + blocksPerGroup - 1) / blocksPerGroup)
}

func gdtBlocksFor(groups uint32) uint32 {
	return uint32((uint64(groups)*descSize + BlockSize - 1) / BlockSize)
}

// inodesNeeded is the highest inode number in use.
func (b *builder) inodesNeeded() uint64 { return uint64(len(b.nodes) - 1) }

// geometryFor returns the shape of a filesystem of the given number of
// blocks (writable mode) or groups (read-only mode, blocks zero).
func (b *builder) geometryFor(blocks uint64, groups uint32) (geometry, error) {
	g := geometry{blocks: blocks, groups: groups}
	if blocks > 0 {
		g.groups = groupsFor(blocks)
	}
	g.gdtBlocks = gdtBlocksFor(g.groups)
	inodes := b.inodesNeeded()
	if !b.opts.ReadOnly {
		// One inode per 16 KiB, and room for a quarter more files.
		inodes = max(inodes+inodes/4+16, blocks*BlockSize/bytesPerInode)
		g.journal = journalBlocks(blocks)
	}
	per := (inodes + uint64(g.groups) - 1) / uint64(g.groups)
	per = (per + inodesPerBlock - 1) / inodesPerBlock * inodesPerBlock
	if per > blocksPerGroup {
		if b.inodesNeeded() > uint64(g.groups)*blocksPerGroup {
			return g, fmt.Errorf("%w: %d inodes need more block groups", errFull, b.inodesNeeded())
		}
		per = blocksPerGroup
	}
	g.ipg = uint32(per)
	return g, nil
}

// journalBlocks is mke2fs's default journal size for a filesystem.
func journalBlocks(blocks uint64) uint64 {
	switch {
	case blocks < 32768:
		return 1024
	case blocks < 256*1024:
		return 4096
	case blocks < 512*1024:
		return 8192
	case blocks < 4096*1024:
		return 16384
	case blocks < 8192*1024:
		return 32768
	case blocks < 16384*1024:
		return 65536
	case blocks < 32768*1024:
		return 131072
	}
	return 262144
}

// allocator hands out blocks in increasing order, stepping over the
// superblock copies of the groups.
type allocator struct {
	geo     geometry
	next    uint64
	limit   uint64
	backups []uint64 // first block of each group with a superblock copy
	bitmap  []byte   // marks allocations when non-nil and not dry
	dry     bool     // count only
	meta    []blockmap.Extent
}

func newAllocator(g geometry, limit uint64) *allocator {
	a := &allocator{geo: g, limit: limit}
	for grp := uint32(0); grp < g.groups; grp++ {
		if hasBackup(grp) {
			a.backups = append(a.backups, uint64(grp)*blocksPerGroup)
		}
	}
	return a
}

// skip moves next past a superblock copy it points into and returns how
// many blocks may be taken before the next copy.
func (a *allocator) skip() uint64 {
	room := uint64(1<<63 - 1)
	ov := 1 + uint64(a.geo.gdtBlocks)
	for _, s := range a.backups { // few: O(log groups) of them
		if a.next >= s+ov {
			continue
		}
		if a.next >= s {
			a.next = s + ov
			continue
		}
		room = s - a.next
		break
	}
	return room
}

// alloc takes up to n contiguous blocks.
func (a *allocator) alloc(n uint64, meta bool) (start, got uint64, err error) {
	room := a.skip()
	if a.next >= a.limit {
		return 0, 0, errFull
	}
	got = min(n, room, a.limit-a.next)
	start = a.next
	a.next += got
	if !a.dry {
		a.mark(start, got, meta)
	}
	return start, got, nil
}

// contig takes exactly n contiguous blocks, leaving free any blocks it
// steps over to find them.
func (a *allocator) contig(n uint64, meta bool) (uint64, error) {
	for {
		room := a.skip()
		if room >= n {
			break
		}
		a.next += room
	}
	if a.next+n > a.limit {
		return 0, errFull
	}
	start := a.next
	a.next += n
	if !a.dry {
		a.mark(start, n, meta)
	}
	return start, nil
}

// extents allocates n blocks as extents from logical block 0.
func (a *allocator) extents(n uint64, meta bool, ext []extent) ([]extent, error) {
	for l := uint64(0); l < n; {
		p, got, err := a.alloc(n-l, meta)
		if err != nil {
			return ext, err
		}
		ext = appendRun(ext, l, p, got)
		l += got
	}
	return ext, nil
}

// treeBlocks allocates the extent tree blocks for ext.
func (a *allocator) treeBlocks(ext []extent, blocks []uint64) ([]uint64, error) {
	for range treeBlockCount(len(ext)) {
		p, _, err := a.alloc(1, true)
		if err != nil {
			return blocks, err
		}
		blocks = append(blocks, p)
	}
	return blocks, nil
}

func (a *allocator) mark(start, n uint64, meta bool) {
	if a.bitmap != nil {
		for b := start; b < start+n; b++ {
			a.bitmap[b/8] |= 1 << (b % 8)
		}
	}
	if meta && n > 0 {
		off, length := int64(start)*BlockSize, int64(n)*BlockSize
		if k := len(a.meta) - 1; k >= 0 && a.meta[k].Offset+a.meta[k].Length == off {
			a.meta[k].Length += length
		} else {
			a.meta = append(a.meta, blockmap.Extent{Offset: off, Length: length})
		}
	}
}

// layout is where everything goes.
type layout struct {
	geometry
	bbitmap, ibitmap, itable []uint64
	dataStart                uint64 // first block of file data
	used                     uint64 // blocks up to the end of file data (an upper bound with Sparse)
	alloc                    *allocator
}

// plan places the metadata for geometry g and counts the file data. With
// final set, the allocator marks the block bitmap and the layout is the
// one written.
func (b *builder) plan(g geometry, final bool) (*layout, error) {
	limit := uint64(maxBlocks)
	if final {
		limit = g.blocks
	}
	a := newAllocator(g, limit)
	l := &layout{geometry: g, alloc: a}
	if final {
		a.bitmap = make([]byte, uint64(g.groups)*blocksPerGroup/8)
		for _, s := range a.backups {
			a.mark(s, 1+uint64(g.gdtBlocks), true)
		}
	}
	a.next = 1 + uint64(g.gdtBlocks)
	// (1) bitmaps and inode tables of all groups, packed (flex_bg)
	l.bbitmap = make([]uint64, g.groups)
	l.ibitmap = make([]uint64, g.groups)
	l.itable = make([]uint64, g.groups)
	var err error
	for i := range l.bbitmap {
		if l.bbitmap[i], err = a.contig(1, true); err != nil {
			return nil, err
		}
	}
	for i := range l.ibitmap {
		if l.ibitmap[i], err = a.contig(1, true); err != nil {
			return nil, err
		}
	}
	for i := range l.itable {
		if l.itable[i], err = a.contig(g.itableBlocks(), true); err != nil {
			return nil, err
		}
	}
	// (2) journal
	b.nodes[journalIno] = nil
	if g.journal > 0 {
		jn := &node{ino: journalIno, links: 1, mtime: b.defaultMtime(), in: &tree.Inode{Type: tree.Regular, Perm: 0o600,
			Mtime: b.opts.Mtime, Size: int64(g.journal) * BlockSize}}
		if jn.ext, err = a.extents(g.journal, true, nil); err != nil {
			return nil, err
		}
		if jn.treeBlocks, err = a.treeBlocks(jn.ext, nil); err != nil {
			return nil, err
		}
		jn.dataBlocks = g.journal
		b.nodes[journalIno] = jn
	}
	// (3) directories, slow symlinks, attribute blocks
	for _, n := range b.nodes {
		if n == nil {
			continue
		}
		var nb uint64
		switch {
		case n.in.Type == tree.Dir:
			nb = n.dirBlocks()
		case n.in.Type == tree.Symlink && !fastSymlink(n.in):
			nb = 1
		default:
			continue
		}
		if n.ext, err = a.extents(nb, true, n.ext[:0]); err != nil {
			return nil, err
		}
		if n.treeBlocks, err = a.treeBlocks(n.ext, n.treeBlocks[:0]); err != nil {
			return nil, err
		}
		n.dataBlocks = nb
	}
	for _, xb := range b.xblocks {
		if xb.blk, _, err = a.alloc(1, true); err != nil {
			return nil, err
		}
	}
	l.dataStart = a.next
	// (4) file data and extent trees, counted without holes
	a.dry = true
	if b.opts.Sparse {
		a.limit = maxBlocks // holes may make it fit; the write finds out
	}
	var ext []extent
	for _, n := range b.nodes {
		if n == nil || n.in.Type != tree.Regular || n.ino == journalIno {
			continue
		}
		if ext, err = a.extents(blocksFor(n.in.Size), false, ext[:0]); err != nil {
			return nil, err
		}
		for range treeBlockCount(len(ext)) {
			if _, _, err = a.alloc(1, true); err != nil {
				return nil, err
			}
		}
	}
	l.used = a.next
	a.dry = false
	a.next, a.limit = l.dataStart, limit
	return l, nil
}

// size picks the geometry: the one Options.Size gives, or the smallest
// that holds the tree.
func (b *builder) size() (*layout, error) {
	if b.opts.Size == 0 {
		return b.fit()
	}
	blocks := uint64(b.opts.Size / BlockSize)
	if groups := groupsFor(blocks); groups > 1 {
		// Drop a last group too small to be worth its metadata, as mke2fs.
		g := geometry{gdtBlocks: gdtBlocksFor(groups)}
		if rem := blocks - uint64(groups-1)*blocksPerGroup; rem < g.overhead(groups-1)+50 {
			blocks = uint64(groups-1) * blocksPerGroup
		}
	}
	g, err := b.geometryFor(blocks, 0)
	var l *layout
	if err == nil {
		l, err = b.plan(g, true)
	}
	if errors.Is(err, errFull) {
		need, ferr := b.fit()
		if ferr != nil {
			return nil, ferr
		}
		return nil, fmt.Errorf("%w: %d bytes needed, %d bytes given", ErrImageFull, need.blocks*BlockSize, b.opts.Size)
	}
	return l, err
}

// fit finds the smallest geometry for the tree: exact in read-only mode,
// with slack in writable mode.
func (b *builder) fit() (*layout, error) {
	if b.opts.ReadOnly {
		groups := max(1, uint32((b.inodesNeeded()+blocksPerGroup-1)/blocksPerGroup))
		for range 64 {
			g, err := b.geometryFor(0, groups)
			if err != nil {
				return nil, err
			}
			l, err := b.plan(g, false)
			if err != nil {
				return nil, err
			}
			need := groupsFor(l.used)
			if need > groups {
				groups = need
				continue
			}
			g.blocks = l.used
			if need < groups { // the last group would be empty: keep a small one
				g.blocks = uint64(groups-1)*blocksPerGroup + g.overhead(groups-1) + 16
			}
			return b.plan(g, true)
		}
		return nil, fmt.Errorf("ext4: sizing did not converge")
	}
	blocks := uint64(2048)
	for range 64 {
		g, err := b.geometryFor(blocks, 0)
		if errors.Is(err, errFull) { // more inodes than the groups hold
			blocks = uint64(g.groups)*blocksPerGroup + blocksPerGroup/2
			continue
		}
		if err != nil {
			return nil, err
		}
		l, err := b.plan(g, false)
		if err != nil {
			return nil, err
		}
		want := l.used + max(l.used/4, 2048)
		if groups := groupsFor(want); groups > 1 {
			g2 := geometry{gdtBlocks: gdtBlocksFor(groups)}
			want = max(want, uint64(groups-1)*blocksPerGroup+g2.overhead(groups-1)+50)
		}
		if want <= blocks {
			return b.plan(g, true)
		}
		blocks = want
	}
	return nil, fmt.Errorf("ext4: sizing did not converge")
}
