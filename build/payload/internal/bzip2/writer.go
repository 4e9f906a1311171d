// Package bzip2 compresses data into the bzip2 format (the standard library
// only decompresses it). BSDIFF40 patches need it: update_engine's and
// Debian's bspatch read bzip2-compressed control, diff and extra blocks.
//
// The encoder is the classic pipeline: run-length encoding of runs of 4 to
// 255 equal bytes, Burrows–Wheeler transform (rotations sorted through a
// suffix array of the doubled block), move-to-front with RUNA/RUNB zero
// runs, and 2–6 Huffman tables chosen per 50-symbol group.
package bzip2

import (
	"context"
	"errors"
	"io"
	"sort"

	"github.com/kiln-os/kiln/build/payload/internal/suffix"
)

// blockLimit is the largest run-length-encoded block at a level: level N
// allows N×100000 bytes, and a run (at most 5 encoded bytes) must fit
// after the check.
func blockLimit(level int) int { return level*100000 - 8 }

const maxCodeLen = 17

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("bzip2: write after close")

// Writer compresses what is written to it; Close flushes the final block
// and the stream trailer.
type Writer struct {
	w        io.Writer
	bw       bitWriter
	block    []byte // run-length encoded bytes of the current block
	crc      uint32 // CRC of the current block's original bytes
	combined uint32
	runByte  byte
	runLen   int
	started  bool
	closed   bool
	err      error
	level    int // block size level, 1..9
}

// NewWriter returns a Writer at block size level 9.
func NewWriter(w io.Writer) *Writer { return NewWriterLevel(w, 9) }

// NewWriterLevel returns a Writer at block size level 1 (100 kB blocks)
// to 9 (900 kB). A decoder allocates about 4 bytes per block byte, so
// small inputs should use small levels.
func NewWriterLevel(w io.Writer, level int) *Writer {
	return &Writer{w: w, crc: 0xffffffff, level: min(max(level, 1), 9)}
}

// Compress returns the bzip2 compression of b, at the smallest block size
// level that holds b in one block (run-length encoding can grow data by a
// quarter): a patch applier then decodes it without allocating tables for
// 900 kB blocks, as Go's decoder does for level 9.
func Compress(b []byte) []byte {
	var out sliceWriter
	w := NewWriterLevel(&out, (len(b)*5/4+8)/100000+1)
	_, _ = w.Write(b)
	_ = w.Close()
	return out
}

// CompressContext is Compress that gives up with ctx's error soon (within
// about a block) after ctx is done.
func CompressContext(ctx context.Context, b []byte) ([]byte, error) {
	var out sliceWriter
	w := NewWriterLevel(&out, (len(b)*5/4+8)/100000+1)
	for len(b) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(len(b), 256<<10)
		_, _ = w.Write(b[:n])
		b = b[n:]
	}
	_ = w.Close()
	return out, nil
}

type sliceWriter []byte

func (s *sliceWriter) Write(p []byte) (int, error) { *s = append(*s, p...); return len(p), nil }

func (z *Writer) Write(p []byte) (int, error) {
	if z.closed {
		return 0, ErrClosed
	}
	if z.err != nil {
		return 0, z.err
	}
	if !z.started {
		z.started = true
		z.bw.w = z.w
		z.bw.writeBits(24, 'B'<<16|'Z'<<8|'h')
		z.bw.writeBits(8, uint64('0'+z.level))
	}
	for _, c := range p {
		if z.runLen > 0 && (c != z.runByte || z.runLen == 255) {
			z.flushRun()
		}
		z.runByte = c
		z.runLen++
	}
	return len(p), z.err
}

// flushRun appends the pending run to the block, ending the block first
// when it is full: blocks are cut only between runs.
func (z *Writer) flushRun() {
	if len(z.block) >= blockLimit(z.level) {
		z.endBlock(z.crc)
		z.crc = 0xffffffff
	}
	for i := 0; i < z.runLen; i++ {
		z.crc = z.crc<<8 ^ crcTable[byte(z.crc>>24)^z.runByte]
	}
	n := min(z.runLen, 4)
	for i := 0; i < n; i++ {
		z.block = append(z.block, z.runByte)
	}
	if z.runLen >= 4 {
		z.block = append(z.block, byte(z.runLen-4))
	}
	z.runLen = 0
}

// Close writes the last block and the stream trailer. It does not close
// the underlying writer.
func (z *Writer) Close() error {
	if z.closed {
		return z.err
	}
	if !z.started {
		_, _ = z.Write(nil)
	}
	z.closed = true
	if z.runLen > 0 {
		z.flushRun()
	}
	if len(z.block) > 0 {
		z.endBlock(z.crc)
	}
	z.bw.writeBits(24, 0x177245)
	z.bw.writeBits(24, 0x385090)
	z.bw.writeBits(32, uint64(z.combined))
	z.bw.flush()
	if z.err == nil {
		z.err = z.bw.err
	}
	return z.err
}

