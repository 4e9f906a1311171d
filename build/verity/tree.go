package verity

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// chunkBytes is how much data one worker reads and hashes at a time.
const chunkBytes = 1 << 20

// ReadWriterAt is a device that Format reads the data from and writes the
// hash area to, such as an *os.File.
type ReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// workers is the number of goroutines that hash.
func workers() int { return runtime.GOMAXPROCS(0) }

// runChunks calls fn(worker, c) for every chunk c in [0, n) on all cores.
// Chunks are handed out in increasing order; after the first error no new
// chunk starts, and the error of the lowest failing chunk is returned, so
// an fn that reports the first bad block of its chunk yields the first bad
// block overall.
func runChunks(w int, n uint64, fn func(worker int, c uint64) error) error {
	if uint64(w) > n {
		w = int(n)
	}
	var (
		next    atomic.Uint64
		failed  atomic.Bool
		mu      sync.Mutex
		errAt   uint64
		firstEr error
		wg      sync.WaitGroup
	)
	for worker := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				c := next.Add(1) - 1
				if c >= n {
					return
				}
				if err := fn(worker, c); err != nil {
					mu.Lock()
					if firstEr == nil || c < errAt {
						firstEr, errAt = err, c
					}
					mu.Unlock()
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstEr
}

// hashData reads the data blocks of g at dataOffset in chunks on all cores
// and calls check(hasher, block index, block) for each block.
// check returns a non-nil error to stop its chunk.
func hashData(r io.ReaderAt, dataOffset int64, g *geometry, salt []byte,
	check func(h *hasher, b uint64, block []byte) error) error {
	per := min(max(uint64(chunkBytes/g.dataBS), 1), g.dataBlocks)
	chunks := (g.dataBlocks-1)/per + 1
	w := workers()
	bufs := make([][]byte, w)
	hs := make([]*hasher, w)
	return runChunks(w, chunks, func(worker int, c uint64) error {
		if bufs[worker] == nil {
			bufs[worker] = make([]byte, per*uint64(g.dataBS))
			hs[worker] = newHasher(salt)
		}
		first := c * per
		n := min(per, g.dataBlocks-first)
		buf := bufs[worker][:n*uint64(g.dataBS)]
		off := dataOffset + int64(first)*g.dataBS
		if isHole(r, off, int64(len(buf))) {
			clear(buf) // a hole of a sparse file reads as zeros: skip the read
		} else if err := readFull(r, buf, off); err != nil {
			return fmt.Errorf("verity: reading data blocks %d-%d at byte 0x%x: %w", first, first+n-1, off, err)
		}
		for i := range n {
			if err := check(hs[worker], first+i, buf[uint64(g.dataBS)*i:uint64(g.dataBS)*(i+1)]); err != nil {
				return err
			}
		}
		return nil
	})
}

// isHole reports whether [off, off+n) of r is a hole of a sparse file (no
// data: it reads as zeros). A reader without a file descriptor (an Fd
// method, as *os.File has), or a filesystem without SEEK_DATA, has no
// holes.
func isHole(r io.ReaderAt, off, n int64) bool {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true // no data at or after off
	}
	return err == nil && data >= off+n
}

// hashBlocksChunk is how many in-memory hash blocks one worker takes at a time.
const hashBlocksChunk = 64

// hashLevel calls check(hasher, b, block) for every block of src (a level
// held in memory, n blocks of size bs) on all cores.
func hashLevel(src []byte, bs int64, n uint64, salt []byte,
	check func(h *hasher, b uint64, block []byte) error) error {
	chunks := (n-1)/hashBlocksChunk + 1
	w := workers()
	hs := make([]*hasher, w)
	return runChunks(w, chunks, func(worker int, c uint64) error {
		if hs[worker] == nil {
			hs[worker] = newHasher(salt)
		}
		for b := c * hashBlocksChunk; b < min(n, (c+1)*hashBlocksChunk); b++ {
			if err := check(hs[worker], b, src[int64(b)*bs:int64(b+1)*bs]); err != nil {
				return err
			}
		}
		return nil
	})
}

