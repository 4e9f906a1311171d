// Package xzstream reads and writes the .xz container format: the one
// the REPLACE_XZ operations of update_engine payloads and compressed tar
// sources use. It decodes LZMA2 with ulikunitz/xz's LZMA2 coder, alone or
// behind the x86 BCJ filter (update_engine's own generator filters x86
// ELF data so), and refuses a dictionary larger than the caller allows
// before allocating it.
package xzstream

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// Reader decodes the .xz container: every stream (concatenated streams
// and stream padding included), every block with its check, the index and
// the footer. The filters are LZMA2, alone or after x86 BCJ. Unlike
// ulikunitz/xz's reader, it refuses a block whose dictionary is larger
// than its limit before allocating it: the dictionary size comes from the
// untrusted header, and a 4 GiB one took a build to 4.5 GB.
type Reader struct {
	r   *bufio.Reader
	max int64
	err error

	flags     [2]byte // stream flags, repeated in the footer
	checkSize int
	records   [][2]uint64 // unpadded size, uncompressed size of each block

	// the current block, when block is not nil
	block      io.Reader
	in         *countingReader // compressed bytes of the block
	headerSize int
	check      hash.Hash
	out        uint64 // uncompressed bytes so far
	wantIn     int64  // sizes the block header gives, or -1
	wantOut    int64
}

// Magic is the first six bytes of an .xz stream.
var Magic = []byte{0xfd, '7', 'z', 'X', 'Z', 0}

var crc64Table = crc64.MakeTable(crc64.ECMA)

// ErrFormat marks a malformed xz stream.
var ErrFormat = errors.New("xz: malformed stream")

// errXZ is ErrFormat, by its old name in this file.
var errXZ = ErrFormat

// ErrDictionary means a block asks for a dictionary larger than the
// reader's limit.
var ErrDictionary = errors.New("xz: dictionary too large")

// NewReader reads the stream header from r and returns a Reader of the
// decoded data that refuses dictionaries over maxDict bytes.
func NewReader(r io.Reader, maxDict int64) (*Reader, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	x := &Reader{r: br, max: maxDict}
	if err := x.streamHeader(); err != nil {
		return nil, err
	}
	return x, nil
}

func (x *Reader) Read(p []byte) (int, error) {
	for x.err == nil {
		if x.block == nil {
			x.err = x.next()
			continue
		}
		n, err := x.block.Read(p)
		x.check.Write(p[:n])
		x.out += uint64(n)
		if x.wantOut >= 0 && x.out > uint64(x.wantOut) {
			x.err = fmt.Errorf("%w: block longer than its header says", errXZ)
			return n, x.err
		}
		if err == io.EOF {
			x.err = x.endBlock()
			if n > 0 {
				return n, nil
			}
			continue
		}
		if err != nil {
			x.err = fmt.Errorf("xz: %w", eof(err))
		}
		return n, x.err
	}
	return 0, x.err
}

