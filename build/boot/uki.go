package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// UKI is a unified kernel image: a UEFI stub (systemd's linuxx64.efi.stub)
// with the kernel, its initrd, its command line and an os-release added as
// PE sections, as the UAPI group's UKI specification lays out. The firmware
// runs the stub, which boots the kernel it carries.
type UKI struct {
	Stub    []byte // the stub, a PE32+ image
	Kernel  []byte // .linux: a bzImage
	Initrd  []byte // .initrd
	Cmdline string // .cmdline
	OSRel   string // .osrel
}

// ErrStub is returned for a stub kiln cannot add sections to.
var ErrStub = errors.New("boot: UEFI stub")

const (
	sectionHeaderSize = 40
	scnInitData       = 0x00000040 // IMAGE_SCN_CNT_INITIALIZED_DATA
	scnMemRead        = 0x40000000 // IMAGE_SCN_MEM_READ
)

func alignUp(n, a uint32) uint32 { return (n + a - 1) / a * a }

// Bytes assembles the image: the stub's headers and sections (without a
// symbol table or signature after them), then the new sections, each at
// the next file-aligned offset and the next page-aligned address after the
// stub's own; the header's section count and image size follow.
func (u *UKI) Bytes() ([]byte, error) {
	s := u.Stub
	le := binary.LittleEndian
	if len(s) < 0x40 || s[0] != 'M' || s[1] != 'Z' {
		return nil, fmt.Errorf("%w: not a PE image", ErrStub)
	}
	pe := le.Uint32(s[0x3c:])
	if uint64(pe)+24 > uint64(len(s)) || !bytes.Equal(s[pe:pe+4], []byte("PE\x00\x00")) {
		return nil, fmt.Errorf("%w: no PE header", ErrStub)
	}
	coff := pe + 4
	nsec := uint32(le.Uint16(s[coff+2:]))
	optSize := uint32(le.Uint16(s[coff+16:]))
	opt := coff + 20
	if uint64(opt)+uint64(optSize) > uint64(len(s)) || optSize < 64 || le.Uint16(s[opt:]) != 0x20b {
		return nil, fmt.Errorf("%w: not PE32+", ErrStub)
	}
	secAlign, fileAlign := le.Uint32(s[opt+32:]), le.Uint32(s[opt+36:])
	sizeOfHeaders := le.Uint32(s[opt+60:])
	if secAlign == 0 || fileAlign == 0 || secAlign&(secAlign-1) != 0 || fileAlign&(fileAlign-1) != 0 {
		return nil, fmt.Errorf("%w: alignments %#x/%#x", ErrStub, secAlign, fileAlign)
	}
	table := opt + optSize
	type section struct {
		name string
		data []byte
	}
	add := []section{{".osrel", []byte(u.OSRel)}, {".cmdline", []byte(u.Cmdline)}, {".linux", u.Kernel}, {".initrd", u.Initrd}}
	if end := table + (nsec+uint32(len(add)))*sectionHeaderSize; end > sizeOfHeaders || uint64(end) > uint64(len(s)) {
		return nil, fmt.Errorf("%w: no room in the headers for %d more sections", ErrStub, len(add))
	}
	// The end of the stub's sections, in the file and in memory.
	var vEnd, rawEnd uint32
	for i := uint32(0); i < nsec; i++ {
		h := s[table+i*sectionHeaderSize:]
		vEnd = max(vEnd, le.Uint32(h[12:])+max(le.Uint32(h[8:]), le.Uint32(h[16:])))
		if ptr, size := le.Uint32(h[20:]), le.Uint32(h[16:]); size > 0 {
			if uint64(ptr)+uint64(size) > uint64(len(s)) {
				return nil, fmt.Errorf("%w: section %d runs past the end of the file", ErrStub, i)
			}
			rawEnd = max(rawEnd, ptr+size)
		}
	}
	// The stub up to its last section's data: what follows (a COFF symbol
	// table, a signature) is left out. The new sections come after it, so
	// it would lie between sections, where an Authenticode hash does not
	// reach.
	if uint64(sizeOfHeaders) > uint64(len(s)) {
		return nil, fmt.Errorf("%w: SizeOfHeaders %d past the end of the file", ErrStub, sizeOfHeaders)
	}
	s = append([]byte(nil), s[:max(rawEnd, sizeOfHeaders)]...)
	le.PutUint32(s[coff+8:], 0)  // PointerToSymbolTable
	le.PutUint32(s[coff+12:], 0) // NumberOfSymbols
	if dirs := le.Uint32(s[opt+108:]); dirs > 4 && uint64(opt)+112+5*8 <= uint64(table) {
		clear(s[opt+112+4*8 : opt+112+5*8]) // the certificate table's data directory
	}
	out := s
	const page = 0x1000
	va := alignUp(vEnd, max(secAlign, page))
	for i, sec := range add {
		if len(sec.data) == 0 {
			return nil, fmt.Errorf("boot: UKI: empty %s", sec.name)
		}
		raw := alignUp(uint32(len(out)), fileAlign)
		out = append(out, make([]byte, int(raw)-len(out))...)
		out = append(out, sec.data...)
		rawSize := alignUp(uint32(len(sec.data)), fileAlign)
		out = append(out, make([]byte, int(rawSize)-len(sec.data))...)
		h := out[table+(nsec+uint32(i))*sectionHeaderSize:][:sectionHeaderSize]
		clear(h)
		copy(h[0:8], sec.name)
		le.PutUint32(h[8:], uint32(len(sec.data))) // VirtualSize
		le.PutUint32(h[12:], va)                   // VirtualAddress
		le.PutUint32(h[16:], rawSize)              // SizeOfRawData
		le.PutUint32(h[20:], raw)                  // PointerToRawData
		le.PutUint32(h[36:], scnInitData|scnMemRead)
		va = alignUp(va+uint32(len(sec.data)), max(secAlign, page))
		if uint64(len(out)) > 1<<32-1 {
			return nil, fmt.Errorf("boot: UKI larger than 4 GiB")
		}
	}
	le.PutUint16(out[coff+2:], uint16(nsec+uint32(len(add))))
	le.PutUint32(out[opt+56:], va) // SizeOfImage
	le.PutUint32(out[opt+64:], 0)  // CheckSum: not checked outside Secure Boot
	return out, nil
}