func (z *Writer) endBlock(crcState uint32) {
	crc := ^crcState
	z.combined = (z.combined<<1 | z.combined>>31) ^ crc
	encodeBlock(&z.bw, z.block, crc)
	z.block = z.block[:0]
	if z.bw.err != nil {
		z.err = z.bw.err
	}
}

// encodeBlock writes one compressed block of the run-length encoded data.
func encodeBlock(bw *bitWriter, data []byte, crc uint32) {
	n := len(data)
	// (1) Burrows–Wheeler transform through the suffix array of data+data.
	dd := make([]byte, 2*n)
	copy(dd, data)
	copy(dd[n:], data)
	sa := suffix.Array(dd)
	bwt := make([]byte, 0, n)
	origPtr := 0
	for _, p := range sa {
		if int(p) >= n {
			continue
		}
		if p == 0 {
			origPtr = len(bwt)
			bwt = append(bwt, data[n-1])
		} else {
			bwt = append(bwt, data[p-1])
		}
	}

	// (2) Symbol map, move-to-front and RUNA/RUNB zero runs.
	var inUse [256]bool
	for _, c := range bwt {
		inUse[c] = true
	}
	var seq [256]byte
	nInUse := 0
	var mtf [256]byte
	for c := 0; c < 256; c++ {
		if inUse[c] {
			seq[c] = byte(nInUse)
			mtf[nInUse] = byte(nInUse)
			nInUse++
		}
	}
	eob := uint16(nInUse + 1)
	alphaSize := nInUse + 2
	syms := make([]uint16, 0, n+1)
	zeros := 0
	flushZeros := func() {
		for zeros > 0 {
			if zeros&1 == 1 {
				syms = append(syms, 0) // RUNA
				zeros = (zeros - 1) / 2
			} else {
				syms = append(syms, 1) // RUNB
				zeros = (zeros - 2) / 2
			}
		}
	}
	for _, c := range bwt {
		s := seq[c]
		i := 0
		for mtf[i] != s {
			i++
		}
		copy(mtf[1:i+1], mtf[:i])
		mtf[0] = s
		if i == 0 {
			zeros++
			continue
		}
		flushZeros()
		syms = append(syms, uint16(i+1))
	}
	flushZeros()
	syms = append(syms, eob)

	// (3) Huffman tables per 50-symbol group.
	nGroups := 6
	switch {
	case len(syms) < 200:
		nGroups = 2
	case len(syms) < 600:
		nGroups = 3
	case len(syms) < 1200:
		nGroups = 4
	case len(syms) < 2400:
		nGroups = 5
	}
	nSel := (len(syms) + 49) / 50
	selectors := make([]int, nSel)
	lens := make([][]uint8, nGroups)
	// Initial tables: split the alphabet into ranges of similar total frequency.
	var freq [258]int
	for _, s := range syms {
		freq[s]++
	}
	remaining := len(syms)
	lo := 0
	for g := nGroups; g > 0; g-- {
		target := remaining / g
		hi := lo - 1
		acc := 0
		for acc < target && hi < alphaSize-1 {
			hi++
			acc += freq[hi]
		}
		if hi > lo && g != nGroups && g != 1 && (nGroups-g)%2 == 1 {
			acc -= freq[hi]
			hi--
		}
		l := make([]uint8, alphaSize)
		for s := range l {
			if s >= lo && s <= hi {
				l[s] = 0
			} else {
				l[s] = 15
			}
		}
		lens[nGroups-g] = l
		lo = hi + 1
		remaining -= acc
	}
	for iter := 0; iter < 4; iter++ {
		fr := make([][258]int, nGroups)
		for sel := 0; sel < nSel; sel++ {
			group := syms[sel*50 : min(len(syms), sel*50+50)]
			best, bestCost := 0, int(^uint(0)>>1)
			for g := 0; g < nGroups; g++ {
				cost := 0
				for _, s := range group {
					cost += int(lens[g][s])
				}
				if cost < bestCost {
					best, bestCost = g, cost
				}
			}
			selectors[sel] = best
			for _, s := range group {
				fr[best][s]++
			}
		}
		for g := 0; g < nGroups; g++ {
			lens[g] = codeLengths(fr[g][:alphaSize])
		}
	}

	// (4) Write the block.
	bw.writeBits(24, 0x314159)
	bw.writeBits(24, 0x265359)
	bw.writeBits(32, uint64(crc))
	bw.writeBits(1, 0)
	bw.writeBits(24, uint64(origPtr))
	var used16 uint64
	for i := 0; i < 16; i++ {
		for j := 0; j < 16; j++ {
			if inUse[i*16+j] {
				used16 |= 1 << (15 - i)
				break
			}
		}
	}
	bw.writeBits(16, used16)
	for i := 0; i < 16; i++ {
		if used16&(1<<(15-i)) == 0 {
			continue
		}
		var bits uint64
		for j := 0; j < 16; j++ {
			if inUse[i*16+j] {
				bits |= 1 << (15 - j)
			}
		}
		bw.writeBits(16, bits)
	}
	bw.writeBits(3, uint64(nGroups))
	bw.writeBits(15, uint64(nSel))
	order := make([]int, nGroups)
	for i := range order {
		order[i] = i
	}
	for _, s := range selectors {
		j := 0
		for order[j] != s {
			j++
		}
		copy(order[1:j+1], order[:j])
		order[0] = s
		for k := 0; k < j; k++ {
			bw.writeBits(1, 1)
		}
		bw.writeBits(1, 0)
	}
	codes := make([][]uint32, nGroups)
	for g := 0; g < nGroups; g++ {
		l := lens[g]
		cur := int(l[0])
		bw.writeBits(5, uint64(cur))
		for s := 0; s < alphaSize; s++ {
			for cur < int(l[s]) {
				bw.writeBits(2, 2) // 10: increment
				cur++
			}
			for cur > int(l[s]) {
				bw.writeBits(2, 3) // 11: decrement
				cur--
			}
			bw.writeBits(1, 0)
		}
		codes[g] = canonicalCodes(l)
	}
	for i, s := range syms {
		g := selectors[i/50]
		bw.writeBits(uint(lens[g][s]), uint64(codes[g][s]))
	}
}

