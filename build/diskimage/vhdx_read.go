package diskimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/kiln-os/kiln/layout"
)

type vhdxReader struct {
	t          tableReader
	blockSize  int64
	chunkRatio int64
	batOff     int64
	batEntries int64
}

// vhdxMetaTableMax is the metadata table's largest size: a 32-byte
// header and 2047 entries of 32 bytes (qemu's VHDX_METADATA_TABLE_MAX_SIZE).
const vhdxMetaTableMax = 32 + 2047*32

// vhdxHeader reads the current header: the valid one (signature, CRC-32C,
// version 1) with the higher sequence number.
func vhdxHeader(r io.ReaderAt, size int64) ([]byte, error) {
	var best []byte
	var seq uint64
	for _, at := range []int64{vhdxHeader1, vhdxHeader2} {
		h := make([]byte, vhdxHeaderSize)
		if err := readFull(r, size, VHDX, h, at, "a header"); err != nil {
			return nil, err
		}
		le := binary.LittleEndian
		sum := le.Uint32(h[4:])
		c := append([]byte(nil), h...)
		clear(c[4:8])
		if !bytes.HasPrefix(h, []byte("head")) || crc32.Checksum(c, castagnoli) != sum || le.Uint16(h[66:]) != 1 {
			continue
		}
		if s := le.Uint64(h[8:]); best == nil || s > seq {
			best, seq = h, s
		}
	}
	if best == nil {
		return nil, formatErr(VHDX, vhdxHeader1, "no valid header")
	}
	return best, nil
}

