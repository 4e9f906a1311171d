package diskimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"hash/crc64"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz/lzma"

	"github.com/kiln-os/kiln/internal/xzstream"
)

// The compressed raw formats cut the disk into chunks and compress each
// on its own — a zstd frame, an xz block — on every core, written in
// order: the bytes do not depend on the number of workers, and a chunk
// that is a hole is not read (every such chunk compresses to the same
// bytes, made once).
const (
	zstdChunk = 4 << 20
	xzChunk   = 8 << 20
	// xzDict is the LZMA2 dictionary: larger ones made ulikunitz/xz's
	// encoder (the one used before kiln's) no better on OS images, slower,
	// and hungrier.
	xzDict = 1 << 20
	// zstdLevel is zstd's default level (3).
	zstdLevel = zstd.SpeedDefault
)

// chunker compresses a Source chunk by chunk.
type chunker struct {
	size     int64
	chunk    int64
	compress func(data []byte) ([]byte, error) // safe for concurrent use
	// zeros returns n zeros compressed; nil uses compress.
	zeros func(n int64) []byte
	zero  []byte // a whole chunk of zeros, compressed
}

// run compresses every chunk, holes included, and hands the compressed
// chunks to emit in order, with their uncompressed sizes.
func (c *chunker) run(ctx context.Context, src *Source, o Options, emit func(comp []byte, n int64) error) error {
	zeros := func(n int64) ([]byte, error) {
		if c.zeros != nil {
			return c.zeros(n), nil
		}
		return c.compress(make([]byte, n))
	}
	var err error
	if c.zero, err = zeros(c.chunk); err != nil {
		return err
	}
	// fill emits the chunks of zeros in [from, to).
	fill := func(from, to int64) error {
		for off := from; off < to; off += c.chunk {
			n := min(c.chunk, to-off)
			comp := c.zero
			if n < c.chunk {
				if comp, err = zeros(n); err != nil {
					return err
				}
			}
			if err := emit(comp, n); err != nil {
				return err
			}
		}
		return nil
	}
	next := int64(0)
	p := &pipeline{src: src, bs: c.chunk, workers: o.Workers, progress: o.Progress}
	p.work = func(b *block) error {
		if b.allZero() && int64(len(b.buf)) == c.chunk {
			b.out = [][]byte{c.zero}
			return nil
		}
		comp, err := c.compress(b.buf)
		b.out = [][]byte{comp}
		return err
	}
	_, err = p.run(ctx, func(b *block) error {
		if err := fill(next, b.off); err != nil {
			return err
		}
		next = b.off + int64(len(b.buf))
		return emit(b.out[0], int64(len(b.buf)))
	})
	if err != nil {
		return err
	}
	return fill(next, c.size)
}

// writeZstd writes the raw image as zstd frames of 4 MiB each (content
// size and checksum in every frame): what zstd -d reads.
func writeZstd(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderConcurrency(o.Workers),
		zstd.WithEncoderCRC(true), zstd.WithZeroFrames(true))
	if err != nil {
		return 0, fmt.Errorf("zstd encoder: %w", err)
	}
	defer enc.Close()
	c := &chunker{size: src.Size(), chunk: zstdChunk, zeros: zstdZeros, compress: func(data []byte) ([]byte, error) {
		return enc.EncodeAll(data, make([]byte, 0, len(data)/4)), nil
	}}
	out := newAppender(dst, 0)
	err = c.run(ctx, src, o, func(comp []byte, _ int64) error {
		_, err := out.Write(comp)
		return err
	})
	if err != nil {
		return 0, err
	}
	return out.pos(), out.flush()
}

