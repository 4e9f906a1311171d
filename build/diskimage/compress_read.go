package diskimage

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz/lzma"
)

// maxChunk bounds the zstd frames and xz blocks Open reads: each is
// decoded whole into memory.
const maxChunk = 64 << 20

// zstdFrameHeader parses a zstd frame header from b: its length, the
// content size (-1 when absent) and whether a checksum ends the frame.
func zstdFrameHeader(b []byte) (n int, size int64, checksum bool, err error) {
	if len(b) < 5 || !bytes.Equal(b[:4], zstdMagic) {
		return 0, 0, false, errors.New("not a zstd frame")
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return 0, 0, false, errors.New("zstd frame header: reserved bit set")
	}
	single := fhd&0x20 != 0
	n = 5
	if !single {
		n++ // window descriptor
	}
	n += [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	if len(b) < n+fcs {
		return 0, 0, false, io.ErrUnexpectedEOF
	}
	size = -1
	switch fcs {
	case 1:
		size = int64(b[n])
	case 2:
		size = int64(binary.LittleEndian.Uint16(b[n:])) + 256
	case 4:
		size = int64(binary.LittleEndian.Uint32(b[n:]))
	case 8:
		size = int64(binary.LittleEndian.Uint64(b[n:]))
		if size < 0 {
			return 0, 0, false, errors.New("zstd frame header: content size out of range")
		}
	}
	return n + fcs, size, fhd&0x04 != 0, nil
}

// zstdFrameLen returns the length of the zstd frame at the start of b,
// found from its header and block headers without decoding it.
func zstdFrameLen(b []byte) (int, error) {
	n, _, checksum, err := zstdFrameHeader(b)
	if err != nil {
		return 0, err
	}
	for {
		if len(b) < n+3 {
			return 0, io.ErrUnexpectedEOF
		}
		h := uint32(b[n]) | uint32(b[n+1])<<8 | uint32(b[n+2])<<16
		n += 3
		switch (h >> 1) & 3 {
		case 0, 2: // raw, compressed
			n += int(h >> 3)
		case 1: // RLE
			n++
		default:
			return 0, errors.New("zstd block of the reserved type")
		}
		if h&1 != 0 {
			break
		}
	}
	if checksum {
		n += 4
	}
	if n > len(b) {
		return 0, io.ErrUnexpectedEOF
	}
	return n, nil
}

// posReader counts the bytes read from a buffered reader; skips past
// what it holds are seeks, never reads: a frame's blocks may be holes.
type posReader struct {
	sr  *io.SectionReader
	r   *bufio.Reader
	pos int64
}

func (p *posReader) full(b []byte) error {
	n, err := io.ReadFull(p.r, b)
	p.pos += int64(n)
	return err
}

func (p *posReader) skip(n int64) error {
	if n < 0 || n > p.sr.Size()-p.pos {
		return io.ErrUnexpectedEOF
	}
	if n <= int64(p.r.Buffered()) {
		d, err := p.r.Discard(int(n))
		p.pos += int64(d)
		return err
	}
	p.pos += n
	if _, err := p.sr.Seek(p.pos, io.SeekStart); err != nil {
		return err
	}
	p.r.Reset(p.sr)
	return nil
}

// Bounds on the chunks of a compressed raw image, so that the index of a
// hostile file (many tiny frames, or frames of empty blocks read from its
// holes) costs neither memory nor time out of proportion to the disk it
// holds: past maxSmallChunks chunks, they must average minChunkAverage
// bytes of disk (kiln writes 4 MiB zstd frames and 8 MiB xz blocks).
const (
	maxSmallChunks  = 1 << 16
	minChunkAverage = 1 << 20
	// maxXZIndex bounds the xz index read whole: about 2 million blocks,
	// 16 TiB of kiln's 8 MiB blocks.
	maxXZIndex = 16 << 20
)

// maxCompressed bounds the compressed size of a chunk of n bytes: what
// stored (uncompressed) zstd blocks or LZMA2 chunks, the worst case, take
// with their headers. A chunk is read whole: a larger one, its bytes
// holes of a sparse file, would cost memory the disk does not explain.
func maxCompressed(n int64) int64 { return n + n/256 + 64<<10 }

// checkChunks refuses a chunk count out of proportion to the disk.
func checkChunks(f Format, n int, disk int64) error {
	if n > maxSmallChunks && disk/int64(n) < minChunkAverage {
		return fmt.Errorf("%w: %s: %d chunks holding %d bytes of disk (kiln reads chunks of %d bytes or more on average past %d chunks)", ErrUnsupported, f, n, disk, minChunkAverage, maxSmallChunks)
	}
	return nil
}

// openZstd indexes the frames of a zstd file by their headers (every
// frame must give its content size, as kiln's do); skippable frames are
// passed over.
func openZstd(r io.ReaderAt, size int64) (int64, virtualDisk, error) {
	d := &chunkedDisk{r: r, size: size, format: RawZstd}
	sr := io.NewSectionReader(r, 0, size)
	p := &posReader{sr: sr, r: bufio.NewReaderSize(sr, 1<<16)}
	var disk int64
	for p.pos < size {
		start := p.pos
		hdr, _ := p.r.Peek(18) // the longest frame header; fewer at the end
		if len(hdr) < 8 {
			return 0, nil, formatErr(RawZstd, start, "%d trailing bytes", len(hdr))
		}
		if magic := binary.LittleEndian.Uint32(hdr); magic&0xfffffff0 == 0x184d2a50 {
			if err := p.skip(8 + int64(binary.LittleEndian.Uint32(hdr[4:]))); err != nil {
				return 0, nil, formatErr(RawZstd, start, "truncated skippable frame")
			}
			continue
		}
		n, usize, checksum, err := zstdFrameHeader(hdr)
		if err != nil {
			return 0, nil, formatErr(RawZstd, start, "%v", err)
		}
		if usize < 0 {
			return 0, nil, fmt.Errorf("%w: a zstd frame without its content size at byte %#x (not written by kiln)", ErrUnsupported, start)
		}
		if err := p.skip(int64(n)); err != nil {
			return 0, nil, err
		}
		// A frame's blocks regenerate at most 128 KiB each; empty ones
		// (zeros read from a hole parse as empty raw blocks) are not
		// counted on.
		maxBlocks := usize/1024 + 16
		for blocks := int64(0); ; blocks++ {
			if blocks > maxBlocks {
				return 0, nil, fmt.Errorf("%w: a zstd frame at byte %#x of %d bytes in more than %d blocks", ErrUnsupported, start, usize, maxBlocks)
			}
			var bh [3]byte
			if err := p.full(bh[:]); err != nil {
				return 0, nil, formatErr(RawZstd, p.pos, "truncated block header")
			}
			h := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
			var skip int64
			switch (h >> 1) & 3 {
			case 0, 2:
				skip = int64(h >> 3)
			case 1:
				skip = 1
			default:
				return 0, nil, formatErr(RawZstd, p.pos-3, "block of the reserved type")
			}
			if err := p.skip(skip); err != nil {
				return 0, nil, formatErr(RawZstd, p.pos, "truncated block")
			}
			if h&1 != 0 {
				break
			}
		}
		if checksum {
			if err := p.skip(4); err != nil {
				return 0, nil, formatErr(RawZstd, p.pos, "truncated checksum")
			}
		}
		if usize > maxChunk {
			return 0, nil, fmt.Errorf("%w: a zstd frame of %d bytes (kiln reads frames up to %d; it writes 4 MiB ones)", ErrUnsupported, usize, maxChunk)
		}
		if n := p.pos - start; n > maxCompressed(usize) {
			return 0, nil, formatErr(RawZstd, start, "a frame of %d bytes for %d bytes of content", n, usize)
		}
		if usize > 0 {
			d.chunks = append(d.chunks, chunk{cOff: start, cLen: p.pos - start, uOff: disk, uLen: usize})
		}
		disk += usize
		if err := checkChunks(RawZstd, len(d.chunks), disk); err != nil {
			return 0, nil, err
		}
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(2*maxChunk))
	if err != nil {
		return 0, nil, err
	}
	d.decode = func(c chunk, comp, dst []byte) error {
		out, err := dec.DecodeAll(comp, dst[:0])
		if err != nil {
			return fmt.Errorf("diskimage: raw.zst: frame at byte %#x: %w", c.cOff, err)
		}
		if len(out) != len(dst) {
			return formatErr(RawZstd, c.cOff, "frame decodes to %d bytes, its header says %d", len(out), len(dst))
		}
		return nil
	}
	return disk, d, nil
}

// openXZ indexes the blocks of a single-stream xz file (as kiln and xz -T
// write) by its index, checked against the stream's header and footer.
func openXZ(r io.ReaderAt, size int64) (int64, virtualDisk, error) {
	if size < 32 {
		return 0, nil, formatErr(RawXZ, 0, "a %d-byte file", size)
	}
	var head, foot [12]byte
	if err := readFull(r, size, RawXZ, head[:], 0, "the stream header"); err != nil {
		return 0, nil, err
	}
	if err := readFull(r, size, RawXZ, foot[:], size-12, "the stream footer"); err != nil {
		return 0, nil, err
	}
	le := binary.LittleEndian
	if !bytes.Equal(foot[10:], xzFooterMag) {
		return 0, nil, formatErr(RawXZ, size-2, "no stream footer (stream padding or a second stream?)")
	}
	if crc32.ChecksumIEEE(head[6:8]) != le.Uint32(head[8:]) || crc32.ChecksumIEEE(foot[4:10]) != le.Uint32(foot[:4]) {
		return 0, nil, formatErr(RawXZ, 0, "stream header or footer CRC32 mismatch")
	}
	if !bytes.Equal(head[6:8], foot[8:10]) {
		return 0, nil, formatErr(RawXZ, size-4, "stream flags differ between header and footer")
	}
	check := head[7] & 0x0f
	checkSize := map[byte]int64{0: 0, 1: 4, 4: 8, 10: 32}[check]
	if head[6] != 0 || head[7]&0xf0 != 0 || (check != 0 && checkSize == 0) {
		return 0, nil, fmt.Errorf("%w: xz check type %d", ErrUnsupported, check)
	}
	indexSize := (int64(le.Uint32(foot[4:])) + 1) * 4
	if indexSize > size-24 {
		return 0, nil, formatErr(RawXZ, size-8, "index of %d bytes in a %d-byte file", indexSize, size)
	}
	if indexSize > maxXZIndex {
		return 0, nil, fmt.Errorf("%w: an xz index of %d bytes (kiln reads indexes up to %d)", ErrUnsupported, indexSize, maxXZIndex)
	}
	idx := make([]byte, indexSize)
	indexOff := size - 12 - indexSize
	if err := readFull(r, size, RawXZ, idx, indexOff, "the index"); err != nil {
		return 0, nil, err
	}
	if crc32.ChecksumIEEE(idx[:len(idx)-4]) != le.Uint32(idx[len(idx)-4:]) || idx[0] != 0 {
		return 0, nil, formatErr(RawXZ, indexOff, "index CRC32 mismatch")
	}
	b := idx[1 : len(idx)-4]
	count, n := binary.Uvarint(b)
	if n <= 0 || count > uint64(len(b)) {
		return 0, nil, formatErr(RawXZ, indexOff, "index record count")
	}
	b = b[n:]
	d := &chunkedDisk{r: r, size: size, format: RawXZ}
	cOff, disk := int64(12), int64(0)
	for range count {
		unpadded, n1 := binary.Uvarint(b)
		if n1 <= 0 {
			return 0, nil, formatErr(RawXZ, indexOff, "index record")
		}
		usize, n2 := binary.Uvarint(b[n1:])
		if n2 <= 0 || unpadded > uint64(size) {
			return 0, nil, formatErr(RawXZ, indexOff, "index record")
		}
		if usize > maxChunk {
			return 0, nil, fmt.Errorf("%w: an xz block of %d bytes (kiln reads blocks up to %d; it writes 8 MiB ones)", ErrUnsupported, usize, maxChunk)
		}
		if int64(unpadded) > maxCompressed(int64(usize)) {
			return 0, nil, formatErr(RawXZ, indexOff, "a block of %d bytes for %d bytes of content", unpadded, usize)
		}
		b = b[n1+n2:]
		d.chunks = append(d.chunks, chunk{cOff: cOff, cLen: int64(unpadded), uOff: disk, uLen: int64(usize)})
		cOff += roundUp(int64(unpadded), 4)
		disk += int64(usize)
		if cOff > indexOff {
			return 0, nil, formatErr(RawXZ, indexOff, "the index's blocks run past it, to %d", cOff)
		}
		if err := checkChunks(RawXZ, len(d.chunks), disk); err != nil {
			return 0, nil, err
		}
	}
	if !allZeros(b) || len(b) > 3 {
		return 0, nil, formatErr(RawXZ, indexOff, "index padding")
	}
	if cOff != indexOff {
		return 0, nil, formatErr(RawXZ, indexOff, "the index's blocks end at %d", cOff)
	}
	crcTable := crc64.MakeTable(crc64.ECMA)
	d.decode = func(c chunk, comp, dst []byte) error {
		fail := func(format string, args ...any) error {
			return formatErr(RawXZ, c.cOff, "block: "+format, args...)
		}
		hs := (int64(comp[0]) + 1) * 4
		if comp[0] == 0 || hs > int64(len(comp))-checkSize || crc32.ChecksumIEEE(comp[:hs-4]) != le.Uint32(comp[hs-4:]) {
			return fail("header")
		}
		h := comp[1 : hs-4]
		flags := h[0]
		h = h[1:]
		if flags&0x3c != 0 || flags&3 != 0 {
			return fmt.Errorf("%w: an xz block with filters other than LZMA2 alone", ErrUnsupported)
		}
		for _, want := range []struct {
			bit byte
			v   int64
		}{{0x40, int64(len(comp)) - hs - checkSize}, {0x80, c.uLen}} {
			if flags&want.bit != 0 {
				v, n := binary.Uvarint(h)
				if n <= 0 || int64(v) != want.v {
					return fail("sizes differ from the index")
				}
				h = h[n:]
			}
		}
		if len(h) < 3 || h[0] != xzFilterLZMA2 || h[1] != 1 {
			return fmt.Errorf("%w: an xz block with filters other than LZMA2 alone", ErrUnsupported)
		}
		dict, err := lzma.DecodeDictCap(h[2])
		if err != nil || dict > 64<<20 {
			return fmt.Errorf("%w: an xz block with a dictionary of %d bytes", ErrUnsupported, dict)
		}
		if !allZeros(h[3:]) {
			return fail("header padding")
		}
		data := comp[hs : int64(len(comp))-checkSize]
		lr, err := lzma.Reader2Config{DictCap: int(max(dict, lzma.MinDictCap))}.NewReader2(bytes.NewReader(data))
		if err != nil {
			return fail("%v", err)
		}
		if _, err := io.ReadFull(lr, dst); err != nil {
			return fail("%v", err)
		}
		if n, _ := lr.Read(make([]byte, 1)); n != 0 {
			return fail("longer than the index says")
		}
		// The check follows the block's padding.
		var want []byte
		switch check {
		case 1:
			want = le.AppendUint32(nil, crc32.ChecksumIEEE(dst))
		case 4:
			want = le.AppendUint64(nil, crc64.Checksum(dst, crcTable))
		case 10:
			s := sha256.Sum256(dst)
			want = s[:]
		}
		got := make([]byte, checkSize)
		pad := roundUp(c.cLen-checkSize, 4) - (c.cLen - checkSize)
		if err := readFull(r, size, RawXZ, got, c.cOff+c.cLen-checkSize+pad, "a block check"); err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fail("check mismatch")
		}
		return nil
	}
	return disk, d, nil
}
