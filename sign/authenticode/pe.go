package authenticode

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// PE/COFF offsets and sizes (Microsoft PE format specification).
const (
	dosHeaderSize     = 64
	lfanewOffset      = 0x3c // e_lfanew: file offset of the PE signature
	peSignature       = "PE\x00\x00"
	coffHeaderSize    = 20
	sectionHeaderSize = 40

	// Optional header magics.
	magicPE32     = 0x10b
	magicPE32Plus = 0x20b

	// Offsets inside the optional header, the same for PE32 and PE32+.
	optFileAlignment = 36
	optSizeOfHeaders = 60
	optCheckSum      = 64

	// certDirIndex is the certificate table's index among the data
	// directories (IMAGE_DIRECTORY_ENTRY_SECURITY).
	certDirIndex = 4
	dataDirSize  = 8
)

// Range is a span of the file.
type Range struct {
	Offset, Size int64
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Offset + r.Size }

// Section is a section's raw data in the file.
type Section struct {
	Name string
	Range
}

// Image is what Authenticode needs of a PE/COFF image: where the fields it
// skips and edits are, and the file ranges it hashes.
type Image struct {
	// Magic is 0x10b (PE32) or 0x20b (PE32+).
	Magic uint16
	// CheckSumOffset is the file offset of the optional header's CheckSum.
	CheckSumOffset int64
	// CertDirOffset is the file offset of the certificate table's data
	// directory entry (its file offset and size).
	CertDirOffset int64
	// SizeOfHeaders is the optional header's SizeOfHeaders: the hashed
	// headers end there.
	SizeOfHeaders int64
	// Sections are the sections with raw data, in file order.
	Sections []Section
	// CertTable is the attribute certificate table (the signatures); its
	// Size is 0 in an unsigned image.
	CertTable Range
	// Size is the file's size.
	Size int64
}

// Signed reports whether the image has a certificate table.
func (im *Image) Signed() bool { return im.CertTable.Size > 0 }

// hashedEnd is where the image's hashed bytes end: the start of the
// certificate table, or the end of the file.
func (im *Image) hashedEnd() int64 {
	if im.Signed() {
		return im.CertTable.Offset
	}
	return im.Size
}

