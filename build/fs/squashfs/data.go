package squashfs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/kiln-os/kiln/build/blockmap"
)

// uncompressedBlock is set in a data or fragment block's size word when the
// block is stored uncompressed (SQUASHFS_COMPRESSED_BIT_BLOCK).
const uncompressedBlock = 1 << 24

// fragment is one fragment block: where it lies and its size word.
type fragment struct {
	start int64
	word  uint32
}

// blockJob is one block on its way through the pipeline: the reader fills
// in, a worker compresses it, the writer stores it in sequence.
type blockJob struct {
	file  *fileRec // nil for a fragment block
	index int      // block number within the file
	in    []byte   // uncompressed bytes
	inBuf *[]byte  // pooled buffer behind in
	out   *[]byte  // pooled buffer for the compressed bytes
	data  []byte   // bytes to store: compressed or raw; nil when sparse
	word  uint32   // on-disk size word
	done  chan struct{}
}

// compress fills data and word: an all-zero file block becomes a sparse
// block, a block that does not shrink is stored raw.
func (j *blockJob) compress(c compressor, zero []byte) {
	if j.file != nil && bytes.Equal(j.in, zero[:len(j.in)]) {
		j.data, j.word = nil, 0
		return
	}
	*j.out = c.compress((*j.out)[:0], j.in)
	if n := len(*j.out); n < len(j.in) {
		j.data, j.word = *j.out, uint32(n)
		return
	}
	j.data, j.word = j.in, uint32(len(j.in))|uncompressedBlock
}

// pipeline is the data stage: one reader goroutine cuts files into blocks
// and packs tail ends into fragment blocks; Workers goroutines compress;
// the calling goroutine writes the blocks in the order the reader made
// them. At most inflight blocks exist at a time, so memory stays bounded
// whatever the file sizes.
type pipeline struct {
	bs    int
	files []*fileRec
	order chan *blockJob // every job, in sequence, to the writer
	work  chan *blockJob // every job, to the workers
	quit  chan struct{}  // closed by the writer when it fails
	in    sync.Pool      // *[]byte of len bs
	out   sync.Pool      // *[]byte of cap > bs
	zero  []byte         // bs zero bytes

	// writer state
	w     *bufWriter
	pos   int64
	frags []fragment
}

// errStopped ends the reader after the writer failed; it is never returned.
var errStopped = errors.New("squashfs: stopped")

