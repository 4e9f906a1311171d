package squashfs

import (
	"encoding/binary"
	"io"
)

// Metadata blocks (inode, directory, fragment, export, id and xattr
// tables) hold up to 8 KiB each, behind a 2-byte header giving their stored
// length, with bit 15 set when the block is stored uncompressed.
const (
	metadataSize         = 8192
	metadataUncompressed = 1 << 15
)

// metaWriter builds a stream of metadata blocks in memory. References into
// the stream are (compressed offset of a block) << 16 | offset inside the
// uncompressed block, relative to the stream's start.
type metaWriter struct {
	c      compressor
	cur    []byte   // the block being filled, < metadataSize bytes
	out    []byte   // finished blocks, headers included
	starts []uint64 // offset in out of every finished block
	tmp    []byte
}

func newMetaWriter(c compressor) *metaWriter {
	return &metaWriter{c: c, cur: make([]byte, 0, metadataSize)}
}

// ref returns the reference of the next byte written.
func (m *metaWriter) ref() uint64 { return uint64(len(m.out))<<16 | uint64(len(m.cur)) }

// pos returns the uncompressed position of the next byte written.
func (m *metaWriter) pos() int64 { return int64(len(m.starts))*metadataSize + int64(len(m.cur)) }

// blockStart returns the compressed offset of uncompressed block k, which
// must be a finished block or the one being filled.
func (m *metaWriter) blockStart(k int64) uint64 {
	if k < int64(len(m.starts)) {
		return m.starts[k]
	}
	return uint64(len(m.out))
}

// write appends p to the stream.
func (m *metaWriter) write(p []byte) {
	for len(p) > 0 {
		n := min(len(p), metadataSize-len(m.cur))
		m.cur = append(m.cur, p[:n]...)
		p = p[n:]
		if len(m.cur) == metadataSize {
			m.flush()
		}
	}
}

// flush finishes the block being filled, if it holds anything.
func (m *metaWriter) flush() {
	if len(m.cur) == 0 {
		return
	}
	m.starts = append(m.starts, uint64(len(m.out)))
	m.out = appendMetaBlock(m.out, m.c, m.cur, &m.tmp)
	m.cur = m.cur[:0]
}

// bytes finishes the stream and returns it.
func (m *metaWriter) bytes() []byte {
	m.flush()
	return m.out
}

// appendMetaBlock appends one metadata block holding raw (at most
// metadataSize bytes) to dst, compressed when that makes it smaller.
func appendMetaBlock(dst []byte, c compressor, raw []byte, tmp *[]byte) []byte {
	*tmp = c.compress((*tmp)[:0], raw)
	if len(*tmp) < len(raw) {
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(*tmp)))
		return append(dst, *tmp...)
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(raw))|metadataUncompressed)
	return append(dst, raw...)
}

// lookupTable encodes a table the kernel reads through an index (fragment,
// export, id and xattr id tables): data in metadata blocks placed at
// offset at, then prefix, then one little-endian u64 per block giving its
// absolute offset. It returns the bytes and the offset of the index
// (that is, of prefix).
func lookupTable(c compressor, data, prefix []byte, at int64) ([]byte, int64) {
	var out, tmp []byte
	var index []uint64
	for off := 0; off < len(data); off += metadataSize {
		index = append(index, uint64(at)+uint64(len(out)))
		out = appendMetaBlock(out, c, data[off:min(off+metadataSize, len(data))], &tmp)
	}
	indexStart := at + int64(len(out))
	out = append(out, prefix...)
	for _, i := range index {
		out = binary.LittleEndian.AppendUint64(out, i)
	}
	return out, indexStart
}

// bufWriter batches sequential writes to an io.WriterAt.
type bufWriter struct {
	w   io.WriterAt
	buf []byte
	off int64 // image offset of buf[0]
}

func newBufWriter(w io.WriterAt, size int) *bufWriter {
	return &bufWriter{w: w, buf: make([]byte, 0, size)}
}

// writeAt writes p at off, buffering while writes are contiguous.
func (b *bufWriter) writeAt(p []byte, off int64) error {
	if off != b.off+int64(len(b.buf)) || len(b.buf)+len(p) > cap(b.buf) {
		if err := b.flush(); err != nil {
			return err
		}
		b.off = off
	}
	if len(p) >= cap(b.buf) {
		_, err := b.w.WriteAt(p, off)
		b.off = off + int64(len(p))
		return err
	}
	b.buf = append(b.buf, p...)
	return nil
}

// flush writes out what is buffered.
func (b *bufWriter) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.WriteAt(b.buf, b.off)
	b.off += int64(len(b.buf))
	b.buf = b.buf[:0]
	return err
}
