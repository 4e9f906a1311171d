package diskimage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"io"
	"unicode/utf16"

	"github.com/kiln-os/kiln/layout"
)

// VHDX (Microsoft's [MS-VHDX] specification), little-endian: the 1 MiB
// header section (file identifier, two headers, two region tables), a
// 1 MiB log (empty: no log GUID), the 1 MiB metadata region, the block
// allocation table (BAT) and the payload blocks, 1 MiB-aligned. kiln
// writes a dynamic disk with 2 MiB blocks, 512-byte logical and 4 KiB
// physical sectors; blocks of zeros are not stored (NOT_PRESENT reads as
// zeros on a disk with no parent).
const (
	vhdxMiB            = 1 << 20
	vhdxHeader1        = 64 << 10
	vhdxHeader2        = 128 << 10
	vhdxRegion1        = 192 << 10
	vhdxRegion2        = 256 << 10
	vhdxHeaderSize     = 4 << 10
	vhdxRegionSize     = 64 << 10
	vhdxLogOffset      = 1 * vhdxMiB
	vhdxLogLength      = 1 * vhdxMiB
	vhdxMetaOffset     = 2 * vhdxMiB
	vhdxMetaLength     = 1 * vhdxMiB
	vhdxBATOffset      = 3 * vhdxMiB
	vhdxBlockSize      = 2 * vhdxMiB
	vhdxLogicalSector  = 512
	vhdxPhysicalSector = 4096
	// vhdxChunkRatio is how many payload blocks one sector bitmap block
	// covers; the BAT has a bitmap entry after each chunk.
	vhdxChunkRatio   = (1 << 23) * vhdxLogicalSector / vhdxBlockSize
	vhdxFullyPresent = 6
	vhdxMaxSize      = 64 << 40
	vhdxMetaItems    = 64 << 10 // where the metadata items start in their region
	vhdxCreator      = "kiln"
)

// The GUIDs the specification names.
var (
	vhdxBATRegion      = layout.MustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	vhdxMetadataRegion = layout.MustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
	vhdxFileParameters = layout.MustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	vhdxVirtualSize    = layout.MustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	vhdxPage83         = layout.MustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	vhdxLogicalSize    = layout.MustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	vhdxPhysicalSize   = layout.MustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
)

// msGUID returns g in Microsoft's byte order (the first three fields
// little-endian), as VHDX stores GUIDs.
func msGUID(g layout.GUID) []byte {
	return []byte{g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]}
}

// vhdxBATIndex is the BAT entry of payload block i.
func vhdxBATIndex(i int64) int64 { return i + i/vhdxChunkRatio }

// vhdxLayout is what the sizes of a disk make of a VHDX.
type vhdxLayout struct {
	vsize, blocks, entries, batLength int64
}

func newVHDXLayout(vsize int64) vhdxLayout {
	l := vhdxLayout{vsize: vsize, blocks: (vsize + vhdxBlockSize - 1) / vhdxBlockSize}
	l.entries = l.blocks + (l.blocks-1)/vhdxChunkRatio
	l.batLength = roundUp(l.entries*8, vhdxMiB)
	return l
}

func writeVHDX(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	vsize := VirtualSize(VHDX, src.Size())
	if vsize > vhdxMaxSize {
		return 0, ErrTooLarge
	}
	l := newVHDXLayout(vsize)
	bat := make([]uint64, l.entries)
	out := newAppender(dst, vhdxBATOffset+l.batLength)
	p := &pipeline{src: src, bs: vhdxBlockSize, workers: o.Workers, progress: o.Progress}
	id, err := p.run(ctx, func(b *block) error {
		if b.allZero() {
			return nil
		}
		bat[vhdxBATIndex(b.off/vhdxBlockSize)] = uint64(out.pos()) | vhdxFullyPresent
		return out.writeBlock(b, vhdxBlockSize)
	})
	if err != nil {
		return 0, err
	}
	size := out.pos()
	if err := out.flush(); err != nil {
		return 0, err
	}
	// The BAT, the metadata, then the header section last.
	batb := make([]byte, l.batLength)
	for i, e := range bat {
		binary.LittleEndian.PutUint64(batb[i*8:], e)
	}
	if _, err := out.WriteAt(batb, vhdxBATOffset); err != nil {
		return 0, err
	}
	if _, err := out.WriteAt(vhdxMetadata(vsize, contentGUID(id, "vhdx-page83")), vhdxMetaOffset); err != nil {
		return 0, err
	}
	if _, err := out.WriteAt(vhdxHeaderSection(l, id), 0); err != nil {
		return 0, err
	}
	return size, nil
}

