package diskimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sync"

	"github.com/klauspost/compress/flate"
)

// The GCE format is what `gcloud compute images create --source-uri` and
// GCE's image import take: a gzip-compressed tar whose one member is the
// raw disk, named disk.raw, in GNU tar's oldgnu format, written sparse as
// `tar --format=oldgnu -Sczf disk.tar.gz disk.raw` writes it (GCE's
// "Manually import boot disks" documents that command). Sparse, the
// member holds the disk's data only: a 4 GiB disk with 300 MiB of data
// stores 300 MiB, where a plain member would store, and gzip would read,
// 4 GiB of zeros.
//
// The sparse map is found in a first pass over the raw image's data (its
// holes are not read): the runs of 64 KiB units that are not all zeros,
// so that it depends on the content alone. The second pass writes the
// tar stream through deflate, in independent chunks compressed on every
// core (each ended by a sync flush, so that they join into one deflate
// stream) and written in order; the gzip header is fixed (no name, mtime
// 0, OS unknown) and the member's mtime is Options.Time.
const (
	gceMember = "disk.raw"
	gceChunk  = 4 << 20 // raw bytes per pipeline block
	// tarRecord is GNU tar's record size (blocking factor 20): it pads
	// an archive to a whole number of records.
	tarRecord = 20 * 512
	// gnuSparseInHeader and gnuSparseInExt are the sparse entries the
	// oldgnu header and each extension header hold.
	gnuSparseInHeader = 4
	gnuSparseInExt    = 21
	gzipLevel         = flate.DefaultCompression
)

// gzipHeader is a gzip member header with no name, no mtime, no extra
// flags and OS 255 (unknown), as Go's gzip writes by default.
var gzipHeader = []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}

// tarNumber writes v into the numeric field b as GNU tar does: octal
// digits and a NUL when it fits, else base-256 (the high bit of the first
// byte set, the value big-endian), which GNU tar, libarchive and Go read.
func tarNumber(b []byte, v int64) {
	digits := len(b) - 1
	if v >= 0 && v < 1<<(3*digits) {
		copy(b, fmt.Sprintf("%0*o", digits, v))
		b[digits] = 0
		return
	}
	clear(b)
	binary.BigEndian.PutUint64(b[len(b)-8:], uint64(v))
	b[0] |= 0x80
}

// tarChecksum sets the header's checksum: the sum of its bytes with the
// checksum field as spaces, six octal digits, NUL, space.
func tarChecksum(h []byte) {
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
}

// tarHeader returns a 512-byte header of a regular file: name, mode 0644,
// uid and gid 0, size, mtime, in the given magic (ustar's "ustar\x0000"
// or oldgnu's "ustar  \x00"). The checksum is left to the caller.
func tarHeader(name string, size, mtime int64, magic string) ([]byte, error) {
	if len(name) == 0 || len(name) > 100 {
		return nil, fmt.Errorf("tar: %q cannot name a member", name)
	}
	h := make([]byte, 512)
	copy(h, name)
	tarNumber(h[100:108], 0o644)
	tarNumber(h[108:116], 0)
	tarNumber(h[116:124], 0)
	tarNumber(h[124:136], size)
	tarNumber(h[136:148], max(mtime, 0))
	h[156] = '0'
	copy(h[257:265], magic)
	return h, nil
}

// gnuSparseHeaders returns the oldgnu headers of a sparse member of size
// bytes whose data is the runs data (in order, not touching): the header
// (type 'S', the first 4 entries, the real size) and as many extension
// headers as the other entries need, 21 each. As GNU tar does, a member
// that ends with a hole ends its map with an empty entry at its size.
func gnuSparseHeaders(name string, size, mtime int64, data []span) ([]byte, error) {
	entries := data
	if len(data) == 0 || data[len(data)-1].end < size {
		entries = append(entries[:len(entries):len(entries)], span{size, size})
	}
	var stored int64
	for _, d := range data {
		stored += d.end - d.off
	}
	h, err := tarHeader(name, stored, mtime, "ustar  \x00")
	if err != nil {
		return nil, err
	}
	h[156] = 'S'
	put := func(b []byte, e span) {
		tarNumber(b[0:12], e.off)
		tarNumber(b[12:24], e.end-e.off)
	}
	i := 0
	for ; i < len(entries) && i < gnuSparseInHeader; i++ {
		put(h[386+24*i:], entries[i])
	}
	if i < len(entries) {
		h[482] = 1
	}
	tarNumber(h[483:495], size)
	tarChecksum(h)
	for i < len(entries) {
		ext := make([]byte, 512)
		for k := 0; k < gnuSparseInExt && i < len(entries); k, i = k+1, i+1 {
			put(ext[24*k:], entries[i])
		}
		if i < len(entries) {
			ext[504] = 1
		}
		h = append(h, ext...)
	}
	return h, nil
}