// codeLengths returns Huffman code lengths of at most maxCodeLen bits for
// every symbol (absent symbols get a code too, as bzip2 requires).
func codeLengths(freq []int) []uint8 {
	n := len(freq)
	w := make([]int, n)
	for i, f := range freq {
		w[i] = 1 + f*2
	}
	for {
		l := huffman(w)
		maxL := uint8(0)
		for _, x := range l {
			maxL = max(maxL, x)
		}
		if maxL <= maxCodeLen {
			return l
		}
		for i := range w {
			w[i] = 1 + w[i]/2
		}
	}
}

// huffman returns unrestricted Huffman code lengths for weights w (n >= 2).
func huffman(w []int) []uint8 {
	type node struct {
		weight      int
		left, right int // children; -1 for leaves
		sym         int
	}
	nodes := make([]node, 0, 2*len(w))
	idx := make([]int, 0, len(w))
	for s, x := range w {
		nodes = append(nodes, node{weight: x, left: -1, right: -1, sym: s})
		idx = append(idx, s)
	}
	less := func(a, b int) bool {
		if nodes[a].weight != nodes[b].weight {
			return nodes[a].weight < nodes[b].weight
		}
		return a < b
	}
	sort.Slice(idx, func(i, j int) bool { return less(idx[i], idx[j]) })
	// Two-queue construction: leaves sorted, internal nodes come out sorted.
	var internal []int
	pop := func() int {
		if len(internal) == 0 || (len(idx) > 0 && !less(internal[0], idx[0])) {
			x := idx[0]
			idx = idx[1:]
			return x
		}
		x := internal[0]
		internal = internal[1:]
		return x
	}
	for len(idx)+len(internal) > 1 {
		a, b := pop(), pop()
		nodes = append(nodes, node{weight: nodes[a].weight + nodes[b].weight, left: a, right: b, sym: -1})
		internal = append(internal, len(nodes)-1)
	}
	lens := make([]uint8, len(w))
	var walk func(i int, d uint8)
	walk = func(i int, d uint8) {
		if nodes[i].left < 0 {
			lens[nodes[i].sym] = max(d, 1)
			return
		}
		walk(nodes[i].left, d+1)
		walk(nodes[i].right, d+1)
	}
	walk(len(nodes)-1, 0)
	return lens
}

// canonicalCodes assigns codes in order of length, then symbol, as bzip2
// decoders rebuild them.
func canonicalCodes(lens []uint8) []uint32 {
	codes := make([]uint32, len(lens))
	code := uint32(0)
	for l := uint8(1); l <= maxCodeLen; l++ {
		for s, x := range lens {
			if x == l {
				codes[s] = code
				code++
			}
		}
		code <<= 1
	}
	return codes
}

type bitWriter struct {
	w     io.Writer
	acc   uint64
	nbits uint
	buf   []byte
	err   error
}

func (b *bitWriter) writeBits(n uint, v uint64) {
	b.acc = b.acc<<n | (v & (1<<n - 1))
	b.nbits += n
	for b.nbits >= 8 {
		b.nbits -= 8
		b.buf = append(b.buf, byte(b.acc>>b.nbits))
	}
	if len(b.buf) >= 64<<10 {
		b.drain()
	}
}

func (b *bitWriter) drain() {
	if b.err == nil && len(b.buf) > 0 {
		_, b.err = b.w.Write(b.buf)
	}
	b.buf = b.buf[:0]
}

func (b *bitWriter) flush() {
	if b.nbits > 0 {
		b.buf = append(b.buf, byte(b.acc<<(8-b.nbits)))
		b.nbits = 0
	}
	b.drain()
}

var crcTable = func() (t [256]uint32) {
	for i := range t {
		c := uint32(i) << 24
		for j := 0; j < 8; j++ {
			if c&0x80000000 != 0 {
				c = c<<1 ^ 0x04c11db7
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()
