package squashfs

import (
	"compress/zlib"
	"encoding/binary"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// compressor compresses whole blocks. One compressor is used by one
// goroutine at a time.
type compressor interface {
	// compress appends the compressed form of src to dst.
	compress(dst, src []byte) []byte
}

// newCompressor returns a compressor for the options (defaults applied).
func newCompressor(o Options) (compressor, error) {
	switch o.Compression {
	case Zstd:
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(o.Level)),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false),
			// The kernel's decompressor allows a window of one block:
			// frames carry their content size and no larger window.
			zstd.WithSingleSegment(true),
			zstd.WithWindowSize(max(o.BlockSize, metadataSize)),
		)
		if err != nil {
			return nil, fmt.Errorf("squashfs: zstd encoder: %w", err)
		}
		return zstdCompressor{enc}, nil
	case Gzip:
		w, err := zlib.NewWriterLevel(nil, o.Level)
		if err != nil {
			return nil, fmt.Errorf("squashfs: zlib encoder: %w", err)
		}
		return &zlibCompressor{w: w}, nil
	}
	return nil, fmt.Errorf("%w: %v", ErrCompression, o.Compression)
}

type zstdCompressor struct{ enc *zstd.Encoder }

func (z zstdCompressor) compress(dst, src []byte) []byte { return z.enc.EncodeAll(src, dst) }

// zlibCompressor writes zlib streams, which squashfs calls gzip.
type zlibCompressor struct {
	w   *zlib.Writer
	buf sliceWriter
}

func (z *zlibCompressor) compress(dst, src []byte) []byte {
	z.buf = sliceWriter(dst)
	z.w.Reset(&z.buf)
	// Writes into a slice cannot fail.
	_, _ = z.w.Write(src)
	_ = z.w.Close()
	return z.buf
}

// sliceWriter is an io.Writer appending to a byte slice.
type sliceWriter []byte

func (s *sliceWriter) Write(p []byte) (int, error) {
	*s = append(*s, p...)
	return len(p), nil
}

// compressorOptions returns the compressor options metadata block written
// after the superblock (flag SQUASHFS_COMP_OPT): for zstd the level, for
// gzip the level, window size 15 and the default strategy. It is stored
// uncompressed, as mksquashfs does.
func compressorOptions(o Options) []byte {
	o = o.withDefaults()
	var body []byte
	switch o.Compression {
	case Gzip:
		body = binary.LittleEndian.AppendUint32(body, uint32(o.Level))
		body = binary.LittleEndian.AppendUint16(body, 15)
		body = binary.LittleEndian.AppendUint16(body, 0)
	default:
		body = binary.LittleEndian.AppendUint32(body, uint32(o.Level))
	}
	b := binary.LittleEndian.AppendUint16(nil, uint16(len(body))|metadataUncompressed)
	return append(b, body...)
}