// eof turns a premature io.EOF into io.ErrUnexpectedEOF.
func eof(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (x *Reader) streamHeader() error {
	var h [12]byte
	if _, err := io.ReadFull(x.r, h[:]); err != nil {
		return fmt.Errorf("xz: stream header: %w", eof(err))
	}
	if !bytes.Equal(h[:6], Magic) {
		return fmt.Errorf("%w: no xz magic", errXZ)
	}
	if crc32.ChecksumIEEE(h[6:8]) != binary.LittleEndian.Uint32(h[8:]) {
		return fmt.Errorf("%w: stream header CRC32", errXZ)
	}
	if h[6] != 0 || h[7]&0xf0 != 0 {
		return fmt.Errorf("%w: stream flags %#x %#x", errXZ, h[6], h[7])
	}
	switch h[7] {
	case 0:
		x.checkSize = 0
	case 1:
		x.checkSize = 4
	case 4:
		x.checkSize = 8
	case 10:
		x.checkSize = 32
	default:
		return fmt.Errorf("xz: check type %d not supported", h[7])
	}
	x.flags = [2]byte{h[6], h[7]}
	x.records = x.records[:0]
	return nil
}

func (x *Reader) newCheck() hash.Hash {
	switch x.flags[1] {
	case 1:
		return crc32.NewIEEE()
	case 4:
		return crc64.New(crc64Table)
	case 10:
		return sha256.New()
	}
	return nopHash{}
}

// next reads what follows a block or a stream header: another block
// header, or the index, footer and stream padding; at the end of the
// input it returns io.EOF.
func (x *Reader) next() error {
	b, err := x.r.ReadByte()
	if err != nil {
		return fmt.Errorf("xz: %w", eof(err))
	}
	if b != 0 {
		return x.blockHeader(b)
	}
	if err := x.index(); err != nil {
		return err
	}
	// Stream padding (zeros, in fours), then another stream or the end.
	for {
		peek, err := x.r.Peek(4)
		if len(peek) == 0 && err == io.EOF {
			return io.EOF
		}
		if len(peek) < 4 {
			return fmt.Errorf("%w: %d bytes after the stream", errXZ, len(peek))
		}
		if !bytes.Equal(peek, []byte{0, 0, 0, 0}) {
			return x.streamHeader()
		}
		x.r.Discard(4)
	}
}

func (x *Reader) blockHeader(first byte) error {
	size := (int(first) + 1) * 4
	h := make([]byte, size)
	h[0] = first
	if _, err := io.ReadFull(x.r, h[1:]); err != nil {
		return fmt.Errorf("xz: block header: %w", eof(err))
	}
	if crc32.ChecksumIEEE(h[:size-4]) != binary.LittleEndian.Uint32(h[size-4:]) {
		return fmt.Errorf("%w: block header CRC32", errXZ)
	}
	flags := h[1]
	if flags&0x3c != 0 {
		return fmt.Errorf("%w: block flags %#x", errXZ, flags)
	}
	p := h[2 : size-4]
	x.wantIn, x.wantOut = -1, -1
	var v uint64
	var ok bool
	if flags&0x40 != 0 {
		if v, p, ok = uvarint(p); !ok || v == 0 || v > 1<<62 {
			return fmt.Errorf("%w: block compressed size", errXZ)
		}
		x.wantIn = int64(v)
	}
	if flags&0x80 != 0 {
		if v, p, ok = uvarint(p); !ok || v > 1<<62 {
			return fmt.Errorf("%w: block uncompressed size", errXZ)
		}
		x.wantOut = int64(v)
	}
	// The filter chain: LZMA2 alone, or x86 BCJ (with no properties, or a
	// start offset) then LZMA2.
	var bcj *x86
	if nf := flags&3 + 1; nf > 2 {
		return fmt.Errorf("xz: a chain of %d filters is not supported (only LZMA2, alone or after x86 BCJ)", nf)
	} else if nf == 2 {
		id, rest, ok1 := uvarint(p)
		psize, rest, ok2 := uvarint(rest)
		if !ok1 || !ok2 || id != filterX86 || (psize != 0 && psize != 4) || uint64(len(rest)) < psize {
			return fmt.Errorf("xz: filter %#x before LZMA2 not supported (only x86 BCJ, 0x04)", id)
		}
		var start uint32
		if psize == 4 {
			start = binary.LittleEndian.Uint32(rest)
		}
		bcj, p = newX86(start), rest[psize:]
	}
	id, p, ok1 := uvarint(p)
	psize, p, ok2 := uvarint(p)
	if !ok1 || !ok2 || id != filterLZMA2 || psize != 1 || len(p) < 1 {
		return fmt.Errorf("xz: filter %#x not supported (only LZMA2, alone or after x86 BCJ)", id)
	}
	dict, err := lzma.DecodeDictCap(p[0])
	if err != nil {
		return fmt.Errorf("%w: %v", errXZ, err)
	}
	if dict > x.max {
		return fmt.Errorf("%w: xz dictionary of %s, the most kiln decodes is %s", ErrDictionary, mib(dict), mib(x.max))
	}
	if !bytes.Equal(p[1:], make([]byte, len(p)-1)) {
		return fmt.Errorf("%w: block header padding", errXZ)
	}
	x.in = &countingReader{r: x.r}
	var lr io.Reader
	if lr, err = (lzma.Reader2Config{DictCap: int(max(dict, lzma.MinDictCap))}).NewReader2(x.in); err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	if bcj != nil {
		lr = &x86Reader{r: lr, f: bcj}
	}
	x.block, x.headerSize, x.check, x.out = lr, size, x.newCheck(), 0
	return nil
}

// endBlock checks a block's sizes, padding and check, and records it for
// the index.
func (x *Reader) endBlock() error {
	comp := x.in.n
	if x.wantIn >= 0 && comp != x.wantIn || x.wantOut >= 0 && x.out != uint64(x.wantOut) {
		return fmt.Errorf("%w: block sizes differ from its header", errXZ)
	}
	if !x.in.framed() {
		return fmt.Errorf("%w: LZMA2 chunk sizes differ from the data they hold", errXZ)
	}
	tail := make([]byte, (4-comp%4)%4+int64(x.checkSize))
	if _, err := io.ReadFull(x.r, tail); err != nil {
		return fmt.Errorf("xz: block: %w", eof(err))
	}
	pad := len(tail) - x.checkSize
	if !bytes.Equal(tail[:pad], make([]byte, pad)) {
		return fmt.Errorf("%w: block padding", errXZ)
	}
	sum := x.check.Sum(nil)
	switch x.flags[1] {
	case 1:
		sum = binary.LittleEndian.AppendUint32(nil, x.check.(hash.Hash32).Sum32())
	case 4:
		sum = binary.LittleEndian.AppendUint64(nil, x.check.(hash.Hash64).Sum64())
	}
	if !bytes.Equal(sum, tail[pad:]) {
		return fmt.Errorf("%w: block check does not match its data", errXZ)
	}
	x.records = append(x.records, [2]uint64{uint64(x.headerSize) + uint64(comp) + uint64(x.checkSize), x.out})
	x.block = nil
	return nil
}

// index reads the index (its indicator byte already read) and the stream
// footer, and checks them against the blocks read.
func (x *Reader) index() error {
	h := crc32.NewIEEE()
	h.Write([]byte{0})
	size := 1
	read := func() (uint64, error) {
		var v uint64
		for i := 0; i < 9; i++ {
			b, err := x.r.ReadByte()
			if err != nil {
				return 0, fmt.Errorf("xz: index: %w", eof(err))
			}
			h.Write([]byte{b})
			size++
			v |= uint64(b&0x7f) << (7 * i)
			if b&0x80 == 0 {
				return v, nil
			}
		}
		return 0, fmt.Errorf("%w: index number too long", errXZ)
	}
	count, err := read()
	if err != nil {
		return err
	}
	if count != uint64(len(x.records)) {
		return fmt.Errorf("%w: index lists %d blocks, the stream has %d", errXZ, count, len(x.records))
	}
	for _, rec := range x.records {
		for _, want := range rec {
			v, err := read()
			if err != nil {
				return err
			}
			if v != want {
				return fmt.Errorf("%w: index differs from the blocks", errXZ)
			}
		}
	}
	tail := make([]byte, (4-size%4)%4+4)
	if _, err := io.ReadFull(x.r, tail); err != nil {
		return fmt.Errorf("xz: index: %w", eof(err))
	}
	pad := len(tail) - 4
	h.Write(tail[:pad])
	if !bytes.Equal(tail[:pad], make([]byte, pad)) || h.Sum32() != binary.LittleEndian.Uint32(tail[pad:]) {
		return fmt.Errorf("%w: index padding or CRC32", errXZ)
	}
	indexSize := size + len(tail)
	var f [12]byte
	if _, err := io.ReadFull(x.r, f[:]); err != nil {
		return fmt.Errorf("xz: stream footer: %w", eof(err))
	}
	if crc32.ChecksumIEEE(f[4:10]) != binary.LittleEndian.Uint32(f[:4]) || f[10] != 'Y' || f[11] != 'Z' ||
		[2]byte{f[8], f[9]} != x.flags || (int(binary.LittleEndian.Uint32(f[4:8]))+1)*4 != indexSize {
		return fmt.Errorf("%w: stream footer", errXZ)
	}
	return nil
}

// uvarint reads an xz multibyte integer (at most 9 bytes) from p.
func uvarint(p []byte) (uint64, []byte, bool) {
	var v uint64
	for i := 0; i < len(p) && i < 9; i++ {
		v |= uint64(p[i]&0x7f) << (7 * i)
		if p[i]&0x80 == 0 {
			return v, p[i+1:], true
		}
	}
	return 0, nil, false
}

// nopHash is the check of type None.
type nopHash struct{}

func (nopHash) Write(p []byte) (int, error) { return len(p), nil }
func (nopHash) Sum(b []byte) []byte         { return b }
func (nopHash) Reset()                      {}
func (nopHash) Size() int                   { return 0 }
func (nopHash) BlockSize() int              { return 1 }

func mib(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// countingReader counts the bytes read through it, and follows the LZMA2
// chunk framing in them: ulikunitz/xz's decoder stops reading a chunk once
// it has its unpacked bytes, whatever packed size the chunk header gave,
// where liblzma and xz-embedded refuse a chunk whose packed size is not
// the bytes its data took. The decoder reads no further than it decodes,
// so at the end of the block the framing must have ended exactly.
type countingReader struct {
	r io.Reader
	n int64

	need  int    // bytes of the current header field or data still to come
	field uint8  // what they are: see the chunk* constants
	head  []byte // the header bytes read so far
	bad   bool   // a header byte no LZMA2 stream has
}

// Where countingReader is in the LZMA2 framing.
const (
	chunkControl = iota // the next byte is a chunk's control byte
	chunkHeader         // the rest of a chunk header
	chunkData           // a chunk's data
	chunkEnded          // the end marker has been read
)

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	for b := p[:n]; len(b) > 0; {
		switch c.field {
		case chunkData:
			k := min(c.need, len(b))
			c.need -= k
			b = b[k:]
			if c.need == 0 {
				c.field = chunkControl
			}
		case chunkControl:
			ctl := b[0]
			b = b[1:]
			c.head = append(c.head[:0], ctl)
			switch {
			case ctl == 0:
				c.field = chunkEnded
			case ctl == 1 || ctl == 2:
				c.field, c.need = chunkHeader, 2
			case ctl >= 0x80:
				c.field, c.need = chunkHeader, 4
				if ctl >= 0xc0 {
					c.need++ // the properties byte
				}
			default:
				c.bad = true
				c.field = chunkEnded
			}
		case chunkHeader:
			c.head = append(c.head, b[0])
			b = b[1:]
			if c.need--; c.need == 0 {
				h := c.head
				if h[0] < 0x80 {
					c.need = int(h[1])<<8 | int(h[2]) + 1 // uncompressed data
				} else {
					c.need = int(h[3])<<8 | int(h[4]) + 1 // packed data
				}
				c.field = chunkData
			}
		case chunkEnded:
			c.bad = true // bytes past the end marker
			b = nil
		}
	}
	return n, err
}

// framed reports whether the bytes read were whole LZMA2 chunks and the
// end marker.
func (c *countingReader) framed() bool { return c.field == chunkEnded && !c.bad }