// writeData writes every file's data blocks and the fragment blocks from
// offset start on. It returns the fragment table and the end of the data.
func writeData(w *bufWriter, files []*fileRec, o Options, start int64) ([]fragment, int64, error) {
	bs := o.BlockSize
	// Enough blocks in flight to keep every worker busy while the writer
	// waits for the oldest (a worker may be descheduled on a busy machine),
	// within about 64 MiB of buffers.
	inflight := max(2*o.Workers+2, min(8*o.Workers+16, (64<<20)/(2*bs)))
	p := &pipeline{
		bs:    bs,
		files: files,
		order: make(chan *blockJob, inflight),
		work:  make(chan *blockJob, inflight),
		quit:  make(chan struct{}),
		zero:  make([]byte, bs),
		w:     w,
		pos:   start,
	}
	p.in.New = func() any { b := make([]byte, bs); return &b }
	p.out.New = func() any { b := make([]byte, 0, bs+bs/8+64); return &b }

	comps := make([]compressor, o.Workers)
	for i := range comps {
		c, err := newCompressor(o)
		if err != nil {
			return nil, 0, err
		}
		comps[i] = c
	}
	var workers sync.WaitGroup
	for _, c := range comps {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range p.work {
				j.compress(c, p.zero)
				close(j.done)
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() { readErr <- p.read() }()

	var werr error
	for j := range p.order {
		if werr != nil {
			continue // draining after a failure; j may never be compressed
		}
		<-j.done
		if werr = p.store(j); werr != nil {
			close(p.quit)
		}
		p.in.Put(j.inBuf)
		p.out.Put(j.out)
	}
	rerr := <-readErr
	workers.Wait()
	if werr != nil {
		return nil, 0, fmt.Errorf("squashfs: writing data: %w", werr)
	}
	if rerr != nil {
		return nil, 0, rerr
	}
	return p.frags, p.pos, nil
}

// store writes one compressed block at the current position.
func (p *pipeline) store(j *blockJob) error {
	if f := j.file; f != nil {
		if j.index == 0 {
			f.start = p.pos
		}
		f.sizes = append(f.sizes, j.word)
		if j.data == nil {
			f.sparse += int64(p.bs)
			return nil
		}
		n := int64(len(j.data))
		if k := len(f.ext) - 1; k >= 0 && f.ext[k].Offset+f.ext[k].Length == p.pos {
			f.ext[k].Length += n
		} else {
			f.ext = append(f.ext, blockmap.Extent{Offset: p.pos, Length: n})
		}
	} else {
		p.frags = append(p.frags, fragment{start: p.pos, word: j.word})
	}
	if err := p.w.writeAt(j.data, p.pos); err != nil {
		return err
	}
	p.pos += int64(len(j.data))
	return nil
}

// emit hands a block to the writer (in sequence) and to the workers.
func (p *pipeline) emit(f *fileRec, index int, buf *[]byte, n int) error {
	j := &blockJob{file: f, index: index, in: (*buf)[:n], inBuf: buf,
		out: p.out.Get().(*[]byte), done: make(chan struct{})}
	select {
	case p.order <- j:
	case <-p.quit:
		return errStopped
	}
	select {
	case p.work <- j:
	case <-p.quit:
		return errStopped
	}
	return nil
}

// contentKey identifies content for duplicate detection: the full-block
// part of a file (n is the block count) or a tail end (n is its length).
type contentKey struct {
	n   int64
	sum [sha256.Size]byte
}

// prefixLen is how much of a file's first block the reader hashes up front
// to find the files whose block parts may be duplicates.
const prefixLen = 4096

// read runs the reader: every file in order, full blocks to the pipeline,
// tail ends into the open fragment block.
//
// Duplicates are found as mksquashfs finds them, at two levels: a file
// whose full blocks equal an earlier file's shares those blocks, and a
// tail end equal to an earlier one shares its place in a fragment block
// (a file equal to an earlier one shares both). Tails are hashed as they
// are read. Block parts are hashed (one extra read) only for the files
// whose block count and first 4 KiB match another file's.
func (p *pipeline) read() (err error) {
	defer close(p.work)
	defer close(p.order)
	defer func() {
		if errors.Is(err, errStopped) {
			err = nil
		}
	}()
	r := &fileReader{
		p:      p,
		frag:   p.in.Get().(*[]byte),
		hold:   p.in.Get().(*[]byte),
		blocks: map[contentKey]*fileRec{},
		tails:  map[contentKey]*fileRec{},
	}
	candidates, err := r.blockCandidates()
	if err != nil {
		return err
	}
	for _, f := range p.files {
		if err := r.file(f, candidates[f]); err != nil {
			return err
		}
	}
	if r.fragLen > 0 {
		return p.emit(nil, 0, r.frag, r.fragLen)
	}
	return nil
}

// fileReader is the reader goroutine's state.
type fileReader struct {
	p       *pipeline
	frag    *[]byte // the open fragment block
	fragLen int
	nfrags  int     // fragment blocks emitted so far
	hold    *[]byte // a tail end read ahead
	blocks  map[contentKey]*fileRec
	tails   map[contentKey]*fileRec
}

// blockCandidates returns the files with full blocks whose block count
// and first prefixLen bytes equal another file's.
func (r *fileReader) blockCandidates() (map[*fileRec]bool, error) {
	bs := int64(r.p.bs)
	count := map[int64]int{}
	for _, f := range r.p.files {
		if n := f.inode.Size / bs; n > 0 {
			count[n]++
		}
	}
	groups := map[contentKey][]*fileRec{}
	buf := make([]byte, prefixLen)
	for _, f := range r.p.files {
		n := f.inode.Size / bs
		if n == 0 || count[n] < 2 {
			continue
		}
		if err := readContent(f, buf); err != nil {
			return nil, err
		}
		k := contentKey{n: n, sum: sha256.Sum256(buf)}
		groups[k] = append(groups[k], f)
	}
	c := map[*fileRec]bool{}
	for _, g := range groups {
		if len(g) > 1 {
			for _, f := range g {
				c[f] = true
			}
		}
	}
	return c, nil
}

// file cuts one file into blocks and its tail end. candidate says whether
// its block part may duplicate another file's.
func (r *fileReader) file(f *fileRec, candidate bool) error {
	p := r.p
	size := f.inode.Size
	if size == 0 {
		if f.inode.Content == nil {
			return nil
		}
		rc, err := open(f)
		if err != nil {
			return err
		}
		defer rc.Close()
		return checkEnd(f, rc)
	}
	nblocks, tail := size/int64(p.bs), int(size%int64(p.bs))
	var tailData []byte // the tail end, when already read
	if candidate {
		sum, err := r.hashBlocks(f, nblocks, (*r.hold)[:tail])
		if err != nil {
			return err
		}
		tailData = (*r.hold)[:tail]
		k := contentKey{n: nblocks, sum: sum}
		if orig := r.blocks[k]; orig != nil {
			f.blocksOf = orig
		} else {
			r.blocks[k] = f
		}
	}
	if f.blocksOf == nil || (tail > 0 && tailData == nil) {
		rc, err := open(f)
		if err != nil {
			return err
		}
		defer rc.Close()
		for k := 0; k < int(nblocks); k++ {
			buf := p.in.Get().(*[]byte)
			if err := readFull(f, rc, *buf); err != nil {
				return err
			}
			if err := p.emit(f, k, buf, p.bs); err != nil {
				return err
			}
		}
		if tail > 0 && tailData == nil {
			tailData = (*r.hold)[:tail]
			if err := readFull(f, rc, tailData); err != nil {
				return err
			}
		} else if tail > 0 {
			// The tail was read by hashBlocks; skip it here.
			if _, err := io.CopyN(io.Discard, rc, int64(tail)); err != nil {
				return fmt.Errorf("%w: %s (%d bytes)", ErrShortContent, f.paths[0], size)
			}
		}
		if err := checkEnd(f, rc); err != nil {
			return err
		}
	}
	if tail == 0 {
		return nil
	}
	k := contentKey{n: int64(tail), sum: sha256.Sum256(tailData)}
	if orig := r.tails[k]; orig != nil {
		f.frag, f.fragOff = orig.frag, orig.fragOff
		return nil
	}
	r.tails[k] = f
	if r.fragLen+tail > p.bs {
		if err := p.emit(nil, 0, r.frag, r.fragLen); err != nil {
			return err
		}
		r.nfrags++
		r.frag, r.fragLen = p.in.Get().(*[]byte), 0
	}
	f.frag, f.fragOff = uint32(r.nfrags), uint32(r.fragLen)
	r.fragLen += copy((*r.frag)[r.fragLen:], tailData)
	return nil
}

// hashBlocks reads a whole file: it returns the SHA-256 of its first
// nblocks blocks and reads the rest into tail.
func (r *fileReader) hashBlocks(f *fileRec, nblocks int64, tail []byte) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	rc, err := open(f)
	if err != nil {
		return sum, err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(rc, nblocks*int64(r.p.bs)))
	if err != nil {
		return sum, fmt.Errorf("squashfs: reading %s: %w", f.paths[0], err)
	}
	if n != nblocks*int64(r.p.bs) {
		return sum, fmt.Errorf("%w: %s (%d bytes)", ErrShortContent, f.paths[0], f.inode.Size)
	}
	if err := readFull(f, rc, tail); err != nil {
		return sum, err
	}
	if err := checkEnd(f, rc); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
}

// open opens a file's content; nil content reads as zeros.
func open(f *fileRec) (io.ReadCloser, error) {
	if f.inode.Content == nil {
		return io.NopCloser(io.LimitReader(zeroReader{}, f.inode.Size)), nil
	}
	rc, err := f.inode.Content.Open()
	if err != nil {
		return nil, fmt.Errorf("squashfs: %s: %w", f.paths[0], err)
	}
	return rc, nil
}

// readFull fills buf from r, turning a short read into ErrShortContent.
func readFull(f *fileRec, r io.Reader, buf []byte) error {
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %s (%d bytes)", ErrShortContent, f.paths[0], f.inode.Size)
		}
		return fmt.Errorf("squashfs: reading %s: %w", f.paths[0], err)
	}
	return nil
}

// checkEnd refuses content that goes on past the file's size (a file that
// grew while it was read): the image would silently hold a prefix.
func checkEnd(f *fileRec, r io.Reader) error {
	var one [1]byte
	n, err := io.ReadFull(r, one[:])
	if n > 0 {
		return fmt.Errorf("%w: %s: more than its %d bytes", ErrLongContent, f.paths[0], f.inode.Size)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("squashfs: reading %s: %w", f.paths[0], err)
	}
	return nil
}

// readContent fills buf from the start of a file.
func readContent(f *fileRec, buf []byte) error {
	rc, err := open(f)
	if err != nil {
		return err
	}
	defer rc.Close()
	return readFull(f, rc, buf)
}

// zeroReader reads zeros forever.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