// dataRuns returns the runs of the raw image's 64 KiB units that are not
// all zeros (the last unit may be short): a first pass that reads only
// the image's data.
func dataRuns(ctx context.Context, src *Source, workers int) ([]span, error) {
	var runs []span
	p := &pipeline{src: src, bs: gceChunk, workers: workers}
	_, err := p.run(ctx, func(b *block) error {
		runs = appendRuns(runs, b, src.Size())
		return nil
	})
	return runs, err
}

// appendRuns adds the units of b that are not zeros to runs.
func appendRuns(runs []span, b *block, size int64) []span {
	for u, z := range b.zero {
		if z {
			continue
		}
		off := b.off + int64(u)*unitSize
		end := min(off+unitSize, size)
		if k := len(runs); k > 0 && runs[k-1].end == off {
			runs[k-1].end = end
		} else {
			runs = append(runs, span{off, end})
		}
	}
	return runs
}

// deflater compresses chunks of one deflate stream independently, on any
// goroutine: every chunk but the last ends with a sync flush (byte
// aligned, not final), so that the chunks, joined in order, are one
// stream. The bytes depend only on the chunks.
type deflater struct {
	pool sync.Pool
}

func newDeflater() *deflater {
	d := &deflater{}
	d.pool.New = func() any {
		w, _ := flate.NewWriter(nil, gzipLevel) // the level is valid
		return w
	}
	return d
}

// chunk compresses data; last ends the stream.
func (d *deflater) chunk(data []byte, last bool) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(data)/2 + 64)
	w := d.pool.Get().(*flate.Writer)
	defer d.pool.Put(w)
	w.Reset(&buf)
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	var err error
	if last {
		err = w.Close()
	} else {
		err = w.Flush()
	}
	if err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeGCE writes the raw image as a gzip-compressed GNU tar holding it
// as the sparse member disk.raw.
func writeGCE(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	size := src.Size()
	runs, err := dataRuns(ctx, src, o.Workers)
	if err != nil {
		return 0, err
	}
	hdr, err := gnuSparseHeaders(gceMember, size, o.Time.Unix(), runs)
	if err != nil {
		return 0, err
	}
	d := newDeflater()
	out := newAppender(dst, 0)
	out.Write(gzipHeader)
	crc := crc32.NewIEEE()
	var tarLen int64 // bytes of the tar stream so far
	emit := func(plain [][]byte, comp []byte) error {
		for _, p := range plain {
			crc.Write(p)
			tarLen += int64(len(p))
		}
		_, err := out.Write(comp)
		return err
	}
	comp, err := d.chunk(hdr, false)
	if err != nil {
		return 0, err
	}
	if err := emit([][]byte{hdr}, comp); err != nil {
		return 0, err
	}
	// The member's data: the units that are not zeros, in order, each
	// block's compressed on a worker.
	var again []span
	p := &pipeline{src: src, bs: gceChunk, workers: o.Workers, progress: o.Progress}
	p.work = func(b *block) error {
		var data []byte
		for u, z := range b.zero {
			if !z {
				data = append(data, b.unit(u)...)
			}
		}
		if len(data) == 0 {
			b.out = nil
			return nil
		}
		comp, err := d.chunk(data, false)
		b.out = [][]byte{comp}
		return err
	}
	_, err = p.run(ctx, func(b *block) error {
		again = appendRuns(again, b, size)
		if b.out == nil {
			return nil
		}
		var plain [][]byte
		for u, z := range b.zero {
			if !z {
				plain = append(plain, b.unit(u))
			}
		}
		return emit(plain, b.out[0])
	})
	if err != nil {
		return 0, err
	}
	if !slices.Equal(runs, again) {
		return 0, fmt.Errorf("the raw image changed while it was read")
	}
	// Padding to a whole block, the end-of-archive blocks, and zeros to a
	// whole record, as GNU tar writes.
	end := roundUp(tarLen, 512) + 1024
	end = roundUp(end, tarRecord)
	tail := make([]byte, end-tarLen)
	if comp, err = d.chunk(tail, true); err != nil {
		return 0, err
	}
	if err := emit([][]byte{tail}, comp); err != nil {
		return 0, err
	}
	var trailer [8]byte
	binary.LittleEndian.PutUint32(trailer[0:], crc.Sum32())
	binary.LittleEndian.PutUint32(trailer[4:], uint32(tarLen))
	out.Write(trailer[:])
	return out.pos(), out.flush()
}
