package xzstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/ulikunitz/xz/lzma"
)

// Filter IDs of the .xz format.
const (
	filterX86   = 0x04
	filterLZMA2 = 0x21
)

// Options say how Encode compresses.
type Options struct {
	// DictCap is the LZMA2 dictionary size in bytes (at least 4096).
	DictCap int
	// X86 runs the x86 BCJ filter before LZMA2: smaller for x86 machine
	// code, larger for most other data.
	X86 bool
	// Ulikunitz codes LZMA2 with ulikunitz/xz's encoder instead of kiln's
	// (for comparison).
	Ulikunitz bool
	// Fast chooses kiln's fast parser (xz's fast mode) over its optimal
	// one.
	Fast bool
	// AheadFinder runs the optimal parser's match finder on a goroutine
	// of its own, a few batches of positions ahead: the same output, in
	// about two thirds of the time when a second core is free.
	AheadFinder bool
	// InPlace lets Encode run the x86 filter over data itself instead of
	// a copy, and undo it before returning: data must not be read by
	// anything else meanwhile.
	InPlace bool
}

// Encode compresses data into one .xz stream of one block with a CRC32
// check (the only check update_engine's xz-embedded decoder knows besides
// none), LZMA2 with kiln's encoder (its fast or optimal parser), behind the
// x86 BCJ filter when o.X86 is set. The same input and options give the
// same bytes.
func Encode(data []byte, o Options) ([]byte, error) {
	return EncodeContext(context.Background(), data, o)
}

// EncodeContext is Encode that gives up with ctx's error soon (within
// 256 KiB of input) after ctx is done.
func EncodeContext(ctx context.Context, data []byte, o Options) ([]byte, error) {
	dict := max(o.DictCap, lzma.MinDictCap)
	sum := crc32.ChecksumIEEE(data)
	in := data
	if o.X86 {
		if o.InPlace {
			defer newX86(0).filter(in, false) // decoding gives the bytes back
		} else {
			in = bytes.Clone(data)
		}
		newX86(0).filter(in, true)
	}
	var out bytes.Buffer
	out.Grow(len(data)/3 + 64)
	out.Write(AppendStreamHeader(nil, CheckCRC32))

	// Block header: no sizes (the index has them), the filter chain.
	var h []byte
	h = append(h, 0, 0) // size byte and flags, set below
	if o.X86 {
		h[1] = 1 // two filters
		h = append(h, filterX86, 0)
	}
	h = append(h, filterLZMA2, 1, lzma.EncodeDictCap(int64(dict)))
	for (len(h)+4)%4 != 0 {
		h = append(h, 0)
	}
	h[0] = byte((len(h)+4)/4 - 1)
	h = binary.LittleEndian.AppendUint32(h, crc32.ChecksumIEEE(h))
	out.Write(h)

	start := out.Len()
	if o.Ulikunitz {
		w, err := lzma.Writer2Config{
			Properties: &lzma.Properties{LC: 3, LP: 0, PB: 2},
			DictCap:    dict,
			BufSize:    4096,
		}.NewWriter2(&out)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		if _, err := w.Write(in); err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		if err := w.Close(); err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
	} else {
		out.Write(encodeLZMA2(nil, in, dict, func() bool { return ctx.Err() != nil }, o.Fast, o.AheadFinder))
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	compressed := out.Len() - start
	for out.Len()%4 != 0 {
		out.WriteByte(0)
	}
	out.Write(binary.LittleEndian.AppendUint32(nil, sum))

	out.Write(AppendStreamTail(nil, []IndexRecord{{uint64(len(h) + compressed + 4), uint64(len(data))}}, CheckCRC32))
	return out.Bytes(), nil
}

// Check types of the stream flags.
const (
	CheckCRC32 byte = 0x01
	CheckCRC64 byte = 0x04
)

// AppendStreamHeader appends an .xz stream header: the magic, the stream
// flags (the check type) and their CRC32.
func AppendStreamHeader(b []byte, check byte) []byte {
	b = append(b, Magic...)
	b = append(b, 0, check)
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE([]byte{0, check}))
}

// IndexRecord is one block as the index lists it.
type IndexRecord struct {
	Unpadded     uint64 // block header + compressed data + check, without padding
	Uncompressed uint64
}

// AppendStreamTail appends what follows a stream's blocks: the index
// (indicator, count, records, padding, CRC32) and the stream footer (its
// CRC32, the index size, the stream flags, "YZ"). xz's multibyte integers
// are the same as encoding/binary's unsigned varints.
func AppendStreamTail(b []byte, records []IndexRecord, check byte) []byte {
	idx := []byte{0}
	idx = binary.AppendUvarint(idx, uint64(len(records)))
	for _, r := range records {
		idx = binary.AppendUvarint(idx, r.Unpadded)
		idx = binary.AppendUvarint(idx, r.Uncompressed)
	}
	for len(idx)%4 != 0 {
		idx = append(idx, 0)
	}
	idx = binary.LittleEndian.AppendUint32(idx, crc32.ChecksumIEEE(idx))
	b = append(b, idx...)
	f := binary.LittleEndian.AppendUint32(nil, uint32(len(idx)/4-1))
	f = append(f, 0, check)
	b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(f))
	b = append(b, f...)
	return append(b, 'Y', 'Z')
}

// FirstBlockX86 reports whether the first block of the .xz stream that b
// begins with (b holds at least its stream and block headers, up to 1036
// bytes) goes through the x86 BCJ filter. Malformed data gives false.
func FirstBlockX86(b []byte) bool {
	if len(b) < 14 || !bytes.Equal(b[:6], Magic) || b[12] == 0 {
		return false
	}
	h := b[12:]
	size := (int(h[0]) + 1) * 4
	if len(h) < size || h[1]&3 != 1 {
		return false
	}
	p := h[2 : size-4]
	var ok bool
	for _, bit := range []byte{0x40, 0x80} {
		if h[1]&bit != 0 {
			if _, p, ok = uvarint(p); !ok {
				return false
			}
		}
	}
	id, _, ok := uvarint(p)
	return ok && id == filterX86
}
