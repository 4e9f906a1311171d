package diskimage

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// The incompatible features a qcow2 reader must know: dirty (refcounts
// may be stale; the data is not), corrupt, external data file,
// compression type, extended L2 entries.
const (
	qcowIncompatDirty    = 1 << 0
	qcowIncompatCorrupt  = 1 << 1
	qcowIncompatDataFile = 1 << 2
	qcowIncompatExtL2    = 1 << 4
	qcowL2OffsetMask     = 0x00fffffffffffe00
)

type qcowReader struct {
	r           io.ReaderAt
	size        int64
	f           Format
	cb          uint // cluster bits
	cs          int64
	l1          []uint64
	compression byte
	l2          tableCache
	zstd        *zstd.Decoder
}

func openQCOW2(r io.ReaderAt, size int64, f Format) (int64, virtualDisk, error) {
	h := make([]byte, min(size, 4096))
	if err := readFull(r, size, f, h, 0, "the header"); err != nil {
		return 0, nil, err
	}
	if len(h) < 72 {
		return 0, nil, formatErr(f, 0, "a %d-byte file holds no header", size)
	}
	be := binary.BigEndian
	version := be.Uint32(h[4:])
	if version != 2 && version != 3 {
		return 0, nil, fmt.Errorf("%w: qcow2 version %d", ErrUnsupported, version)
	}
	if be.Uint64(h[8:]) != 0 {
		return 0, nil, fmt.Errorf("%w: qcow2 with a backing file", ErrUnsupported)
	}
	cb := uint(be.Uint32(h[20:]))
	if cb < 9 || cb > 21 {
		return 0, nil, formatErr(f, 20, "cluster bits %d", cb)
	}
	vsize := int64(be.Uint64(h[24:]))
	if vsize < 0 || vsize > qcowMaxVirtualSize {
		return 0, nil, formatErr(f, 24, "virtual size %d", vsize)
	}
	if be.Uint32(h[32:]) != 0 {
		return 0, nil, fmt.Errorf("%w: encrypted qcow2", ErrUnsupported)
	}
	q := &qcowReader{r: r, size: size, f: f, cb: cb, cs: 1 << cb}
	if version == 3 {
		if len(h) < 104 {
			return 0, nil, formatErr(f, 0, "a %d-byte file holds no version 3 header", size)
		}
		incompat := be.Uint64(h[72:])
		switch {
		case incompat&qcowIncompatCorrupt != 0:
			return 0, nil, formatErr(f, 72, "the image is marked corrupt")
		case incompat&^(qcowIncompatDirty|qcowIncompatCompr) != 0:
			return 0, nil, fmt.Errorf("%w: qcow2 incompatible features %#x", ErrUnsupported, incompat)
		}
		hl := be.Uint32(h[100:])
		if hl < 104 || int(hl) > len(h) {
			return 0, nil, formatErr(f, 100, "header length %d", hl)
		}
		if incompat&qcowIncompatCompr != 0 {
			if hl <= 104 {
				return 0, nil, formatErr(f, 100, "a compression type, but a header of %d bytes", hl)
			}
			q.compression = h[104]
		}
		if q.compression > qcowCompressZstd {
			return 0, nil, fmt.Errorf("%w: qcow2 compression type %d", ErrUnsupported, q.compression)
		}
	}
	l1Size := int64(be.Uint32(h[36:]))
	l1Off := int64(be.Uint64(h[40:]))
	l2Bits := cb - 3
	need := (vsize + q.cs<<l2Bits - 1) / (q.cs << l2Bits)
	if l1Size < need {
		return 0, nil, formatErr(f, 36, "L1 table of %d entries for %d bytes", l1Size, vsize)
	}
	if l1Off%q.cs != 0 {
		return 0, nil, formatErr(f, 40, "L1 table at %d, not a cluster boundary", l1Off)
	}
	if l1Off > size || need*8 > size-l1Off {
		return 0, nil, formatErr(f, 40, "L1 table of %d entries at %d, past the end of the file", need, l1Off)
	}
	l1 := make([]byte, need*8) // the entries past the disk's end are never used
	if err := readFull(r, size, f, l1, l1Off, "the L1 table"); err != nil {
		return 0, nil, err
	}
	for i := range need {
		q.l1 = append(q.l1, be.Uint64(l1[i*8:]))
	}
	if q.compression == qcowCompressZstd {
		var err error
		if q.zstd, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(uint64(q.cs)*2)); err != nil {
			return 0, nil, err
		}
	}
	return vsize, &blockDisk{bs: q.cs, read: q.readCluster}, nil
}

// readCluster reads p at off inside guest cluster g.
func (q *qcowReader) readCluster(g, off int64, p []byte) error {
	be := binary.BigEndian
	l2Bits := q.cb - 3
	l2Off := int64(q.l1[g>>l2Bits] & qcowL2OffsetMask)
	if l2Off == 0 {
		clear(p)
		return nil
	}
	if l2Off%q.cs != 0 {
		return formatErr(q.f, l2Off, "an L2 table not on a cluster boundary")
	}
	l2, err := q.l2.get(l2Off, func() ([]uint64, error) {
		b := make([]byte, q.cs)
		if err := readFull(q.r, q.size, q.f, b, l2Off, "an L2 table"); err != nil {
			return nil, err
		}
		t := make([]uint64, q.cs/8)
		for i := range t {
			t[i] = be.Uint64(b[i*8:])
		}
		return t, nil
	})
	if err != nil {
		return err
	}
	e := l2[g&(1<<l2Bits-1)]
	if e&qcowOflagCompr != 0 {
		x := 62 - (q.cb - 8)
		coff := int64(e & (1<<x - 1))
		sectors := int64((e>>x)&(1<<(q.cb-8)-1)) + 1
		clen := min(sectors*512-coff&511, q.size-coff)
		if coff >= q.size || clen <= 0 {
			return formatErr(q.f, coff, "compressed cluster %d outside the file", g)
		}
		c := make([]byte, clen)
		if err := readFull(q.r, q.size, q.f, c, coff, "a compressed cluster"); err != nil {
			return err
		}
		data := make([]byte, q.cs)
		if err := q.decompress(c, data); err != nil {
			return fmt.Errorf("diskimage: %s: cluster %d at %#x: %w", q.f, g, coff, err)
		}
		copy(p, data[off:])
		return nil
	}
	host := int64(e & qcowL2OffsetMask)
	if host == 0 || e&1 != 0 { // unallocated, or a zero cluster
		clear(p)
		return nil
	}
	if host%q.cs != 0 {
		return formatErr(q.f, host, "data cluster %d not on a cluster boundary", g)
	}
	return readFull(q.r, q.size, q.f, p, host+off, "a data cluster")
}

// decompress decodes one compressed cluster; c may run on past its end
// (into the next cluster's data, or padding).
func (q *qcowReader) decompress(c, data []byte) error {
	if q.compression == qcowCompressZstd {
		n, err := zstdFrameLen(c)
		if err != nil {
			return err
		}
		out, err := q.zstd.DecodeAll(c[:n], data[:0])
		if err != nil {
			return err
		}
		if len(out) != len(data) {
			return fmt.Errorf("decompressed to %d bytes, not a cluster", len(out))
		}
		return nil
	}
	// Raw deflate, as QEMU's zlib compression writes.
	_, err := io.ReadFull(flate.NewReader(bytes.NewReader(c)), data)
	return err
}