func openVHDX(r io.ReaderAt, size int64) (int64, virtualDisk, error) {
	le := binary.LittleEndian
	h, err := vhdxHeader(r, size)
	if err != nil {
		return 0, nil, err
	}
	if !allZeros(h[48:64]) {
		return 0, nil, fmt.Errorf("%w: a VHDX whose log must be replayed (open it in Hyper-V or qemu-img first)", ErrUnsupported)
	}
	// The region table (the second copy when the first is damaged).
	var regions []byte
	for _, at := range []int64{vhdxRegion1, vhdxRegion2} {
		t := make([]byte, vhdxRegionSize)
		if err := readFull(r, size, VHDX, t, at, "a region table"); err != nil {
			return 0, nil, err
		}
		sum := le.Uint32(t[4:])
		c := append([]byte(nil), t...)
		clear(c[4:8])
		if bytes.HasPrefix(t, []byte("regi")) && crc32.Checksum(c, castagnoli) == sum && le.Uint32(t[8:]) <= 2047 {
			regions = t
			break
		}
	}
	if regions == nil {
		return 0, nil, formatErr(VHDX, vhdxRegion1, "no valid region table")
	}
	var batOff, batLen, metaOff, metaLen int64
	for i := range int64(le.Uint32(regions[8:])) {
		e := regions[16+i*32:]
		g := guidFromMS(e[:16])
		off, length, required := int64(le.Uint64(e[16:])), int64(le.Uint32(e[24:])), le.Uint32(e[28:])&1 != 0
		switch g {
		case vhdxBATRegion:
			batOff, batLen = off, length
		case vhdxMetadataRegion:
			metaOff, metaLen = off, length
		default:
			if required {
				return 0, nil, fmt.Errorf("%w: a VHDX with the required region %s", ErrUnsupported, g)
			}
		}
	}
	if batLen == 0 || metaLen < vhdxMetaItems || metaLen > 256<<20 {
		return 0, nil, formatErr(VHDX, vhdxRegion1, "BAT or metadata region missing")
	}
	for _, rg := range []struct {
		name     string
		off, len int64
	}{{"BAT", batOff, batLen}, {"metadata", metaOff, metaLen}} {
		if rg.off < vhdxMiB || rg.off%vhdxMiB != 0 || rg.len%vhdxMiB != 0 {
			return 0, nil, formatErr(VHDX, vhdxRegion1, "%s region of %d bytes at %d, not on 1 MiB boundaries", rg.name, rg.len, rg.off)
		}
	}
	if batOff < metaOff+metaLen && metaOff < batOff+batLen {
		return 0, nil, formatErr(VHDX, vhdxRegion1, "the BAT region (%d bytes at %d) and the metadata region (%d bytes at %d) overlap", batLen, batOff, metaLen, metaOff)
	}
	if metaOff > size || metaLen > size-metaOff {
		return 0, nil, formatErr(VHDX, vhdxRegion1, "metadata region of %d bytes at %d past the end of the %d-byte file", metaLen, metaOff, size)
	}
	// The metadata table, then the items kiln reads, each alone: never
	// the whole region.
	var th [32]byte
	if err := readFull(r, size, VHDX, th[:], metaOff, "the metadata table header"); err != nil {
		return 0, nil, err
	}
	if !bytes.HasPrefix(th[:], []byte("metadata")) {
		return 0, nil, formatErr(VHDX, metaOff, "no metadata table")
	}
	n := int64(le.Uint16(th[10:]))
	if n > 2047 {
		return 0, nil, formatErr(VHDX, metaOff+10, "%d metadata entries (at most 2047)", n)
	}
	table := make([]byte, 32+n*32)
	if err := readFull(r, size, VHDX, table, metaOff, "the metadata table"); err != nil {
		return 0, nil, err
	}
	items := map[layout.GUID][]byte{}
	for i := range n {
		e := table[32+i*32:]
		off, length := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:]))
		if off < vhdxMetaItems || off+length > metaLen {
			return 0, nil, formatErr(VHDX, metaOff+32+i*32, "metadata item outside its region")
		}
		g := guidFromMS(e[:16])
		if le.Uint32(e[24:])&4 != 0 { // required
			switch g {
			case vhdxFileParameters, vhdxVirtualSize, vhdxPage83, vhdxLogicalSize, vhdxPhysicalSize:
			default:
				return 0, nil, fmt.Errorf("%w: a VHDX with the required metadata item %s (a differencing disk?)", ErrUnsupported, g)
			}
		}
		switch g {
		case vhdxFileParameters, vhdxVirtualSize, vhdxLogicalSize:
			// Items of 8 bytes or fewer; a longer one is read in part.
			item := make([]byte, min(length, 8))
			if err := readFull(r, size, VHDX, item, metaOff+off, "a metadata item"); err != nil {
				return 0, nil, err
			}
			items[g] = item
		}
	}
	params, vs, ls := items[vhdxFileParameters], items[vhdxVirtualSize], items[vhdxLogicalSize]
	if len(params) < 8 || len(vs) < 8 || len(ls) < 4 {
		return 0, nil, formatErr(VHDX, metaOff, "file parameters, virtual disk size or logical sector size missing")
	}
	v := &vhdxReader{t: tableReader{r: r, size: size, f: VHDX}, blockSize: int64(le.Uint32(params)), batOff: batOff}
	if le.Uint32(params[4:])&2 != 0 {
		return 0, nil, fmt.Errorf("%w: a differencing VHDX", ErrUnsupported)
	}
	if v.blockSize < vhdxMiB || v.blockSize > 256*vhdxMiB || v.blockSize&(v.blockSize-1) != 0 {
		return 0, nil, formatErr(VHDX, metaOff, "block size %d", v.blockSize)
	}
	logical := int64(le.Uint32(ls))
	if logical != 512 && logical != 4096 {
		return 0, nil, formatErr(VHDX, metaOff, "logical sector size %d", logical)
	}
	vsize := int64(le.Uint64(vs))
	if vsize <= 0 || vsize > vhdxMaxSize || vsize%logical != 0 {
		return 0, nil, formatErr(VHDX, metaOff, "virtual disk size %d", vsize)
	}
	v.chunkRatio = (1 << 23) * logical / v.blockSize
	blocks := (vsize + v.blockSize - 1) / v.blockSize
	v.batEntries = blocks + (blocks-1)/v.chunkRatio
	if v.batEntries*8 > batLen {
		return 0, nil, formatErr(VHDX, vhdxRegion1, "a BAT region of %d bytes for %d blocks, which need %d entries", batLen, blocks, v.batEntries)
	}
	if batOff > size || v.batEntries*8 > size-batOff {
		return 0, nil, formatErr(VHDX, vhdxRegion1, "a BAT of %d entries (%s) at %d runs past the end of the %d-byte file", v.batEntries, layout.HumanSize(v.batEntries*8), batOff, size)
	}
	return vsize, &blockDisk{bs: v.blockSize, read: v.readBlock}, nil
}

func (v *vhdxReader) readBlock(i, off int64, p []byte) error {
	k := i + i/v.chunkRatio
	e, err := v.t.entry(v.batOff, v.batEntries, 8, k, "the BAT")
	if err != nil {
		return err
	}
	at := v.batOff + k*8
	entry := binary.LittleEndian.Uint64(e)
	switch entry & 7 {
	case 0, 1, 2, 3: // not present, undefined, zero, unmapped: zeros on a disk with no parent
		clear(p)
		return nil
	case 6: // fully present
		return readFull(v.t.r, v.t.size, VHDX, p, int64(entry>>20)<<20+off, "a payload block")
	}
	return formatErr(VHDX, at, "block %d in state %d", i, entry&7)
}

// guidFromMS reads a GUID stored in Microsoft's byte order.
func guidFromMS(b []byte) layout.GUID {
	return layout.GUID{b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]}
}