// vhdxMetadata returns the metadata region's table and items.
func vhdxMetadata(vsize int64, diskID layout.GUID) []byte {
	le := binary.LittleEndian
	items := []struct {
		guid  layout.GUID
		flags uint32 // IsUser 1, IsVirtualDisk 2, IsRequired 4
		data  []byte
	}{
		{vhdxFileParameters, 4, le.AppendUint32(le.AppendUint32(nil, vhdxBlockSize), 0)},
		{vhdxVirtualSize, 6, le.AppendUint64(nil, uint64(vsize))},
		{vhdxPage83, 6, msGUID(diskID)},
		{vhdxLogicalSize, 6, le.AppendUint32(nil, vhdxLogicalSector)},
		{vhdxPhysicalSize, 6, le.AppendUint32(nil, vhdxPhysicalSector)},
	}
	m := make([]byte, vhdxMetaItems+64)
	copy(m[0:], "metadata")
	le.PutUint16(m[10:], uint16(len(items)))
	off := vhdxMetaItems
	for i, it := range items {
		e := m[32+i*32:]
		copy(e[0:], msGUID(it.guid))
		le.PutUint32(e[16:], uint32(off))
		le.PutUint32(e[20:], uint32(len(it.data)))
		le.PutUint32(e[24:], it.flags)
		copy(m[off:], it.data)
		off += len(it.data)
	}
	return m
}

// vhdxHeaderSection returns the first 320 KiB: the file identifier, both
// headers and both region tables.
func vhdxHeaderSection(l vhdxLayout, id [sha256.Size]byte) []byte {
	le := binary.LittleEndian
	s := make([]byte, vhdxRegion2+vhdxRegionSize)
	copy(s[0:], "vhdxfile")
	for i, c := range utf16.Encode([]rune(vhdxCreator)) {
		le.PutUint16(s[8+2*i:], c)
	}
	for i, at := range []int{vhdxHeader1, vhdxHeader2} {
		h := s[at : at+vhdxHeaderSize]
		copy(h[0:], "head")
		le.PutUint64(h[8:], uint64(i+1)) // sequence number: header 2 is current
		copy(h[16:], msGUID(contentGUID(id, "vhdx-file-write")))
		copy(h[32:], msGUID(contentGUID(id, "vhdx-data-write")))
		// Log GUID zero: no log to replay.
		le.PutUint16(h[64:], 0) // log version
		le.PutUint16(h[66:], 1) // version
		le.PutUint32(h[68:], vhdxLogLength)
		le.PutUint64(h[72:], vhdxLogOffset)
		le.PutUint32(h[4:], crc32.Checksum(h, castagnoli))
	}
	for _, at := range []int{vhdxRegion1, vhdxRegion2} {
		r := s[at : at+vhdxRegionSize]
		copy(r[0:], "regi")
		le.PutUint32(r[8:], 2)
		for i, e := range []struct {
			guid        layout.GUID
			off, length int64
		}{{vhdxBATRegion, vhdxBATOffset, l.batLength}, {vhdxMetadataRegion, vhdxMetaOffset, vhdxMetaLength}} {
			x := r[16+i*32:]
			copy(x[0:], msGUID(e.guid))
			le.PutUint64(x[16:], uint64(e.off))
			le.PutUint32(x[24:], uint32(e.length))
			le.PutUint32(x[28:], 1) // required
		}
		le.PutUint32(r[4:], crc32.Checksum(r, castagnoli))
	}
	return s
}
