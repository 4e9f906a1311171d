package payload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/kiln-os/kiln/build/payload/bsdiff"
	um "github.com/kiln-os/kiln/build/payload/updatemetadata"
	"github.com/kiln-os/kiln/build/verity"
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Partition names the partition to apply ("" for the only one).
	Partition string
	// Verifier checks the metadata and payload signatures before anything
	// is written. Apply refuses to run without one unless SkipSignature.
	Verifier      Verifier
	SkipSignature bool
	// CheckVersion, when set, sees the payload's release version before
	// anything is written; an error (a downgrade) stops Apply.
	CheckVersion func(version string) error
	// Progress, when set, is called after each operation.
	Progress func(done, total int)
}

// ApplyResult describes a finished Apply.
type ApplyResult struct {
	Partition    string
	Version      string
	Ops          int
	BytesWritten int64
	NewHash      [32]byte
}

// Target is the partition Apply writes: the passive slot. Apply reads it
// back only to check the final hash.
type Target interface {
	io.WriterAt
	io.ReaderAt
}

// Apply writes a payload's partition into dst. For a delta, src is the
// installed (old) partition; a full payload needs none.
//
// Before writing anything it checks, in order: every operation type is one
// it executes; the signatures (unless opts.SkipSignature) and every
// operation's data hash, in one pass over the payload; the version hook;
// and that src's SHA-256 matches old_partition_info. It then runs the
// operations in order, checking each data blob again as it reads it and
// each source's src_sha256_hash, and finally the SHA-256 of the written
// partition against new_partition_info.
//
// Memory: Apply buffers one operation at a time — its data blob, and for
// SOURCE_COPY its source blocks, for SOURCE_BSDIFF its source, patch and
// output — which Open bounds by MaxOpBytes (256 MiB); compressed data is
// decompressed straight into dst through a 1 MiB buffer. kiln's planner
// keeps operations below about 30 MiB.
//
// Apply is restartable: operations read only src and the payload, never
// dst, so running it again after an interruption produces the same
// partition.
func Apply(ctx context.Context, p *Payload, src io.ReaderAt, dst Target, opts ApplyOptions) (*ApplyResult, error) {
	part, err := p.Partition(opts.Partition)
	if err != nil {
		return nil, err
	}
	for i, op := range part.Ops {
		if t := OpType(op.GetType()); !t.applicable() {
			return nil, fmt.Errorf("%w: operation %d is %v", ErrUnsupportedOp, i, t)
		}
	}
	if err := checkOpsCover(part); err != nil {
		return nil, err
	}
	if opts.Verifier == nil && !opts.SkipSignature {
		return nil, errors.New("payload: apply: no signature verifier (set SkipSignature to apply an unchecked payload)")
	}
	if err := p.Verify(ctx, opts.Verifier); err != nil {
		return nil, err
	}
	if opts.CheckVersion != nil {
		if err := opts.CheckVersion(part.Version); err != nil {
			return nil, err
		}
	}
	if part.Old != nil {
		if src == nil {
			return nil, ErrNoSource
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(src, 0, part.Old.Size)); err != nil {
			return nil, fmt.Errorf("payload: reading source partition: %w", err)
		}
		if !bytes.Equal(h.Sum(nil), part.Old.Hash[:]) {
			return nil, ErrSourceHash
		}
	}

	a := applier{p: p, src: src, dst: dst, buf: make([]byte, 1<<20)}
	res := &ApplyResult{Partition: part.Name, Version: part.Version}
	for i, op := range part.Ops {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := a.do(op); err != nil {
			return res, fmt.Errorf("payload: partition %s operation %d (%v): %w", part.Name, i, OpType(op.GetType()), err)
		}
		res.Ops++
		if opts.Progress != nil {
			opts.Progress(i+1, len(part.Ops))
		}
	}
	res.BytesWritten = a.written
	// The verity tree: when the client computes it, its levels are not in
	// the payload, so compute them from the data just written, with the
	// superblock the payload wrote; when the payload carries it, check the
	// tree it wrote. Either way the root is checked before the
	// whole-partition hash.
	if v := part.Verity; v != nil {
		var err error
		if part.VerityTree == VerityTreeByClient {
			err = writeVerityTree(dst, v)
		} else if _, err = verity.Verify(dst, 0, v.HashOffset, v.RootHash); err != nil {
			err = fmt.Errorf("%w: the verity tree the payload wrote: %w", ErrVerityRoot, err)
		}
		if err != nil {
			return res, fmt.Errorf("payload: partition %s: %w", part.Name, err)
		}
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(dst, 0, part.New.Size), a.buf); err != nil {
		return res, fmt.Errorf("payload: reading back the written partition: %w", err)
	}
	h.Sum(res.NewHash[:0])
	if res.NewHash != part.New.Hash {
		return res, ErrNewHash
	}
	return res, nil
}

