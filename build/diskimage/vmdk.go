package diskimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zlib"
)

// VMDK hosted sparse extents (VMware's Virtual Disk Format 5.0): a
// 512-byte header, an embedded descriptor, grain directory (GD) and grain
// tables (GTs) of 512 entries each, and 64 KiB grains. monolithicSparse
// stores grains as they are, with all GTs preallocated (and the redundant
// copy VMware writes); streamOptimized stores deflate-compressed grains
// behind markers, each GT after its grains, the GD and a footer at the end.
const (
	vmdkMagic        = 0x564d444b // "KDMV"
	vmdkGrainSectors = unitSize / 512
	vmdkGTEs         = 512
	vmdkGTSectors    = vmdkGTEs * 4 / 512
	vmdkDescOffset   = 1
	vmdkDescSectors  = 20
	vmdkGDAtEnd      = ^uint64(0)
	vmdkFlagNewline  = 1 << 0
	vmdkFlagRGD      = 1 << 1
	vmdkFlagCompress = 1 << 16
	vmdkFlagMarkers  = 1 << 17
	vmdkDeflate      = 1
	vmdkMarkerEOS    = 0
	vmdkMarkerGT     = 1
	vmdkMarkerGD     = 2
	vmdkMarkerFooter = 3
	// vmdkMaxSectors bounds the file: grain table entries are 32-bit
	// sector numbers.
	vmdkMaxSectors = 1<<32 - 1
)

// vmdkHeader is the SparseExtentHeader.
type vmdkHeader struct {
	version, flags      uint32
	capacity            uint64 // sectors
	rgdOffset, gdOffset uint64 // sectors
	overhead            uint64 // sectors before the first grain
	compress            uint16
}

func (h *vmdkHeader) bytes() []byte {
	b := make([]byte, 512)
	le := binary.LittleEndian
	le.PutUint32(b[0:], vmdkMagic)
	le.PutUint32(b[4:], h.version)
	le.PutUint32(b[8:], h.flags)
	le.PutUint64(b[12:], h.capacity)
	le.PutUint64(b[20:], vmdkGrainSectors)
	le.PutUint64(b[28:], vmdkDescOffset)
	le.PutUint64(b[36:], vmdkDescSectors)
	le.PutUint32(b[44:], vmdkGTEs)
	le.PutUint64(b[48:], h.rgdOffset)
	le.PutUint64(b[56:], h.gdOffset)
	le.PutUint64(b[64:], h.overhead)
	b[72] = 0 // clean
	b[73], b[74], b[75], b[76] = '\n', ' ', '\r', '\n'
	le.PutUint16(b[77:], h.compress)
	return b
}

// vmdkDescriptor returns the embedded descriptor, padded to its sectors.
func vmdkDescriptor(id [sha256.Size]byte, createType string, capacity uint64, name string) ([]byte, error) {
	if name == "" || strings.ContainsAny(name, "\"\\/\n\r\x00") {
		return nil, fmt.Errorf("vmdk: %q cannot name an extent", name)
	}
	cid := binary.LittleEndian.Uint32(id[:4])
	if cid == 0xffffffff { // "no parent" in parentCID
		cid--
	}
	cyl := min(capacity/(255*63), 65535)
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=ffffffff\ncreateType=%q\n\n", cid, createType)
	fmt.Fprintf(&b, "# Extent description\nRW %d SPARSE %q\n\n", capacity, name)
	fmt.Fprintf(&b, "# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\n", cyl)
	out := make([]byte, vmdkDescSectors*512)
	if b.Len() > len(out) {
		return nil, fmt.Errorf("vmdk: descriptor of %d bytes", b.Len())
	}
	copy(out, b.Bytes())
	return out, nil
}

func vmdkCapacity(src *Source) (uint64, error) {
	capacity := uint64(VirtualSize(VMDK, src.Size()) / 512)
	if capacity > vmdkMaxSectors {
		return 0, ErrTooLarge
	}
	return capacity, nil
}

