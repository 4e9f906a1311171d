package payload

import (
	"bytes"
	"compress/bzip2"
	"context"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	bzip2w "github.com/kiln-os/kiln/build/payload/internal/bzip2"
	"github.com/kiln-os/kiln/internal/xzstream"
)

// maxXZDict is the largest xz dictionary a REPLACE_XZ operation may ask
// for: update_engine's client allows 64 MiB (kXzMaxDictSize).
const maxXZDict = 64 << 20

// Compression selects how the planner compresses REPLACE data.
type Compression uint8

const (
	// CompressionXZ uses REPLACE_XZ only: every update_engine reads it.
	// The default.
	CompressionXZ Compression = iota
	// CompressionAuto tries ZSTD and REPLACE_XZ and keeps the smaller; the
	// payload is then only for clients that read ZSTD.
	CompressionAuto
	// CompressionZstd uses ZSTD only: fastest to generate and apply, for
	// clients that read ZSTD.
	CompressionZstd
	// CompressionNone writes plain REPLACE operations.
	CompressionNone
	// CompressionBZ2 uses REPLACE_BZ only: every update_engine reads it;
	// about twice as fast to generate as xz, and a little larger.
	CompressionBZ2
	// CompressionXZMax uses REPLACE_XZ only, as CompressionXZ, with the
	// LZMA2 encoder's optimal parser, a binary-tree match finder, a 32 MiB
	// dictionary and 48 MiB solid runs instead of the fast parser, 2 MiB
	// and 8 MiB: smaller, slower, and more memory (see docs/payloads.md).
	CompressionXZMax
)

var compressionNames = [...]string{"xz", "auto", "zstd", "none", "bz2", "xz-max"}

func (c Compression) String() string {
	if int(c) < len(compressionNames) {
		return compressionNames[c]
	}
	return fmt.Sprintf("Compression(%d)", uint8(c))
}

// ParseCompression parses a Compression name ("xz", "xz-max", "auto",
// "zstd", "none", "bz2").
func ParseCompression(s string) (Compression, error) {
	for i, n := range compressionNames {
		if n == s {
			return Compression(i), nil
		}
	}
	return 0, fmt.Errorf("payload: unknown compression %q (want xz, xz-max, auto, zstd, bz2 or none)", s)
}

// compressor compresses REPLACE data as a Compression says, from several
// goroutines at once.
type compressor struct {
	c    Compression
	x86  bool // x86 code may go through xz's x86 BCJ filter
	zstd bool // c uses ZSTD
}

// newCompressor makes a compressor for c; x86 allows the x86 BCJ filter
// in xz.
func newCompressor(c Compression, x86 bool) *compressor {
	return &compressor{c: c, x86: x86, zstd: c == CompressionAuto || c == CompressionZstd}
}

// Dictionary sizes of the two xz modes. The fast parser's hash chains
// gain little from a larger one: on make bench's Debian update an 8 MiB
// dictionary on its 8 MiB solid runs made the delta 0.1 % smaller,
// planning about 20 % slower and the peak memory 50 % larger. The optimal
// parser's binary tree does find the far matches: on the same update
// (48 MiB solid runs) a 12, 16 and 32 MiB dictionary made the xz-max delta
// 20.46, 20.24 and 20.15 MB. The tree costs 8 bytes a byte of dictionary,
// so one such run is coded at a time (see xzMemory), its match finder on
// the second core.
const (
	fastXZDict    = 2 << 20
	optimalXZDict = 32 << 20
)

// compressXZ compresses b into an .xz stream, behind the x86 BCJ filter
// when x86 is set, with the encoder's optimal parser when optimal is set.
// It filters b in place (and restores it), sparing a copy of a solid
// run; it stops soon after ctx is done.
func compressXZ(ctx context.Context, b []byte, x86, optimal bool) ([]byte, error) {
	dict := fastXZDict
	if optimal {
		dict = optimalXZDict
	}
	return xzstream.EncodeContext(ctx, b, xzstream.Options{DictCap: min(len(b), dict), X86: x86, Fast: !optimal, AheadFinder: optimal, InPlace: true})
}

