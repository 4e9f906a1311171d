package diskimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zlib"

	"github.com/kiln-os/kiln/layout"
)

// The limits QEMU puts on a VMDK sparse extent (block/vmdk.c): an extent
// past them is refused by qemu-img, and by kiln.
const (
	vmdkMaxGTEs      = 512      // "L2 table size too big"
	vmdkMaxGDEntries = 32 << 20 // "L1 size too big"
)

type vmdkReader struct {
	t          tableReader
	grain      int64 // bytes
	gtes       int64
	gdOff      int64
	gdEntries  int64
	compressed bool
	markers    bool
}

// vmdkHeaderAt parses the sparse extent header at off.
func vmdkHeaderAt(r io.ReaderAt, size int64, f Format, off int64) ([]byte, error) {
	if off < 0 || size-off < 512 {
		return nil, formatErr(f, max(off, 0), "a %d-byte file holds no sparse extent header (512 bytes)", size)
	}
	h := make([]byte, 512)
	if err := readFull(r, size, f, h, off, "the sparse extent header"); err != nil {
		return nil, err
	}
	if binary.LittleEndian.Uint32(h) != vmdkMagic {
		return nil, formatErr(f, off, "no sparse extent header")
	}
	return h, nil
}

// openVMDK checks a VMDK sparse extent's header against the file's size
// and QEMU's limits; the grain directory is read a page at a time, as it
// is used.
func openVMDK(r io.ReaderAt, size int64, f Format) (int64, virtualDisk, error) {
	h, err := vmdkHeaderAt(r, size, f, 0)
	if err != nil {
		return 0, nil, err
	}
	le := binary.LittleEndian
	version, flags := le.Uint32(h[4:]), le.Uint32(h[8:])
	if version < 1 || version > 3 {
		return 0, nil, fmt.Errorf("%w: VMDK sparse extent version %d", ErrUnsupported, version)
	}
	if overhead := le.Uint64(h[64:]); overhead > uint64(size)/512 {
		return 0, nil, formatErr(f, 64, "overHead of %d sectors in a %d-byte file (truncated?)", overhead, size)
	}
	gdOffset := le.Uint64(h[56:])
	if gdOffset == vmdkGDAtEnd {
		// streamOptimized: the footer, before the end-of-stream marker,
		// holds the grain directory's place.
		if h, err = vmdkHeaderAt(r, size, f, size-1024); err != nil {
			return 0, nil, err
		}
		gdOffset = le.Uint64(h[56:])
	}
	capacity := le.Uint64(h[12:])
	grainSectors := le.Uint64(h[20:])
	gtes := uint64(le.Uint32(h[44:]))
	if grainSectors < 8 || grainSectors > 2048 || grainSectors&(grainSectors-1) != 0 {
		return 0, nil, formatErr(f, 20, "grainSize of %d sectors", grainSectors)
	}
	if gtes == 0 || gtes > vmdkMaxGTEs {
		return 0, nil, formatErr(f, 44, "numGTEsPerGT %d (qemu takes 1 to %d)", gtes, vmdkMaxGTEs)
	}
	if capacity > 1<<40 { // 512 TiB
		return 0, nil, formatErr(f, 12, "capacity of %d sectors (more than 512 TiB)", capacity)
	}
	v := &vmdkReader{t: tableReader{r: r, size: size, f: f}, grain: int64(grainSectors) * 512, gtes: int64(gtes),
		compressed: flags&vmdkFlagCompress != 0, markers: flags&vmdkFlagMarkers != 0}
	if v.compressed && le.Uint16(h[77:]) != vmdkDeflate {
		return 0, nil, fmt.Errorf("%w: VMDK compression %d", ErrUnsupported, le.Uint16(h[77:]))
	}
	if v.compressed && !v.markers {
		return 0, nil, fmt.Errorf("%w: compressed VMDK grains without markers", ErrUnsupported)
	}
	perGT := int64(grainSectors) * v.gtes // sectors
	v.gdEntries = int64(capacity)/perGT + min(int64(capacity)%perGT, 1)
	if v.gdEntries > vmdkMaxGDEntries {
		return 0, nil, formatErr(f, 12, "a grain directory of %d entries (%s) exceeds qemu's limit of %d entries", v.gdEntries, layout.HumanSize(v.gdEntries*4), vmdkMaxGDEntries)
	}
	if gdOffset > uint64(size)/512 || v.gdEntries*4 > size-int64(gdOffset)*512 {
		return 0, nil, formatErr(f, 56, "a grain directory of %d entries at sector %d runs past the end of the %d-byte file", v.gdEntries, gdOffset, size)
	}
	v.gdOff = int64(gdOffset) * 512
	return int64(capacity) * 512, &blockDisk{bs: v.grain, read: v.readGrain}, nil
}

func (v *vmdkReader) readGrain(g, off int64, p []byte) error {
	le := binary.LittleEndian
	e, err := v.t.entry(v.gdOff, v.gdEntries, 4, g/v.gtes, "the grain directory")
	if err != nil {
		return err
	}
	gt := int64(le.Uint32(e)) * 512
	if gt == 0 { // no grain table: zeros
		clear(p)
		return nil
	}
	t, err := v.t.read(gt, v.gtes*4, "a grain table")
	if err != nil {
		return err
	}
	at := int64(le.Uint32(t[(g%v.gtes)*4:])) * 512
	if at <= 512 { // unallocated (0) or a zeroed grain (1)
		clear(p)
		return nil
	}
	if !v.compressed {
		return readFull(v.t.r, v.t.size, v.t.f, p, at+off, "a grain")
	}
	var m [12]byte
	if err := readFull(v.t.r, v.t.size, v.t.f, m[:], at, "a grain marker"); err != nil {
		return err
	}
	lba, n := le.Uint64(m[:]), int64(le.Uint32(m[8:]))
	if lba != uint64(g*v.grain/512) {
		return formatErr(v.t.f, at, "grain %d's marker names sector %d", g, lba)
	}
	if n <= 0 || n > 2*v.grain+1024 {
		return formatErr(v.t.f, at, "grain %d compressed to %d bytes", g, n)
	}
	c := make([]byte, n)
	if err := readFull(v.t.r, v.t.size, v.t.f, c, at+12, "a compressed grain"); err != nil {
		return err
	}
	zr, err := zlib.NewReader(bytes.NewReader(c))
	if err != nil {
		return formatErr(v.t.f, at, "grain %d: %v", g, err)
	}
	data := make([]byte, v.grain)
	if _, err := io.ReadFull(zr, data); err != nil {
		return formatErr(v.t.f, at, "grain %d: %v", g, err)
	}
	copy(p, data[off:])
	return nil
}