type applier struct {
	p       *Payload
	src     io.ReaderAt
	dst     io.WriterAt
	buf     []byte
	written int64
}

func (a *applier) do(op *um.InstallOperation) error {
	t := OpType(op.GetType())
	dst := extentsOf(op.DstExtents)
	dstBytes := blocksOf(dst) * BlockSize
	var data []byte
	if n := op.GetDataLength(); n > 0 {
		data = make([]byte, n)
		if err := readAt(a.p.r, data, a.p.DataOffset+int64(op.GetDataOffset())); err != nil {
			return fmt.Errorf("reading data: %w", err)
		}
		if sum := sha256.Sum256(data); !bytes.Equal(sum[:], op.GetDataSha256Hash()) {
			return ErrDataHash
		}
	}
	w := &extentWriter{dst: a.dst, ext: dst}
	defer func() { a.written += w.n }()
	switch t {
	case OpReplace:
		if int64(len(data)) > dstBytes {
			return fmt.Errorf("%d bytes of data for %d bytes of destination", len(data), dstBytes)
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	case OpReplaceBZ, OpReplaceXZ, OpZstd:
		r, done, err := decompressor(t, data, dstBytes)
		if err != nil {
			return err
		}
		defer done()
		n, err := io.CopyBuffer(w, io.LimitReader(r, dstBytes+1), a.buf)
		if err != nil {
			return fmt.Errorf("decompressing: %w", err)
		}
		if n > dstBytes {
			return fmt.Errorf("data decompresses to more than the %d-byte destination", dstBytes)
		}
	case OpZero, OpDiscard:
	case OpSourceCopy, OpSourceBsdiff:
		srcData, err := a.readSource(op)
		if err != nil {
			return err
		}
		if t == OpSourceCopy {
			if _, err := w.Write(srcData); err != nil {
				return err
			}
			break
		}
		outLen := dstBytes
		if op.DstLength != nil {
			outLen = int64(op.GetDstLength())
		}
		out := make([]byte, outLen)
		if err := bsdiff.Patch(out, srcData, data); err != nil {
			return err
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: %v", ErrUnsupportedOp, t)
	}
	// Pad the rest of the destination with zeros (ZERO, DISCARD, and data
	// shorter than its blocks).
	return w.zeroRest(a.buf)
}

// ErrCoverage is returned by Apply for operations that leave blocks of the
// new partition unwritten (an operation dropped), before anything is
// written. (Overlapping destinations are refused by Open.)
var ErrCoverage = errors.New("payload: operations leave blocks of the new partition unwritten")

// checkOpsCover checks that the operations' destinations cover every
// block of the new partition.
func checkOpsCover(part *Partition) error {
	var dsts []Extent
	for _, op := range part.Ops {
		dsts = append(dsts, extentsOf(op.DstExtents)...)
	}
	if v := part.Verity; v != nil && part.VerityTree == VerityTreeByClient {
		// The tree's levels, after the superblock block, are computed by
		// Apply, not written by operations.
		dsts = append(dsts, Extent{Start: uint64(v.HashOffset)/BlockSize + 1, Blocks: v.TreeBlocks})
	}
	sort.Slice(dsts, func(i, j int) bool { return dsts[i].Start < dsts[j].Start })
	want := uint64(part.New.Size) / BlockSize
	next := uint64(0)
	for _, e := range dsts {
		if e.Start > next {
			return fmt.Errorf("%w: blocks %d to %d of partition %s", ErrCoverage, next, e.Start-1, part.Name)
		}
		next = max(next, e.Start+e.Blocks)
	}
	if next < want {
		return fmt.Errorf("%w: blocks %d to %d of partition %s", ErrCoverage, next, want-1, part.Name)
	}
	return nil
}

// Preview returns bytes [off, off+n) of the partition the payload writes,
// made in memory by the operations whose destinations meet that range:
// nothing is written anywhere. src is the old partition, for a delta.
// Install uses it to read the release record a payload is about to write
// before the first write. It checks what Apply checks of each operation
// it runs (data and source hashes); call it after Payload.Verify.
func Preview(p *Payload, partition string, src io.ReaderAt, off int64, n int) ([]byte, error) {
	part, err := p.Partition(partition)
	if err != nil {
		return nil, err
	}
	if off < 0 || n < 0 || off+int64(n) > part.New.Size {
		return nil, fmt.Errorf("payload: preview of bytes %d+%d outside the %d-byte partition", off, n, part.New.Size)
	}
	c := &capture{off: off, b: make([]byte, n)}
	a := applier{p: p, src: src, dst: c, buf: make([]byte, 1<<20)}
	for i, op := range part.Ops {
		meets := false
		for _, e := range extentsOf(op.DstExtents) {
			lo, hi := int64(e.Start)*BlockSize, int64(e.Start+e.Blocks)*BlockSize
			meets = meets || lo < off+int64(n) && off < hi
		}
		if !meets {
			continue
		}
		if err := a.do(op); err != nil {
			return nil, fmt.Errorf("payload: partition %s operation %d (%v): %w", part.Name, i, OpType(op.GetType()), err)
		}
	}
	return c.b, nil
}

// capture keeps what is written to its window [off, off+len(b)) and drops
// the rest.
type capture struct {
	off int64
	b   []byte
}

func (c *capture) WriteAt(p []byte, at int64) (int, error) {
	lo, hi := max(at, c.off), min(at+int64(len(p)), c.off+int64(len(c.b)))
	if lo < hi {
		copy(c.b[lo-c.off:hi-c.off], p[lo-at:hi-at])
	}
	return len(p), nil
}

func (c *capture) ReadAt(p []byte, at int64) (int, error) { return 0, io.EOF }

// readSource reads an operation's source blocks (the first src_length
// bytes when set) and checks them against src_sha256_hash.
func (a *applier) readSource(op *um.InstallOperation) ([]byte, error) {
	if a.src == nil {
		return nil, ErrNoSource
	}
	ext := extentsOf(op.SrcExtents)
	out := make([]byte, 0, blocksOf(ext)*BlockSize)
	for _, e := range ext {
		n := int(e.Blocks) * BlockSize
		out = out[:len(out)+n]
		if err := readAt(a.src, out[len(out)-n:], int64(e.Start)*BlockSize); err != nil {
			return nil, fmt.Errorf("reading source blocks %d+%d: %w", e.Start, e.Blocks, err)
		}
	}
	if h := op.GetSrcSha256Hash(); h != nil {
		if sum := sha256.Sum256(out); !bytes.Equal(sum[:], h) {
			return nil, ErrSourceOpHash
		}
	}
	if op.SrcLength != nil {
		out = out[:op.GetSrcLength()]
	}
	return out, nil
}

func extentsOf(es []*um.Extent) []Extent {
	out := make([]Extent, len(es))
	for i, e := range es {
		out[i] = Extent{Start: e.GetStartBlock(), Blocks: e.GetNumBlocks()}
	}
	return out
}

func blocksOf(es []Extent) int64 {
	var n int64
	for _, e := range es {
		n += int64(e.Blocks)
	}
	return n
}

// extentWriter writes a byte stream into a list of extents, in order.
type extentWriter struct {
	dst io.WriterAt
	ext []Extent
	i   int   // current extent
	off int64 // bytes written into it
	n   int64 // bytes written in total
}

func (w *extentWriter) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if w.i >= len(w.ext) {
			return total, errors.New("write past the destination extents")
		}
		e := w.ext[w.i]
		room := int64(e.Blocks)*BlockSize - w.off
		k := int(min(int64(len(p)), room))
		if _, err := w.dst.WriteAt(p[:k], int64(e.Start)*BlockSize+w.off); err != nil {
			return total, err
		}
		total += k
		w.n += int64(k)
		w.off += int64(k)
		p = p[k:]
		if w.off == int64(e.Blocks)*BlockSize {
			w.i++
			w.off = 0
		}
	}
	return total, nil
}