// Parse reads the layout of the PE/COFF image pe, checking every offset it
// will use against the file: a malformed image gives a *FormatError naming
// the field.
func Parse(pe []byte) (*Image, error) {
	size := int64(len(pe))
	fail := func(off int64, field, format string, args ...any) (*Image, error) {
		return nil, &FormatError{Off: off, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	u16 := func(off int64) uint16 { return binary.LittleEndian.Uint16(pe[off:]) }
	u32 := func(off int64) uint32 { return binary.LittleEndian.Uint32(pe[off:]) }

	// (1) The DOS header: "MZ" and e_lfanew.
	if size < dosHeaderSize {
		return fail(0, "DOS header", "the file is %d bytes, shorter than the %d-byte DOS header", size, dosHeaderSize)
	}
	if string(pe[:2]) != "MZ" {
		return fail(0, "e_magic", "%q is not \"MZ\": not a PE/EFI image", pe[:2])
	}
	peOff := int64(u32(lfanewOffset))
	if peOff+int64(len(peSignature))+coffHeaderSize > size {
		return fail(lfanewOffset, "e_lfanew", "PE header at 0x%x runs past the end of the file (%d bytes)", peOff, size)
	}
	if string(pe[peOff:peOff+4]) != peSignature {
		return fail(peOff, "PE signature", "%q is not \"PE\\0\\0\"", pe[peOff:peOff+4])
	}

	// (2) The COFF file header.
	coff := peOff + 4
	nSections := int64(u16(coff + 2))
	optSize := int64(u16(coff + 16))
	opt := coff + coffHeaderSize
	if opt+optSize > size {
		return fail(coff+16, "SizeOfOptionalHeader", "optional header of %d bytes at 0x%x runs past the end of the file (%d bytes)", optSize, opt, size)
	}

	// (3) The optional header: its magic says where the data directories
	// start.
	if optSize < 2 {
		return fail(coff+16, "SizeOfOptionalHeader", "%d bytes: no optional header", optSize)
	}
	im := &Image{Magic: u16(opt), Size: size}
	var dirs, nDirsOff int64
	switch im.Magic {
	case magicPE32:
		nDirsOff, dirs = opt+92, opt+96
	case magicPE32Plus:
		nDirsOff, dirs = opt+108, opt+112
	default:
		return fail(opt, "optional header magic", "0x%x is neither PE32 (0x10b) nor PE32+ (0x20b)", im.Magic)
	}
	if dirs > opt+optSize {
		return fail(coff+16, "SizeOfOptionalHeader", "%d bytes is too short for a %s optional header (%d bytes before the data directories)", optSize, im.kind(), dirs-opt)
	}
	nDirs := int64(u32(nDirsOff))
	if nDirs <= certDirIndex {
		return fail(nDirsOff, "NumberOfRvaAndSizes", "%d: the image has no certificate table entry (a signed image needs at least %d data directories)", nDirs, certDirIndex+1)
	}
	if dirs+nDirs*dataDirSize > opt+optSize {
		return fail(nDirsOff, "NumberOfRvaAndSizes", "%d data directories need %d bytes; SizeOfOptionalHeader leaves %d", nDirs, nDirs*dataDirSize, opt+optSize-dirs)
	}
	im.CheckSumOffset = opt + optCheckSum
	im.CertDirOffset = dirs + certDirIndex*dataDirSize
	im.SizeOfHeaders = int64(u32(opt + optSizeOfHeaders))

	// (4) The section table, which the headers must hold.
	secTable := opt + optSize
	secEnd := secTable + nSections*sectionHeaderSize
	if secEnd > size {
		return fail(coff+2, "NumberOfSections", "%d section headers at 0x%x run past the end of the file (%d bytes)", nSections, secTable, size)
	}
	if im.SizeOfHeaders < secEnd || im.SizeOfHeaders > size {
		return fail(opt+optSizeOfHeaders, "SizeOfHeaders", "0x%x is outside the headers' bounds (the section table ends at 0x%x, the file at 0x%x)", im.SizeOfHeaders, secEnd, size)
	}

	// (5) The certificate table: its data directory entry holds a file
	// offset (not an RVA) and a size; it must end the file, where
	// verifiers look for it.
	im.CertTable = Range{int64(u32(im.CertDirOffset)), int64(u32(im.CertDirOffset + 4))}
	if im.CertTable.Size > 0 {
		if im.CertTable.Offset < im.SizeOfHeaders || im.CertTable.End() != size {
			return fail(im.CertDirOffset, "certificate table", "0x%x+0x%x is not at the end of the file (0x%x bytes) after the headers", im.CertTable.Offset, im.CertTable.Size, size)
		}
		if err := checkCertTable(pe[im.CertTable.Offset:], im.CertTable.Offset); err != nil {
			return nil, err
		}
	} else {
		im.CertTable = Range{}
	}

	// (6) The sections' raw data: inside the hashed part of the file,
	// after the headers, not overlapping one another.
	for i := int64(0); i < nSections; i++ {
		h := secTable + i*sectionHeaderSize
		s := Section{Name: sectionName(pe[h : h+8]), Range: Range{int64(u32(h + 20)), int64(u32(h + 16))}}
		if s.Size == 0 {
			continue
		}
		field := fmt.Sprintf("section %d (%s)", i, s.Name)
		if s.Offset < im.SizeOfHeaders {
			return fail(h+20, field+" PointerToRawData", "0x%x is inside the headers (SizeOfHeaders 0x%x)", s.Offset, im.SizeOfHeaders)
		}
		what := "the end of the file"
		if im.Signed() {
			what = "the certificate table"
		}
		if s.Offset >= im.hashedEnd() {
			return fail(h+20, field+" PointerToRawData", "0x%x is past %s (0x%x)", s.Offset, what, im.hashedEnd())
		}
		if s.End() > im.hashedEnd() {
			return fail(h+16, field+" SizeOfRawData", "0x%x bytes at 0x%x run past %s (0x%x)", s.Size, s.Offset, what, im.hashedEnd())
		}
		im.Sections = append(im.Sections, s)
	}
	// Verifiers hash the sections sorted by file offset (stable, as
	// edk2's insertion sort is).
	slices.SortStableFunc(im.Sections, func(a, b Section) int { return int(a.Offset - b.Offset) })
	for i := 1; i < len(im.Sections); i++ {
		if prev, s := im.Sections[i-1], im.Sections[i]; s.Offset < prev.End() {
			return fail(s.Offset, "section "+s.Name, "raw data at 0x%x+0x%x overlaps section %s (0x%x+0x%x)", s.Offset, s.Size, prev.Name, prev.Offset, prev.Size)
		}
	}
	return im, nil
}

// kind names the optional header format.
func (im *Image) kind() string {
	if im.Magic == magicPE32 {
		return "PE32"
	}
	return "PE32+"
}

// checkCertTable walks the WIN_CERTIFICATE entries of a certificate table.
func checkCertTable(table []byte, off int64) error {
	for pos := 0; pos < len(table); {
		if len(table)-pos < winCertHeaderSize {
			return &FormatError{Off: off + int64(pos), Field: "WIN_CERTIFICATE", Msg: fmt.Sprintf("%d bytes left, less than its %d-byte header", len(table)-pos, winCertHeaderSize)}
		}
		n := int(binary.LittleEndian.Uint32(table[pos:]))
		if n < winCertHeaderSize || n > len(table)-pos {
			return &FormatError{Off: off + int64(pos), Field: "WIN_CERTIFICATE dwLength", Msg: fmt.Sprintf("%d is outside 8..%d", n, len(table)-pos)}
		}
		pos += align8(n)
	}
	return nil
}

// sectionName is a section header's 8-byte name, NUL-padded.
func sectionName(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func align8(n int) int { return (n + 7) &^ 7 }
