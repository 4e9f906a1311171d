package diskimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/kiln-os/kiln/layout"
)

// VHDFooter is a VHD footer's fields, as the specification names them.
type VHDFooter struct {
	Cookie             string
	Features           uint32
	FileFormatVersion  uint32
	DataOffset         uint64
	TimeStamp          uint32 // seconds since 2000-01-01T00:00:00Z
	CreatorApplication string
	CreatorVersion     uint32
	CreatorHostOS      uint32
	OriginalSize       uint64
	CurrentSize        uint64
	Cylinders          uint16
	Heads, Sectors     uint8
	DiskType           uint32
	Checksum           uint32
	UniqueID           [16]byte
	SavedState         uint8
	// ChecksumOK says whether Checksum is the one's complement of the
	// sum of the footer's other bytes.
	ChecksumOK bool
}

// ParseVHDFooter parses a 512-byte VHD footer.
func ParseVHDFooter(b []byte) (*VHDFooter, error) {
	if len(b) != vhdFooterSize {
		return nil, fmt.Errorf("diskimage: a VHD footer is %d bytes, not %d", vhdFooterSize, len(b))
	}
	be := binary.BigEndian
	f := &VHDFooter{
		Cookie: string(b[0:8]), Features: be.Uint32(b[8:]), FileFormatVersion: be.Uint32(b[12:]),
		DataOffset: be.Uint64(b[16:]), TimeStamp: be.Uint32(b[24:]), CreatorApplication: string(b[28:32]),
		CreatorVersion: be.Uint32(b[32:]), CreatorHostOS: be.Uint32(b[36:]), OriginalSize: be.Uint64(b[40:]),
		CurrentSize: be.Uint64(b[48:]), Cylinders: be.Uint16(b[56:]), Heads: b[58], Sectors: b[59],
		DiskType: be.Uint32(b[60:]), Checksum: be.Uint32(b[64:]), SavedState: b[84],
	}
	copy(f.UniqueID[:], b[68:84])
	c := append([]byte(nil), b...)
	clear(c[64:68])
	f.ChecksumOK = vhdChecksum(c) == f.Checksum
	return f, nil
}

type vhdReader struct {
	t          tableReader
	blockSize  int64
	bitmapSize int64
	batOff     int64
	entries    int64 // the BAT entries read: those that map the disk
}

// openVHD checks a VHD's footer (and a dynamic VHD's header) against the
// file's size; the BAT is read a page at a time, as it is used.
func openVHD(r io.ReaderAt, size int64, f Format) (int64, virtualDisk, error) {
	if size < 2*vhdFooterSize {
		return 0, nil, formatErr(f, 0, "a %d-byte file", size)
	}
	b := make([]byte, vhdFooterSize)
	at := size - vhdFooterSize
	if err := readFull(r, size, f, b, at, "the footer"); err != nil {
		return 0, nil, err
	}
	foot, _ := ParseVHDFooter(b)
	if foot.Cookie != "conectix" {
		return 0, nil, formatErr(f, at, "no footer")
	}
	if !foot.ChecksumOK {
		return 0, nil, formatErr(f, at+64, "footer checksum %#x does not match its bytes", foot.Checksum)
	}
	vsize := int64(foot.CurrentSize)
	if vsize < 0 || vsize > vhdMaxSize || vsize%512 != 0 {
		return 0, nil, formatErr(f, at+48, "current size %d", foot.CurrentSize)
	}
	switch foot.DiskType {
	case vhdTypeFixed:
		if size != vsize+vhdFooterSize {
			return 0, nil, formatErr(f, at+48, "a fixed disk of %d bytes in a %d-byte file", vsize, size)
		}
		return vsize, rawDisk{r}, nil
	case vhdTypeDynamic:
	default:
		return 0, nil, fmt.Errorf("%w: VHD disk type %d", ErrUnsupported, foot.DiskType)
	}
	h := make([]byte, vhdHeaderSize)
	hoff := int64(foot.DataOffset)
	if foot.DataOffset > uint64(size) {
		return 0, nil, formatErr(f, at+16, "dynamic disk header at %d", foot.DataOffset)
	}
	if err := readFull(r, size, f, h, hoff, "the dynamic disk header"); err != nil {
		return 0, nil, err
	}
	be := binary.BigEndian
	sum := be.Uint32(h[36:])
	c := append([]byte(nil), h...)
	clear(c[36:40])
	if !bytes.HasPrefix(h, []byte("cxsparse")) || vhdChecksum(c) != sum {
		return 0, nil, formatErr(f, hoff, "dynamic disk header cookie or checksum")
	}
	v := &vhdReader{t: tableReader{r: r, size: size, f: f}, blockSize: int64(be.Uint32(h[32:]))}
	if v.blockSize < 4096 || v.blockSize > 256<<20 || v.blockSize&(v.blockSize-1) != 0 {
		return 0, nil, formatErr(f, hoff+32, "block size %d", v.blockSize)
	}
	v.bitmapSize = roundUp(v.blockSize/512/8, 512)
	v.entries = (vsize + v.blockSize - 1) / v.blockSize
	if maxEntries := int64(be.Uint32(h[28:])); maxEntries < v.entries {
		return 0, nil, formatErr(f, hoff+28, "Max Table Entries %d for %d bytes in blocks of %d, which need %d", maxEntries, vsize, v.blockSize, v.entries)
	}
	tableOff := be.Uint64(h[16:])
	if tableOff > uint64(size) || v.entries*4 > size-int64(tableOff) {
		return 0, nil, formatErr(f, hoff+16, "a BAT of %d entries (%s) at %d runs past the end of the %d-byte file", v.entries, layout.HumanSize(v.entries*4), tableOff, size)
	}
	v.batOff = int64(tableOff)
	return vsize, &blockDisk{bs: v.blockSize, read: v.readBlock}, nil
}

// readBlock reads p at off inside block i: the sectors its bitmap marks,
// zeros for the others.
func (v *vhdReader) readBlock(i, off int64, p []byte) error {
	b, err := v.t.entry(v.batOff, v.entries, 4, i, "the BAT")
	if err != nil {
		return err
	}
	e := binary.BigEndian.Uint32(b)
	if e == vhdUnused {
		clear(p)
		return nil
	}
	at := int64(e) * 512
	bitmap := make([]byte, v.bitmapSize)
	if err := readFull(v.t.r, v.t.size, v.t.f, bitmap, at, "a block bitmap"); err != nil {
		return err
	}
	present := func(s int64) bool { return bitmap[s/8]&(0x80>>(s%8)) != 0 }
	for len(p) > 0 {
		// A run of sectors all present or all absent.
		set := present(off / 512)
		n := min(int64(len(p)), 512-off%512)
		for n < int64(len(p)) && present((off+n)/512) == set {
			n = min(int64(len(p)), n+512)
		}
		if !set {
			clear(p[:n])
		} else if err := readFull(v.t.r, v.t.size, v.t.f, p[:n], at+v.bitmapSize+off, "a block"); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}