// zeroRest fills what is left of the extents with zeros.
func (w *extentWriter) zeroRest(buf []byte) error {
	clear(buf)
	for w.i < len(w.ext) {
		e := w.ext[w.i]
		room := int64(e.Blocks)*BlockSize - w.off
		if _, err := w.Write(buf[:min(int64(len(buf)), room)]); err != nil {
			return err
		}
	}
	return nil
}

// ErrVerityRoot is returned when the tree computed from the written data
// does not have the payload's root hash.
var ErrVerityRoot = errors.New("payload: verity root hash mismatch")

// writeVerityTree computes the dm-verity tree of the written data and writes it
// after the superblock block the payload's operations wrote, which it
// leaves as written (the block may hold more than the superblock).
func writeVerityTree(dst Target, v *Verity) error {
	sb, err := verity.ReadSuperblock(dst, v.HashOffset)
	if err != nil {
		return fmt.Errorf("verity superblock written by the payload: %w", err)
	}
	if sb.DataBlocks != v.DataBlocks || !bytes.Equal(sb.Salt, v.Salt) || sb.DataBlockSize != BlockSize || sb.HashBlockSize != BlockSize {
		return fmt.Errorf("verity superblock (%d blocks of %d bytes) differs from the payload's hash tree fields (%d blocks)", sb.DataBlocks, sb.DataBlockSize, v.DataBlocks)
	}
	if n := uint64(verity.HashTreeSize(v.DataBlocks)/BlockSize) - 1; n != v.TreeBlocks {
		return fmt.Errorf("verity tree of %d data blocks has %d blocks, the payload says %d", v.DataBlocks, n, v.TreeBlocks)
	}
	keep := &keepBlock{Target: dst, off: v.HashOffset}
	root, err := verity.Format(keep, 0, v.HashOffset, verity.Params{DataBlocks: v.DataBlocks, Salt: sb.Salt, UUID: sb.UUID})
	if err != nil {
		return err
	}
	if !bytes.Equal(root, v.RootHash) {
		return fmt.Errorf("%w: computed %x, the payload says %x", ErrVerityRoot, root, v.RootHash)
	}
	return nil
}

// keepBlock is a Target whose block at off is not written: verity.Format
// writes the superblock block with the levels, and the payload already
// wrote that block.
type keepBlock struct {
	Target
	off int64
}

func (k *keepBlock) WriteAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	lo, hi := max(off, k.off), min(end, k.off+BlockSize)
	if lo >= hi { // no overlap
		return k.Target.WriteAt(p, off)
	}
	if lo > off {
		if _, err := k.Target.WriteAt(p[:lo-off], off); err != nil {
			return 0, err
		}
	}
	if hi < end {
		if _, err := k.Target.WriteAt(p[hi-off:], hi); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
