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
	r          io.ReaderAt
	size       int64
	blockSize  int64
	chunkRatio int64
	batOff     int64
}

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
	if metaOff < 0 || metaOff > size || metaLen > size-metaOff {
		return 0, nil, formatErr(VHDX, vhdxRegion1, "metadata region past the end of the file")
	}
	meta := make([]byte, metaLen)
	if err := readFull(r, size, VHDX, meta, metaOff, "the metadata region"); err != nil {
		return 0, nil, err
	}
	if !bytes.HasPrefix(meta, []byte("metadata")) {
		return 0, nil, formatErr(VHDX, metaOff, "no metadata table")
	}
	items := map[layout.GUID][]byte{}
	n := int64(le.Uint16(meta[10:]))
	if n > 2047 {
		return 0, nil, formatErr(VHDX, metaOff+10, "%d metadata entries", n)
	}
	for i := range n {
		e := meta[32+i*32:]
		off, length := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:]))
		if off < vhdxMetaItems || off+length > metaLen {
			return 0, nil, formatErr(VHDX, metaOff+32+i*32, "metadata item outside its region")
		}
		g := guidFromMS(e[:16])
		items[g] = meta[off : off+length]
		if le.Uint32(e[24:])&4 != 0 { // required
			switch g {
			case vhdxFileParameters, vhdxVirtualSize, vhdxPage83, vhdxLogicalSize, vhdxPhysicalSize:
			default:
				return 0, nil, fmt.Errorf("%w: a VHDX with the required metadata item %s (a differencing disk?)", ErrUnsupported, g)
			}
		}
	}
	params, vs, ls := items[vhdxFileParameters], items[vhdxVirtualSize], items[vhdxLogicalSize]
	if len(params) < 8 || len(vs) < 8 || len(ls) < 4 {
		return 0, nil, formatErr(VHDX, metaOff, "file parameters, virtual disk size or logical sector size missing")
	}
	v := &vhdxReader{r: r, size: size, blockSize: int64(le.Uint32(params)), batOff: batOff}
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
	if entries := blocks + (blocks-1)/v.chunkRatio; entries*8 > batLen || batOff+entries*8 > size {
		return 0, nil, formatErr(VHDX, batOff, "a BAT of %d bytes for %d blocks", batLen, blocks)
	}
	return vsize, &blockDisk{bs: v.blockSize, read: v.readBlock}, nil
}

func (v *vhdxReader) readBlock(i, off int64, p []byte) error {
	var e [8]byte
	at := v.batOff + (i+i/v.chunkRatio)*8
	if err := readFull(v.r, v.size, VHDX, e[:], at, "a BAT entry"); err != nil {
		return err
	}
	entry := binary.LittleEndian.Uint64(e[:])
	switch entry & 7 {
	case 0, 1, 2, 3: // not present, undefined, zero, unmapped: zeros on a disk with no parent
		clear(p)
		return nil
	case 6: // fully present
		return readFull(v.r, v.size, VHDX, p, int64(entry>>20)<<20+off, "a payload block")
	}
	return formatErr(VHDX, at, "block %d in state %d", i, entry&7)
}

// guidFromMS reads a GUID stored in Microsoft's byte order.
func guidFromMS(b []byte) layout.GUID {
	return layout.GUID{b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]}
}
