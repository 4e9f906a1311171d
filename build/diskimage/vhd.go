package diskimage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"time"
)

// VHD (Microsoft's Virtual Hard Disk Image Format Specification, 1.0):
// big-endian structures; a fixed disk is the disk's bytes then a 512-byte
// footer; a dynamic disk is a copy of the footer, the dynamic disk header,
// the block allocation table (BAT), the blocks (a sector bitmap then 2 MiB
// of data each) and the footer. kiln follows Azure's rules for both: the
// virtual size is a whole number of MiB (see VHDSize), and the footer
// says so twice (original and current size).
const (
	vhdFooterSize   = 512
	vhdHeaderSize   = 1024
	vhdFeatures     = 2 // reserved bit, always set
	vhdVersion      = 0x00010000
	vhdTypeFixed    = 2
	vhdTypeDynamic  = 3
	vhdBlockSize    = 2 << 20
	vhdBitmapSize   = vhdBlockSize / 512 / 8 // one bit per sector
	vhdBATOffset    = vhdFooterSize + vhdHeaderSize
	vhdUnused       = 0xffffffff // a BAT entry with no block
	vhdNoOffset     = ^uint64(0)
	vhdMaxSize      = 2040 << 30 // the largest VHD Hyper-V and QEMU take
	vhdCreatorApp   = "kiln"
	vhdCreatorVer   = 0x00010000
	vhdCreatorHost  = 0x5769326b // "Wi2k", as QEMU and Hyper-V write
	vhdEpochSeconds = 946684800  // 2000-01-01T00:00:00Z
)

// VHDGeometry returns the CHS geometry the VHD specification derives from
// a disk's size (its appendix "CHS Calculation"): cylinders, heads,
// sectors per track.
func VHDGeometry(size int64) (cylinders uint16, heads, sectors uint8) {
	total := size / 512
	if total > 65535*16*255 {
		total = 65535 * 16 * 255
	}
	var spt, h, cth int64
	if total >= 65535*16*63 {
		spt, h = 255, 16
		cth = total / spt
	} else {
		spt = 17
		cth = total / spt
		h = max((cth+1023)/1024, 4)
		if cth >= h*1024 || h > 16 {
			spt, h = 31, 16
			cth = total / spt
		}
		if cth >= h*1024 {
			spt, h = 63, 16
			cth = total / spt
		}
	}
	return uint16(cth / h), uint8(h), uint8(spt)
}

// VHDSize returns the virtual size of a VHD that holds a disk of size
// bytes: the smallest size at least that large that is a whole number of
// MiB (Azure's rule) and a whole number of the CHS cylinders the VHD
// specification derives from it, so that every reader finds the same
// disk: Hyper-V and Azure read the footer's current size, Virtual PC and
// QEMU 7 (for a creator it does not know) the CHS geometry. Above
// the largest geometry (127.5 GiB) readers take the current size, and the
// size is only rounded to a MiB. kiln's built-in layouts are sized in
// whole cylinders already (multiples of 258048 sectors, below 31.5 GiB).
func VHDSize(size int64) int64 {
	s := roundUp(size, 1<<20)
	for range 4096 {
		c, h, spt := VHDGeometry(s)
		if s/512 > 65535*16*255 || int64(c)*int64(h)*int64(spt)*512 == s {
			return s
		}
		s += 1 << 20
	}
	return roundUp(size, 1<<20)
}

// vhdChecksum is the one's complement of the sum of the bytes.
func vhdChecksum(b []byte) uint32 {
	var s uint32
	for _, c := range b {
		s += uint32(c)
	}
	return ^s
}