// writeVMDKSparse writes a monolithicSparse VMDK: header, descriptor,
// redundant GD and GTs, GD and GTs, then the grains that are not zeros.
func writeVMDKSparse(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	capacity, err := vmdkCapacity(src)
	if err != nil {
		return 0, err
	}
	numGTs := (capacity + vmdkGrainSectors*vmdkGTEs - 1) / (vmdkGrainSectors * vmdkGTEs)
	gdSectors := (numGTs*4 + 511) / 512
	rgd := uint64(vmdkDescOffset + vmdkDescSectors)
	rgt := rgd + gdSectors
	gd := rgt + numGTs*vmdkGTSectors
	gt := gd + gdSectors
	overhead := roundUp(int64(gt+numGTs*vmdkGTSectors), vmdkGrainSectors)
	gtes := make([]uint32, numGTs*vmdkGTEs)
	out := newAppender(dst, overhead*512)
	p := &pipeline{src: src, bs: 1 << 20, workers: o.Workers, progress: o.Progress}
	id, err := p.run(ctx, func(b *block) error {
		for u, z := range b.zero {
			if z {
				continue
			}
			sector := out.pos() / 512
			if sector+vmdkGrainSectors > vmdkMaxSectors {
				return ErrTooLarge
			}
			gtes[b.off/unitSize+int64(u)] = uint32(sector)
			if _, err := out.Write(padUnit(b.unit(u))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	size := out.pos()
	if err := out.flush(); err != nil {
		return 0, err
	}
	// Both copies of the GD and GTs.
	for _, at := range [][2]uint64{{rgd, rgt}, {gd, gt}} {
		dir := make([]uint32, numGTs)
		for i := range dir {
			dir[i] = uint32(at[1] + uint64(i)*vmdkGTSectors)
		}
		if _, err := out.WriteAt(le32s(dir, int(gdSectors*512)), int64(at[0])*512); err != nil {
			return 0, err
		}
		if _, err := out.WriteAt(le32s(gtes, int(numGTs*vmdkGTSectors*512)), int64(at[1])*512); err != nil {
			return 0, err
		}
	}
	desc, err := vmdkDescriptor(id, "monolithicSparse", capacity, o.Name)
	if err != nil {
		return 0, err
	}
	h := vmdkHeader{version: 1, flags: vmdkFlagNewline | vmdkFlagRGD, capacity: capacity, rgdOffset: rgd, gdOffset: gd, overhead: uint64(overhead)}
	if _, err := out.WriteAt(append(h.bytes(), desc...), 0); err != nil {
		return 0, err
	}
	return size, nil
}

// writeVMDKStream writes a streamOptimized VMDK: header (GD at the end),
// descriptor, then each compressed grain behind its marker, each GT behind
// a marker after its grains, the GD, the footer and the end-of-stream
// marker.
func writeVMDKStream(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	size, _, err := writeVMDKStreamGrains(ctx, dst, src, o)
	return size, err
}

// writeVMDKStreamGrains is writeVMDKStream that also returns how many
// grains it stored (those that are not all zeros): an OVF descriptor's
// populated size.
func writeVMDKStreamGrains(ctx context.Context, dst io.WriterAt, src *Source, o Options) (size, grains int64, err error) {
	capacity, err := vmdkCapacity(src)
	if err != nil {
		return 0, 0, err
	}
	numGTs := (capacity + vmdkGrainSectors*vmdkGTEs - 1) / (vmdkGrainSectors * vmdkGTEs)
	overhead := uint64(vmdkGrainSectors) // header and descriptor, padded to a grain
	dir := make([]uint32, numGTs)
	gt := make([]uint32, vmdkGTEs)
	cur := int64(-1) // the GT whose grains are being written
	out := newAppender(dst, int64(overhead)*512)
	marker := func(typ uint32, sectors uint64) error {
		m := make([]byte, 512)
		binary.LittleEndian.PutUint64(m[0:], sectors)
		binary.LittleEndian.PutUint32(m[12:], typ)
		_, err := out.Write(m)
		return err
	}
	flushGT := func() error {
		if cur < 0 {
			return nil
		}
		if err := marker(vmdkMarkerGT, vmdkGTSectors); err != nil {
			return err
		}
		dir[cur] = uint32(out.pos() / 512)
		_, err := out.Write(le32s(gt, vmdkGTSectors*512))
		clear(gt)
		return err
	}
	p := &pipeline{src: src, bs: 1 << 20, workers: o.Workers, progress: o.Progress}
	p.work = func(b *block) error {
		b.out = make([][]byte, len(b.zero))
		for u, z := range b.zero {
			if z {
				continue
			}
			var buf bytes.Buffer
			var hdr [12]byte
			binary.LittleEndian.PutUint64(hdr[0:], uint64(b.off/512)+uint64(u*vmdkGrainSectors))
			buf.Write(hdr[:])
			zw, err := zlib.NewWriterLevel(&buf, zlib.DefaultCompression)
			if err != nil {
				return err
			}
			if _, err := zw.Write(padUnit(b.unit(u))); err != nil {
				return err
			}
			if err := zw.Close(); err != nil {
				return err
			}
			rec := buf.Bytes()
			binary.LittleEndian.PutUint32(rec[8:], uint32(len(rec)-12))
			b.out[u] = append(rec, make([]byte, roundUp(int64(len(rec)), 512)-int64(len(rec)))...)
		}
		return nil
	}
	id, err := p.run(ctx, func(b *block) error {
		for u, z := range b.zero {
			if z {
				continue
			}
			g := b.off/unitSize + int64(u)
			if g/vmdkGTEs != cur {
				if err := flushGT(); err != nil {
					return err
				}
				cur = g / vmdkGTEs
			}
			sector := out.pos() / 512
			if sector+int64(len(b.out[u]))/512 > vmdkMaxSectors {
				return ErrTooLarge
			}
			gt[g%vmdkGTEs] = uint32(sector)
			grains++
			if _, err := out.Write(b.out[u]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if err := flushGT(); err != nil {
		return 0, 0, err
	}
	gdSectors := (numGTs*4 + 511) / 512
	if err := marker(vmdkMarkerGD, gdSectors); err != nil {
		return 0, 0, err
	}
	gdOffset := uint64(out.pos() / 512)
	if _, err := out.Write(le32s(dir, int(gdSectors*512))); err != nil {
		return 0, 0, err
	}
	h := vmdkHeader{version: 3, flags: vmdkFlagNewline | vmdkFlagCompress | vmdkFlagMarkers, capacity: capacity,
		gdOffset: gdOffset, overhead: overhead, compress: vmdkDeflate}
	if err := marker(vmdkMarkerFooter, 1); err != nil {
		return 0, 0, err
	}
	if _, err := out.Write(h.bytes()); err != nil {
		return 0, 0, err
	}
	if err := marker(vmdkMarkerEOS, 0); err != nil {
		return 0, 0, err
	}
	size = out.pos()
	if err := out.flush(); err != nil {
		return 0, 0, err
	}
	desc, err := vmdkDescriptor(id, "streamOptimized", capacity, o.Name)
	if err != nil {
		return 0, 0, err
	}
	h.gdOffset = vmdkGDAtEnd
	if _, err := out.WriteAt(append(h.bytes(), desc...), 0); err != nil {
		return 0, 0, err
	}
	return size, grains, nil
}

// le32s encodes v little-endian into size bytes (zero-padded).
func le32s(v []uint32, size int) []byte {
	b := make([]byte, max(size, len(v)*4))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[i*4:], x)
	}
	return b
}
