package diskimage

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/kiln-os/kiln/layout"
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

// The limits QEMU puts on a qcow2 image's tables (block/qcow2.h): an
// image past them is refused by qemu-img, and by kiln.
const (
	qcowMaxL1Bytes       = 32 << 20 // QCOW_MAX_L1_SIZE
	qcowMaxRefTableBytes = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	qcowMaxSnapshots     = 65536    // QCOW_MAX_SNAPSHOTS
	qcowSnapshotHeader   = 40       // the fixed part of a snapshot table entry
)

type qcowReader struct {
	t           tableReader
	f           Format
	cb          uint // cluster bits
	cs          int64
	l1Off       int64
	l1Entries   int64 // the entries read: those that map the disk
	compression byte
	zstd        *zstd.Decoder
}

// qcowTable checks that a table of n bytes at off, named by the header
// field at field, is cluster-aligned and lies inside the file.
func qcowTable(f Format, field int64, name string, off, n, cs, size int64) error {
	if off < 0 || off%cs != 0 {
		return formatErr(f, field, "%s at %d, not on a cluster boundary", name, off)
	}
	if off > size || n > size-off {
		return formatErr(f, field, "%s of %d bytes at %d runs past the end of the %d-byte file", name, n, off, size)
	}
	return nil
}

// openQCOW2 checks the header of a qcow2 image against the file's size
// and QEMU's limits; no table is read before it is used, and none whole.
func openQCOW2(r io.ReaderAt, size int64, f Format) (int64, virtualDisk, error) {
	if size < 72 {
		return 0, nil, formatErr(f, 0, "a %d-byte file holds no header (72 bytes for version 2, 104 for version 3)", size)
	}
	h := make([]byte, min(size, 4096))
	if err := readFull(r, size, f, h, 0, "the header"); err != nil {
		return 0, nil, err
	}
	be := binary.BigEndian
	if be.Uint32(h) != qcowMagic {
		return 0, nil, formatErr(f, 0, "no qcow2 magic")
	}
	version := be.Uint32(h[4:])
	if version != 2 && version != 3 {
		return 0, nil, fmt.Errorf("%w: qcow2 version %d", ErrUnsupported, version)
	}
	cb := uint(be.Uint32(h[20:]))
	if cb < 9 || cb > 21 {
		return 0, nil, formatErr(f, 20, "cluster_bits %d (qemu takes 9 to 21)", cb)
	}
	q := &qcowReader{t: tableReader{r: r, size: size, f: f}, f: f, cb: cb, cs: 1 << cb}
	if version == 3 {
		if size < 104 {
			return 0, nil, formatErr(f, 0, "a %d-byte file holds no version 3 header (104 bytes)", size)
		}
		hl := int64(be.Uint32(h[100:]))
		if hl < 104 || hl > q.cs || hl > int64(len(h)) {
			return 0, nil, formatErr(f, 100, "header_length %d (at least 104, at most the cluster size %d and the file)", hl, q.cs)
		}
		if order := be.Uint32(h[96:]); order > 6 {
			return 0, nil, formatErr(f, 96, "refcount_order %d (qemu takes up to 6)", order)
		}
		incompat := be.Uint64(h[72:])
		switch {
		case incompat&qcowIncompatCorrupt != 0:
			return 0, nil, formatErr(f, 72, "the image is marked corrupt")
		case incompat&^(qcowIncompatDirty|qcowIncompatCompr) != 0:
			return 0, nil, fmt.Errorf("%w: qcow2 incompatible features %#x", ErrUnsupported, incompat)
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
	if be.Uint64(h[8:]) != 0 {
		return 0, nil, fmt.Errorf("%w: qcow2 with a backing file", ErrUnsupported)
	}
	vsize := int64(be.Uint64(h[24:]))
	if vsize < 0 || vsize > qcowMaxVirtualSize {
		return 0, nil, formatErr(f, 24, "virtual size %d", be.Uint64(h[24:]))
	}
	if be.Uint32(h[32:]) != 0 {
		return 0, nil, fmt.Errorf("%w: encrypted qcow2", ErrUnsupported)
	}
	// The refcount table: kiln does not read it, but QEMU refuses an
	// image whose table is missing, too large or misplaced.
	rtOff, rtClusters := int64(be.Uint64(h[48:])), int64(be.Uint32(h[56:]))
	if rtClusters == 0 {
		return 0, nil, formatErr(f, 56, "no refcount table (refcount_table_clusters 0)")
	}
	if rtClusters<<cb > qcowMaxRefTableBytes {
		return 0, nil, formatErr(f, 56, "refcount_table_clusters %d (%s) exceeds qemu's limit of 8 MiB", rtClusters, layout.HumanSize(rtClusters<<cb))
	}
	if err := qcowTable(f, 48, "the refcount table", rtOff, rtClusters<<cb, q.cs, size); err != nil {
		return 0, nil, err
	}
	if n := int64(be.Uint32(h[60:])); n > qcowMaxSnapshots {
		return 0, nil, formatErr(f, 60, "nb_snapshots %d exceeds qemu's limit of %d", n, qcowMaxSnapshots)
	} else if n > 0 {
		if err := qcowTable(f, 64, "the snapshot table", int64(be.Uint64(h[64:])), n*qcowSnapshotHeader, q.cs, size); err != nil {
			return 0, nil, err
		}
	}
	l1Size := int64(be.Uint32(h[36:]))
	if l1Size*8 > qcowMaxL1Bytes {
		return 0, nil, formatErr(f, 36, "l1_size %d entries (%s) exceeds qemu's limit of 32 MiB", l1Size, layout.HumanSize(l1Size*8))
	}
	l2Bits := cb - 3
	perL1 := q.cs << l2Bits // the bytes of disk one L1 entry maps
	need := vsize/perL1 + min(vsize%perL1, 1)
	if l1Size < need {
		return 0, nil, formatErr(f, 36, "l1_size %d entries for a disk of %d bytes, which needs %d", l1Size, vsize, need)
	}
	q.l1Off, q.l1Entries = int64(be.Uint64(h[40:])), need
	// The entries past the disk's end are never used: only those that
	// map it must be in the file.
	if err := qcowTable(f, 40, "the L1 table", q.l1Off, need*8, q.cs, size); err != nil {
		return 0, nil, err
	}
	if q.compression == qcowCompressZstd {
		var err error
		if q.zstd, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(uint64(q.cs)*2)); err != nil {
			return 0, nil, fmt.Errorf("diskimage: %s: %w", f, err)
		}
	}
	return vsize, &blockDisk{bs: q.cs, read: q.readCluster}, nil
}

// readCluster reads p at off inside guest cluster g.
func (q *qcowReader) readCluster(g, off int64, p []byte) error {
	be := binary.BigEndian
	l2Bits := q.cb - 3
	e1, err := q.t.entry(q.l1Off, q.l1Entries, 8, g>>l2Bits, "the L1 table")
	if err != nil {
		return err
	}
	l2Off := int64(be.Uint64(e1) & qcowL2OffsetMask)
	if l2Off == 0 {
		clear(p)
		return nil
	}
	if l2Off%q.cs != 0 {
		return formatErr(q.f, l2Off, "an L2 table not on a cluster boundary")
	}
	l2, err := q.t.read(l2Off, q.cs, "an L2 table")
	if err != nil {
		return err
	}
	e := be.Uint64(l2[(g&(1<<l2Bits-1))*8:])
	size := q.t.size
	if e&qcowOflagCompr != 0 {
		x := 62 - (q.cb - 8)
		coff := int64(e & (1<<x - 1))
		sectors := int64((e>>x)&(1<<(q.cb-8)-1)) + 1
		if coff >= size {
			return formatErr(q.f, coff, "compressed cluster %d outside the file", g)
		}
		clen := min(sectors*512-coff&511, size-coff)
		if clen <= 0 {
			return formatErr(q.f, coff, "compressed cluster %d outside the file", g)
		}
		c := make([]byte, clen)
		if err := readFull(q.t.r, size, q.f, c, coff, "a compressed cluster"); err != nil {
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
	return readFull(q.t.r, size, q.f, p, host+off, "a data cluster")
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