// vhdFooter returns the footer of a disk of vsize bytes.
func vhdFooter(vsize int64, diskType uint32, dataOffset uint64, t time.Time, id [sha256.Size]byte) []byte {
	b := make([]byte, vhdFooterSize)
	be := binary.BigEndian
	copy(b[0:], "conectix")
	be.PutUint32(b[8:], vhdFeatures)
	be.PutUint32(b[12:], vhdVersion)
	be.PutUint64(b[16:], dataOffset)
	be.PutUint32(b[24:], uint32(min(max(t.Unix()-vhdEpochSeconds, 0), 1<<32-1)))
	copy(b[28:], vhdCreatorApp)
	be.PutUint32(b[32:], vhdCreatorVer)
	be.PutUint32(b[36:], vhdCreatorHost)
	be.PutUint64(b[40:], uint64(vsize)) // original size
	be.PutUint64(b[48:], uint64(vsize)) // current size
	c, h, s := VHDGeometry(vsize)
	be.PutUint16(b[56:], c)
	b[58], b[59] = h, s
	be.PutUint32(b[60:], diskType)
	uid := contentGUID(id, "vhd-unique-id")
	copy(b[68:], uid[:])
	be.PutUint32(b[64:], vhdChecksum(b))
	return b
}

// writeVHDFixed writes the disk (its zeros as holes), padded to a whole
// MiB, then the footer.
func writeVHDFixed(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	vsize := VirtualSize(VHD, src.Size())
	if vsize > vhdMaxSize {
		return 0, ErrTooLarge
	}
	p := &pipeline{src: src, bs: 1 << 20, workers: o.Workers, progress: o.Progress}
	id, err := p.run(ctx, func(b *block) error {
		return writeUnits(dst, b, b.off)
	})
	if err != nil {
		return 0, err
	}
	if _, err := dst.WriteAt(vhdFooter(vsize, vhdTypeFixed, vhdNoOffset, o.Time, id), vsize); err != nil {
		return 0, err
	}
	return vsize + vhdFooterSize, nil
}

// writeVHDDynamic writes a dynamic VHD: each 2 MiB block that holds
// anything but zeros is stored, its data 4 KiB-aligned in the file.
func writeVHDDynamic(ctx context.Context, dst io.WriterAt, src *Source, o Options) (int64, error) {
	vsize := VirtualSize(VHDDynamic, src.Size())
	if vsize > vhdMaxSize {
		return 0, ErrTooLarge
	}
	entries := (vsize + vhdBlockSize - 1) / vhdBlockSize
	bat := make([]uint32, entries)
	for i := range bat {
		bat[i] = vhdUnused
	}
	batBytes := roundUp(entries*4, 512)
	out := newAppender(dst, vhdBATOffset+batBytes)
	bitmap := make([]byte, vhdBitmapSize)
	for i := range bitmap {
		bitmap[i] = 0xff
	}
	p := &pipeline{src: src, bs: vhdBlockSize, workers: o.Workers, progress: o.Progress}
	id, err := p.run(ctx, func(b *block) error {
		if b.allZero() {
			return nil
		}
		// The block's data 4 KiB-aligned in the file.
		if err := out.zeros((4096 - (out.pos()+vhdBitmapSize)%4096) % 4096); err != nil {
			return err
		}
		bat[b.off/vhdBlockSize] = uint32(out.pos() / 512)
		if _, err := out.Write(bitmap); err != nil {
			return err
		}
		return out.writeBlock(b, vhdBlockSize)
	})
	if err != nil {
		return 0, err
	}
	footer := vhdFooter(vsize, vhdTypeDynamic, vhdFooterSize, o.Time, id)
	if _, err := out.Write(footer); err != nil {
		return 0, err
	}
	size := out.pos()
	if err := out.flush(); err != nil {
		return 0, err
	}
	h := make([]byte, vhdHeaderSize)
	be := binary.BigEndian
	copy(h[0:], "cxsparse")
	be.PutUint64(h[8:], vhdNoOffset)
	be.PutUint64(h[16:], vhdBATOffset)
	be.PutUint32(h[24:], vhdVersion)
	be.PutUint32(h[28:], uint32(entries))
	be.PutUint32(h[32:], vhdBlockSize)
	be.PutUint32(h[36:], vhdChecksum(h))
	batb := make([]byte, batBytes)
	for i, e := range bat {
		be.PutUint32(batb[i*4:], e)
	}
	for i := entries * 4; i < batBytes; i++ {
		batb[i] = 0xff // the BAT's padding reads as unused entries
	}
	head := append(append(footer, h...), batb...)
	if _, err := out.WriteAt(head, 0); err != nil {
		return 0, err
	}
	return size, nil
}