// zstdZeros returns a zstd frame of n zeros: single segment, its content
// size, and RLE blocks of 128 KiB (the largest block), with no checksum.
func zstdZeros(n int64) []byte {
	f := append([]byte{}, zstdMagic...)
	f = append(f, 0xa0) // frame header: 4-byte content size, single segment
	f = binary.LittleEndian.AppendUint32(f, uint32(n))
	for n > 0 {
		b := min(n, 128<<10)
		n -= b
		h := uint32(b)<<3 | 1<<1 // RLE block
		if n == 0 {
			h |= 1 // last block
		}
		f = append(f, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return f
}

// The .xz container (the .xz file format, 1.1.0): a stream header, blocks
// with their compressed and uncompressed sizes in the header and a CRC64
// check, the index, the stream footer.
var (
	xzFooterMag = []byte{'Y', 'Z'}
	crc64Table  = crc64.MakeTable(crc64.ECMA)
)

const xzFilterLZMA2 = 0x21

// xzBlock is one compressed chunk in the container's framing, and what
// the index records of it.
type xzBlock struct {
	data       []byte
	unpadded   int64
	uncompSize int64
}

// lzma2 compresses data into an LZMA2 stream that starts with a
// dictionary reset and lacks the end marker, so that such streams can be
// joined into one, with kiln's LZMA2 encoder (about 10 % smaller than
// ulikunitz/xz's on OS data, and no slower). It stops early when ctx is
// done.
func lzma2(ctx context.Context, data []byte) ([]byte, error) {
	return xzstream.AppendLZMA2(ctx, nil, data, xzDict)
}

// lzma2Zeros[i] is 2^i units of zeros as an LZMA2 stream (no end
// marker), made when first needed.
var lzma2Zeros [8]func() ([]byte, error)

func init() {
	for i := range lzma2Zeros {
		lzma2Zeros[i] = sync.OnceValues(func() ([]byte, error) { return lzma2(context.Background(), make([]byte, unitSize<<i)) })
	}
}

// lzma2ZeroRun appends n units of zeros as LZMA2 streams: one for each
// power of two in n, so that a whole chunk of zeros is a single stream.
func lzma2ZeroRun(b *bytes.Buffer, n int) error {
	for i := len(lzma2Zeros) - 1; i >= 0; i-- {
		for n >= 1<<i {
			z, err := lzma2Zeros[i]()
			if err != nil {
				return err
			}
			b.Write(z)
			n -= 1 << i
		}
	}
	return nil
}

// compressXZBlock compresses data with LZMA2 into a whole .xz block. Each
// run of 64 KiB units of zeros, and each run of units that are not, is an
// LZMA2 stream of its own (LZMA2 allows a dictionary reset at any chunk);
// the runs of zeros are streams made once: ulikunitz/xz's encoder takes
// half a second over 8 MiB of zeros, and a disk's chunks are mostly zeros.
func compressXZBlock(ctx context.Context, data []byte) (*xzBlock, error) {
	var lz bytes.Buffer
	isZero := func(off int) bool {
		return off+unitSize <= len(data) && bytes.Equal(data[off:off+unitSize], zeroUnit)
	}
	for start := 0; start < len(data); {
		end := start
		if isZero(start) {
			for end < len(data) && isZero(end) {
				end += unitSize
			}
			if err := lzma2ZeroRun(&lz, (end-start)/unitSize); err != nil {
				return nil, err
			}
			start = end
			continue
		}
		// A run of units that are not all zeros.
		for end < len(data) && (end == start || !isZero(end)) {
			end = min(end+unitSize, len(data))
		}
		c, err := lzma2(ctx, data[start:end])
		if err != nil {
			return nil, err
		}
		lz.Write(c)
		start = end
	}
	lz.WriteByte(0) // end of the LZMA2 stream
	// Block header: size, flags (1 filter, both sizes present), sizes,
	// the LZMA2 filter and its dictionary size, padding, CRC32.
	h := []byte{0, 0xc0}
	h = binary.AppendUvarint(h, uint64(lz.Len()))
	h = binary.AppendUvarint(h, uint64(len(data)))
	h = append(h, xzFilterLZMA2, 1, lzma.EncodeDictCap(xzDict))
	for (len(h)+4)%4 != 0 {
		h = append(h, 0)
	}
	h[0] = byte((len(h)+4)/4 - 1)
	h = binary.LittleEndian.AppendUint32(h, crc32.ChecksumIEEE(h))
	b := &xzBlock{uncompSize: int64(len(data))}
	b.unpadded = int64(len(h) + lz.Len() + 8)
	out := append(h, lz.Bytes()...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	b.data = binary.LittleEndian.AppendUint64(out, crc64.Checksum(data, crc64Table))
	return b, nil
}

// writeXZ writes the raw image as one .xz stream of independent 8 MiB
// blocks, as xz -T does: what xz -d reads (xz 5.4 and later decompress it
// on several cores).
func writeXZ(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	out := newAppender(dst, 0)
	out.Write(xzstream.AppendStreamHeader(nil, xzstream.CheckCRC64))
	var records []xzstream.IndexRecord
	c := &chunker{size: src.Size(), chunk: xzChunk, compress: func(data []byte) ([]byte, error) {
		b, err := compressXZBlock(ctx, data)
		if err != nil {
			return nil, err
		}
		// The index needs the unpadded size: it travels in front.
		return append(binary.LittleEndian.AppendUint64(nil, uint64(b.unpadded)), b.data...), nil
	}}
	err := c.run(ctx, src, o, func(comp []byte, n int64) error {
		records = append(records, xzstream.IndexRecord{Unpadded: binary.LittleEndian.Uint64(comp), Uncompressed: uint64(n)})
		_, err := out.Write(comp[8:])
		return err
	})
	if err != nil {
		return 0, err
	}
	out.Write(xzstream.AppendStreamTail(nil, records, xzstream.CheckCRC64))
	return out.pos(), out.flush()
}