// Format hashes the p.DataBlocks data blocks at dataOffset of dev and
// writes, at hashOffset, the veritysetup superblock (padded to a hash
// block) followed by the hash tree, exactly as `veritysetup format
// --hash-offset=hashOffset` lays it out. It returns the root hash.
// hashOffset must be a multiple of 512 and the data and hash areas must
// not overlap; the hash area is HashTreeSize(p.DataBlocks) bytes for the
// default block sizes and a 4096-aligned hashOffset.
func Format(dev ReadWriterAt, dataOffset, hashOffset int64, p Params) (rootHash []byte, err error) {
	p = p.withDefaults()
	sb := p.superblock()
	sbBytes, err := sb.MarshalBinary()
	if err != nil {
		return nil, err
	}
	g, err := newGeometry(p.DataBlockSize, p.HashBlockSize, p.DataBlocks, hashOffset)
	if err != nil {
		return nil, err
	}
	if err := g.checkOffsets(dataOffset, hashOffset); err != nil {
		return nil, err
	}

	// The whole hash area in memory: superblock, padding, levels.
	area := make([]byte, g.end-hashOffset)
	copy(area, sbBytes)
	level := func(i int) []byte {
		start := g.levelStart[i] - hashOffset
		return area[start : start+int64(g.levelBlocks[i])*g.hashBS]
	}
	perBlock := uint64(1) << g.perBlockBits
	// digestAt returns where the hash of block b of the level below level i
	// goes inside level i: hash blocks hold perBlock hashes, zero padded.
	digestAt := func(dst []byte, b uint64) []byte {
		off := (b/perBlock)*uint64(g.hashBS) + (b%perBlock)*DigestSize
		return dst[off : off+DigestSize]
	}

	root := make([]byte, DigestSize)
	levels := len(g.levelBlocks)
	var bottom []byte
	if levels > 0 {
		bottom = level(0)
	}
	err = hashData(dev, dataOffset, g, p.Salt, func(h *hasher, b uint64, block []byte) error {
		if levels == 0 {
			h.sum(root, block)
		} else {
			h.sum(digestAt(bottom, b), block)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := 1; i < levels; i++ {
		src, dst := level(i-1), level(i)
		err := hashLevel(src, g.hashBS, g.levelBlocks[i-1], p.Salt, func(h *hasher, b uint64, block []byte) error {
			h.sum(digestAt(dst, b), block)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if levels > 0 {
		newHasher(p.Salt).sum(root, level(levels-1))
	}
	// The superblock, then the tree. The rest of the superblock's block is
	// left as it is: neither veritysetup nor the kernel reads it, and kiln
	// keeps a slot's release record there.
	if _, err := dev.WriteAt(area[:SuperblockSize], hashOffset); err != nil {
		return nil, fmt.Errorf("verity: writing the superblock at byte 0x%x: %w", hashOffset, err)
	}
	if tree := area[g.treeStart-hashOffset:]; len(tree) > 0 {
		if _, err := dev.WriteAt(tree, g.treeStart); err != nil {
			return nil, fmt.Errorf("verity: writing the hash tree at byte 0x%x: %w", g.treeStart, err)
		}
	}
	return root, nil
}

// Verify reads the superblock at hashOffset of dev, checks it against the
// device, and recomputes the whole tree on all cores: the top block
// against rootHash, every hash block against the level above it (and its
// zero padding), and every data block at dataOffset against its hash.
// It returns the superblock, or an error: a *BlockError (wrapping
// ErrMismatch) names the first bad hash block, top level first, or else
// the first bad data block; ErrRootHashMismatch means the top block does
// not match rootHash.
func Verify(dev io.ReaderAt, dataOffset, hashOffset int64, rootHash []byte) (*Superblock, error) {
	if len(rootHash) != DigestSize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadRootHash, len(rootHash), DigestSize)
	}
	sb, err := ReadSuperblock(dev, hashOffset)
	if err != nil {
		return nil, err
	}
	g, err := newGeometry(sb.DataBlockSize, sb.HashBlockSize, sb.DataBlocks, hashOffset)
	if err != nil {
		return nil, err
	}
	if err := g.checkOffsets(dataOffset, hashOffset); err != nil {
		return nil, err
	}
	// Never allocate for a tree the device cannot hold: probe the last
	// byte of the data and of the hash area first.
	dataEnd, _ := g.dataEnd(dataOffset)
	var probe [1]byte
	if err := readFull(dev, probe[:], dataEnd-1); err != nil {
		return nil, fmt.Errorf("%w: %d data blocks of %d bytes at byte 0x%x end at 0x%x: %w",
			ErrDeviceTooSmall, sb.DataBlocks, sb.DataBlockSize, dataOffset, dataEnd, err)
	}
	if err := readFull(dev, probe[:], g.end-1); err != nil {
		return nil, fmt.Errorf("%w: hash area at byte 0x%x ends at 0x%x: %w",
			ErrDeviceTooSmall, hashOffset, g.end, err)
	}

	levels := len(g.levelBlocks)
	tree := make([]byte, g.end-g.treeStart)
	if err := readFull(dev, tree, g.treeStart); err != nil {
		return nil, fmt.Errorf("verity: reading hash tree at byte 0x%x: %w", g.treeStart, err)
	}
	level := func(i int) []byte {
		start := g.levelStart[i] - g.treeStart
		return tree[start : start+int64(g.levelBlocks[i])*g.hashBS]
	}
	perBlock := uint64(1) << g.perBlockBits
	digestAt := func(src []byte, b uint64) []byte {
		off := (b/perBlock)*uint64(g.hashBS) + (b%perBlock)*DigestSize
		return src[off : off+DigestSize]
	}
	// checkPadding checks that level i (hashes of n blocks below) is zero
	// after its last hash.
	checkPadding := func(i int, n uint64) error {
		src := level(i)
		last := (n - 1) / perBlock
		tail := src[(n-1)/perBlock*uint64(g.hashBS)+((n-1)%perBlock+1)*DigestSize:]
		for _, c := range tail {
			if c != 0 {
				return &BlockError{Level: i + 1, Block: last, Offset: g.levelStart[i] + int64(last)*g.hashBS, Padding: true}
			}
		}
		return nil
	}

	// (1) The top block against the root hash.
	var sum [DigestSize]byte
	if levels > 0 {
		newHasher(sb.Salt).sum(sum[:], level(levels-1))
		if !bytes.Equal(sum[:], rootHash) {
			return nil, fmt.Errorf("%w: top block at byte 0x%x hashes to %x, want %x",
				ErrRootHashMismatch, g.levelStart[levels-1], sum, rootHash)
		}
	}
	// (2) The zero padding after the last hash of each level, top down.
	for i := levels - 1; i >= 0; i-- {
		n := g.dataBlocks
		if i > 0 {
			n = g.levelBlocks[i-1]
		}
		if err := checkPadding(i, n); err != nil {
			return nil, err
		}
	}
	// (3) Each hash level against the one above it, top down.
	for i := levels - 1; i >= 1; i-- {
		src, want := level(i-1), level(i)
		err := hashLevel(src, g.hashBS, g.levelBlocks[i-1], sb.Salt, func(h *hasher, b uint64, block []byte) error {
			if !h.matches(block, digestAt(want, b)) {
				return &BlockError{Level: i, Block: b, Offset: g.levelStart[i-1] + int64(b)*g.hashBS}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	// (4) The data blocks against the bottom level (or the root hash).
	var bottom []byte
	if levels > 0 {
		bottom = level(0)
	}
	err = hashData(dev, dataOffset, g, sb.Salt, func(h *hasher, b uint64, block []byte) error {
		want := rootHash
		if levels > 0 {
			want = digestAt(bottom, b)
		}
		if !h.matches(block, want) {
			return &BlockError{Level: 0, Block: b, Offset: dataOffset + int64(b)*g.dataBS}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sb, nil
}
