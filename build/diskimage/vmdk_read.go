package diskimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zlib"
)

type vmdkReader struct {
	r          io.ReaderAt
	size       int64
	f          Format
	grain      int64 // bytes
	gtes       int64
	gd         []uint32
	compressed bool
	markers    bool
	gts        tableCache
}

// vmdkHeaderAt parses the sparse extent header at off.
func vmdkHeaderAt(r io.ReaderAt, size int64, f Format, off int64) ([]byte, error) {
	h := make([]byte, 512)
	if err := readFull(r, size, f, h, off, "the sparse extent header"); err != nil {
		return nil, err
	}
	if binary.LittleEndian.Uint32(h) != vmdkMagic {
		return nil, formatErr(f, off, "no sparse extent header")
	}
	return h, nil
}

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
		return 0, nil, formatErr(f, 20, "grain of %d sectors", grainSectors)
	}
	if gtes == 0 || gtes > 1<<16 {
		return 0, nil, formatErr(f, 44, "%d grain table entries", gtes)
	}
	if capacity > 1<<40 { // 512 TiB
		return 0, nil, formatErr(f, 12, "capacity of %d sectors", capacity)
	}
	v := &vmdkReader{r: r, size: size, f: f, grain: int64(grainSectors) * 512, gtes: int64(gtes),
		compressed: flags&vmdkFlagCompress != 0, markers: flags&vmdkFlagMarkers != 0}
	if v.compressed && le.Uint16(h[77:]) != vmdkDeflate {
		return 0, nil, fmt.Errorf("%w: VMDK compression %d", ErrUnsupported, le.Uint16(h[77:]))
	}
	if v.compressed && !v.markers {
		return 0, nil, fmt.Errorf("%w: compressed VMDK grains without markers", ErrUnsupported)
	}
	numGTs := (int64(capacity) + int64(grainSectors)*v.gtes - 1) / (int64(grainSectors) * v.gtes)
	if gdOffset > uint64(size)/512 {
		return 0, nil, formatErr(f, 56, "grain directory at sector %d", gdOffset)
	}
	if numGTs*4 > size-int64(gdOffset)*512 {
		return 0, nil, formatErr(f, 56, "grain directory of %d entries past the end of the file", numGTs)
	}
	gd := make([]byte, numGTs*4)
	if err := readFull(r, size, f, gd, int64(gdOffset)*512, "the grain directory"); err != nil {
		return 0, nil, err
	}
	for i := range numGTs {
		v.gd = append(v.gd, le.Uint32(gd[i*4:]))
	}
	return int64(capacity) * 512, &blockDisk{bs: v.grain, read: v.readGrain}, nil
}

func (v *vmdkReader) readGrain(g, off int64, p []byte) error {
	le := binary.LittleEndian
	gt := int64(v.gd[g/v.gtes]) * 512
	if gt == 0 { // no grain table: zeros
		clear(p)
		return nil
	}
	t, err := v.gts.get(gt, func() ([]uint64, error) {
		b := make([]byte, v.gtes*4)
		if err := readFull(v.r, v.size, v.f, b, gt, "a grain table"); err != nil {
			return nil, err
		}
		t := make([]uint64, v.gtes)
		for i := range t {
			t[i] = uint64(le.Uint32(b[i*4:]))
		}
		return t, nil
	})
	if err != nil {
		return err
	}
	at := int64(t[g%v.gtes]) * 512
	if at <= 512 { // unallocated (0) or a zeroed grain (1)
		clear(p)
		return nil
	}
	if !v.compressed {
		return readFull(v.r, v.size, v.f, p, at+off, "a grain")
	}
	var m [12]byte
	if err := readFull(v.r, v.size, v.f, m[:], at, "a grain marker"); err != nil {
		return err
	}
	lba, n := le.Uint64(m[:]), int64(le.Uint32(m[8:]))
	if lba != uint64(g*v.grain/512) {
		return formatErr(v.f, at, "grain %d's marker names sector %d", g, lba)
	}
	if n <= 0 || n > 2*v.grain+1024 {
		return formatErr(v.f, at, "grain %d compressed to %d bytes", g, n)
	}
	c := make([]byte, n)
	if err := readFull(v.r, v.size, v.f, c, at+12, "a compressed grain"); err != nil {
		return err
	}
	zr, err := zlib.NewReader(bytes.NewReader(c))
	if err != nil {
		return formatErr(v.f, at, "grain %d: %v", g, err)
	}
	data := make([]byte, v.grain)
	if _, err := io.ReadFull(zr, data); err != nil {
		return formatErr(v.f, at, "grain %d: %v", g, err)
	}
	copy(p, data[off:])
	return nil
}
