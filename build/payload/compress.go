package payload

import (
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

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
)

var compressionNames = [...]string{"xz", "auto", "zstd", "none"}

func (c Compression) String() string {
	if int(c) < len(compressionNames) {
		return compressionNames[c]
	}
	return fmt.Sprintf("Compression(%d)", uint8(c))
}

// ParseCompression parses a Compression name ("xz", "auto", "zstd", "none").
func ParseCompression(s string) (Compression, error) {
	for i, n := range compressionNames {
		if n == s {
			return Compression(i), nil
		}
	}
	return 0, fmt.Errorf("payload: unknown compression %q (want xz, auto, zstd or none)", s)
}

var zstdEncoder = sync.OnceValue(func() *zstd.Encoder {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(false))
	if err != nil {
		panic(err)
	}
	return e
})

func compressZstd(b []byte) []byte {
	return zstdEncoder().EncodeAll(b, make([]byte, 0, len(b)/2))
}

func compressXZ(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	// CRC32 checks: xz-embedded (update_engine's decoder) supports no other.
	dict := max(len(b), 4096)
	w, err := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: dict}.NewWriter(&buf)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// compress returns the smallest encoding of b that c allows: the
// operation type and its data. Data that no compressor shrinks is a plain
// REPLACE, as update_engine expects.
func compress(b []byte, c Compression) (OpType, []byte, error) {
	typ, best := OpReplace, b
	if c == CompressionAuto || c == CompressionZstd {
		if z := compressZstd(b); len(z) < len(best) {
			typ, best = OpZstd, z
		}
	}
	if c == CompressionAuto || c == CompressionXZ {
		x, err := compressXZ(b)
		if err != nil {
			return 0, nil, fmt.Errorf("xz: %w", err)
		}
		if len(x) < len(best) {
			typ, best = OpReplaceXZ, x
		}
	}
	return typ, best, nil
}

// decompressor returns a reader of t-compressed data.
func decompressor(t OpType, data []byte, limit int64) (io.Reader, func(), error) {
	switch t {
	case OpReplaceBZ:
		return bzip2.NewReader(bytes.NewReader(data)), func() {}, nil
	case OpReplaceXZ:
		r, err := xz.ReaderConfig{SingleStream: true}.NewReader(bytes.NewReader(data))
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