// xzMemory is about what compressXZ holds to compress n bytes (the data
// included): the fast parser's hash chains and output, or the optimal
// parser's binary tree (8 bytes a position of its dictionary), hash heads
// and output.
func xzMemory(n int64, optimal bool) int64 {
	if !optimal {
		return 4 * n
	}
	return n + n/3 + 8*min(n, optimalXZDict) + 32<<20
}

// compress returns the smallest encoding of b that z.c allows: the
// operation type and its data. Data that no compressor shrinks is a plain
// REPLACE, as update_engine expects. x86 says b is mostly x86 machine
// code: xz then filters it with x86 BCJ first (where z allows it), as
// update_engine's own generator does for x86 ELF files.
func (z *compressor) compress(ctx context.Context, b []byte, x86 bool) (OpType, []byte, error) {
	c := z.c
	typ, best := OpReplace, b
	if z.zstd {
		out, err := zstdContext(ctx, b)
		if err != nil {
			return 0, nil, err
		}
		if len(out) < len(best) {
			typ, best = OpZstd, out
		}
	}
	if c == CompressionBZ2 {
		z, err := bzip2w.CompressContext(ctx, b)
		if err != nil {
			return 0, nil, err
		}
		if len(z) < len(best) {
			typ, best = OpReplaceBZ, z
		}
	}
	if c == CompressionAuto || c == CompressionXZ || c == CompressionXZMax {
		x, err := compressXZ(ctx, b, x86 && z.x86, c == CompressionXZMax)
		if err != nil {
			return 0, nil, fmt.Errorf("xz: %w", err)
		}
		if len(x) < len(best) {
			typ, best = OpReplaceXZ, x
		}
	}
	return typ, best, nil
}

// zstdContext compresses b into one zstd frame (its size in the header)
// at klauspost's best level, and gives up with ctx's error soon after ctx
// is done: a solid run takes over a second, so the encoder is fed 1 MiB
// at a time. (A shared encoder's EncodeAll, used before, could not be
// stopped; one encoder a call costs no measurable time on make bench's
// update: 5.96 s against 6.02 s, 1.9 kB larger in all, 0.007 %.)
func zstdContext(ctx context.Context, b []byte) ([]byte, error) {
	var out bytes.Buffer
	out.Grow(len(b) / 2)
	// The window: the largest power of two that b fills (EncodeAll's
	// frames declare a window of their content's size; a decoder that
	// bounds its memory by the operation's size refuses a larger one).
	window := zstd.MinWindowSize
	for window*2 <= len(b) && window < 64<<20 {
		window *= 2
	}
	w, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(false), zstd.WithWindowSize(window))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	w.ResetContentSize(&out, int64(len(b)))
	for len(b) > 0 {
		if err := ctx.Err(); err != nil {
			w.Close()
			return nil, err
		}
		n := min(len(b), 1<<20)
		if _, err := w.Write(b[:n]); err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		b = b[n:]
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return out.Bytes(), nil
}

// decompressor returns a reader of t-compressed data.
func decompressor(t OpType, data []byte, limit int64) (io.Reader, func(), error) {
	switch t {
	case OpReplaceBZ:
		return bzip2.NewReader(bytes.NewReader(data)), func() {}, nil
	case OpReplaceXZ:
		r, err := xzstream.NewReader(bytes.NewReader(data), maxXZDict)
		if err != nil {
			return nil, nil, err
		}
		return r, func() {}, nil
	case OpZstd:
		d, err := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(uint64(max(limit, 1<<20))), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return nil, nil, err
		}
		return d, d.Close, nil
	}
	return nil, nil, fmt.Errorf("%w: %v is not compressed data", ErrUnsupportedOp, t)
}
