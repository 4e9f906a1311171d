package diskimage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// Image is an image file read as the disk it holds: ReadAt reads the
// virtual disk, from any number of goroutines at once. Every table the
// file holds is checked against the file's bounds before it is used.
type Image struct {
	Format Format
	// VirtualSize is the size of the disk the image holds.
	VirtualSize int64
	d           virtualDisk
}

// virtualDisk reads bytes of the disk inside [0, VirtualSize).
type virtualDisk interface {
	readAt(p []byte, off int64) error
}

// Open reads the structure of the image file r (size bytes) in the
// format Detect finds (a raw image reads as itself). Errors wrap
// ErrFormat for a malformed image and ErrUnsupported for a feature kiln
// does not read.
func Open(r io.ReaderAt, size int64) (*Image, error) {
	f, err := probe(r, size)
	if err != nil {
		return nil, err
	}
	im := &Image{Format: f}
	if im.VirtualSize, im.d, err = openFormat(r, size, f); err != nil {
		return nil, err
	}
	return im, nil
}

// ReadAt reads the virtual disk.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("diskimage: negative offset %d", off)
	}
	if off >= im.VirtualSize {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), im.VirtualSize-off))
	if err := im.d.readAt(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReaderAt returns the disk as an io.ReaderAt. When the disk is the
// file's own bytes (raw, a fixed VHD) and the file has a descriptor (an
// Fd method, as *os.File has), so has the reader: readers of sparse files
// (internal/hashing, dm-verity's) then find the disk's holes with
// SEEK_DATA instead of reading them.
func (im *Image) ReaderAt() io.ReaderAt {
	if d, ok := im.d.(rawDisk); ok {
		if f, ok := d.r.(interface{ Fd() uintptr }); ok {
			return fdImage{im, f}
		}
	}
	return im
}

type fdImage struct {
	*Image
	f interface{ Fd() uintptr }
}

func (i fdImage) Fd() uintptr { return i.f.Fd() }

type rawDisk struct{ r io.ReaderAt }

func (d rawDisk) readAt(p []byte, off int64) error {
	_, err := d.r.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

// blockDisk is a disk stored in blocks of one size, each read on its
// own: qcow2 clusters, VMDK grains, VHD and VHDX blocks.
type blockDisk struct {
	bs int64
	// read fills p with the bytes at off inside block i (p does not
	// cross the block's end).
	read func(i, off int64, p []byte) error
}

func (d *blockDisk) readAt(p []byte, off int64) error {
	for len(p) > 0 {
		i, in := off/d.bs, off%d.bs
		n := min(int64(len(p)), d.bs-in)
		if err := d.read(i, in, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// readFull reads exactly len(p) bytes of the file at off, which must lie
// inside it.
func readFull(r io.ReaderAt, size int64, f Format, p []byte, off int64, what string) error {
	if off < 0 || off > size || int64(len(p)) > size-off {
		return formatErr(f, off, "%s of %d bytes lies outside the %d-byte file", what, len(p), size)
	}
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("diskimage: %s: reading %s at %d: %w", f, what, off, err)
}

// maxTableCache bounds the bytes of tables (L2 tables, grain tables,
// pages of L1 tables, grain directories and BATs) one image keeps: a
// hostile image can point its tables anywhere in a sparse file, and
// reading its whole disk must not keep them all.
const maxTableCache = 32 << 20

// tablePage is how much of a large table (a qcow2 L1 table, a VMDK grain
// directory, a VHD BAT) is read at once: tables are read as they are
// used, never whole, so a table that claims gigabytes costs nothing until
// its entries are read.
const tablePage = 64 << 10

type tableKey struct{ off, n int64 }

// tableCache keeps pieces of the file's tables read so far, by file offset
// and length, up to maxTableCache bytes (pieces are dropped, any of them,
// to make room).
type tableCache struct {
	mu    sync.Mutex
	m     map[tableKey][]byte
	bytes int64
}

func (c *tableCache) get(off, n int64, load func() ([]byte, error)) ([]byte, error) {
	k := tableKey{off, n}
	c.mu.Lock()
	t, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	t, err := load()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[tableKey][]byte{}
	}
	if _, ok := c.m[k]; ok {
		return t, nil
	}
	for old, b := range c.m {
		if c.bytes+n <= maxTableCache {
			break
		}
		delete(c.m, old)
		c.bytes -= int64(len(b))
	}
	c.m[k] = t
	c.bytes += n
	return t, nil
}

// tableReader reads the tables of an image file through a bounded cache.
type tableReader struct {
	r     io.ReaderAt
	size  int64
	f     Format
	cache tableCache
}

// read returns the n bytes at off (a whole small table, or one page of a
// large one), which must lie inside the file.
func (t *tableReader) read(off, n int64, what string) ([]byte, error) {
	if off < 0 || n < 0 || off > t.size || n > t.size-off {
		return nil, formatErr(t.f, off, "%s of %d bytes lies outside the %d-byte file", what, n, t.size)
	}
	return t.cache.get(off, n, func() ([]byte, error) {
		b := make([]byte, n)
		if err := readFull(t.r, t.size, t.f, b, off, what); err != nil {
			return nil, err
		}
		return b, nil
	})
}

// entry returns entry i of the table of entries entries of es bytes at
// off, reading only the page of the table that holds it.
func (t *tableReader) entry(off, entries, es, i int64, what string) ([]byte, error) {
	if i < 0 || i >= entries {
		return nil, fmt.Errorf("diskimage: %s: entry %d of %s, which has %d", t.f, i, what, entries)
	}
	per := tablePage / es
	page := i / per
	n := min(per, entries-page*per) * es
	b, err := t.read(off+page*tablePage, n, what)
	if err != nil {
		return nil, err
	}
	return b[(i%per)*es:][:es], nil
}

// chunk is one independently compressed piece of a compressed raw image.
type chunk struct {
	cOff, cLen int64 // in the file
	uOff, uLen int64 // in the disk
}

// chunkedDisk is a disk compressed in independent chunks (zstd frames,
// xz blocks), decoded on demand and kept in a small cache. Chunks whose
// bytes are those of a chunk already found to be all zeros are not
// decoded again: the same bytes decode to the same content.
type chunkedDisk struct {
	r      io.ReaderAt
	size   int64
	format Format
	chunks []chunk
	decode func(c chunk, comp, dst []byte) error

	mu    sync.Mutex
	cache map[int]*decoded
	order []int
	zeros map[string]bool // compressed bytes of all-zero chunks
}

type decoded struct {
	once sync.Once
	data []byte // nil: zeros
	err  error
}

// maxZeroKey bounds the compressed chunks remembered as zeros.
const maxZeroKey = 64 << 10

func (d *chunkedDisk) get(i int) ([]byte, error) {
	d.mu.Lock()
	e := d.cache[i]
	if e == nil {
		if d.cache == nil {
			d.cache, d.zeros = map[int]*decoded{}, map[string]bool{}
		}
		e = &decoded{}
		d.cache[i] = e
		d.order = append(d.order, i)
		if len(d.order) > 2*runtime.GOMAXPROCS(0)+4 {
			delete(d.cache, d.order[0])
			d.order = d.order[1:]
		}
	}
	d.mu.Unlock()
	e.once.Do(func() {
		c := d.chunks[i]
		comp := make([]byte, c.cLen)
		if e.err = readFull(d.r, d.size, d.format, comp, c.cOff, "a compressed chunk"); e.err != nil {
			return
		}
		d.mu.Lock()
		zero := d.zeros[string(comp)]
		d.mu.Unlock()
		if zero {
			return
		}
		data := make([]byte, c.uLen)
		if e.err = d.decode(c, comp, data); e.err != nil {
			return
		}
		if allZeros(data) {
			if len(comp) <= maxZeroKey {
				d.mu.Lock()
				if len(d.zeros) < 16 {
					d.zeros[string(comp)] = true
				}
				d.mu.Unlock()
			}
			return
		}
		e.data = data
	})
	return e.data, e.err
}

func (d *chunkedDisk) readAt(p []byte, off int64) error {
	// The first chunk that ends after off.
	lo, hi := 0, len(d.chunks)
	for lo < hi {
		m := (lo + hi) / 2
		if d.chunks[m].uOff+d.chunks[m].uLen <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	for i := lo; len(p) > 0; i++ {
		if i >= len(d.chunks) {
			return fmt.Errorf("diskimage: %s: no chunk holds byte %d of the disk", d.format, off)
		}
		c := d.chunks[i]
		data, err := d.get(i)
		if err != nil {
			return err
		}
		in := off - c.uOff
		n := min(int64(len(p)), c.uLen-in)
		if data == nil {
			clear(p[:n])
		} else {
			copy(p[:n], data[in:in+n])
		}
		p, off = p[n:], off+n
	}
	return nil
}

func allZeros(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), unitSize)
		if !bytes.Equal(b[:n], zeroUnit[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
