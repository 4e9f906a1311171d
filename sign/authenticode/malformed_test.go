package authenticode

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// TestMalformed: each damage to an image is refused with a FormatError
// naming the field.
func TestMalformed(t *testing.T) {
	a, _ := keys(t)
	good := makePE(defaultSpec)
	im, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := Sign(good, a.signer, a.cert, Options{})
	if err != nil {
		t.Fatal(err)
	}
	secTable := int(tOpt + 112 + 16*8)
	put32 := func(b []byte, off int, v uint32) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
	put16 := func(b []byte, off int, v uint16) []byte { binary.LittleEndian.PutUint16(b[off:], v); return b }
	cases := []struct {
		name  string
		edit  func(b []byte) []byte
		field string
	}{
		{"empty", func(b []byte) []byte { return nil }, "DOS header"},
		{"truncated DOS header", func(b []byte) []byte { return b[:40] }, "DOS header"},
		{"not MZ", func(b []byte) []byte { b[0] = 'Z'; return b }, "e_magic"},
		{"e_lfanew past the end", func(b []byte) []byte { return put32(b, 0x3c, 0xfffffff0) }, "e_lfanew"},
		{"e_lfanew near the end", func(b []byte) []byte { return put32(b, 0x3c, uint32(len(b)-10)) }, "e_lfanew"},
		{"no PE signature", func(b []byte) []byte { b[tLfanew+1] = 'X'; return b }, "PE signature"},
		{"truncated in the PE header", func(b []byte) []byte { return b[:tOpt+50] }, "SizeOfOptionalHeader"},
		{"SizeOfOptionalHeader past the end", func(b []byte) []byte { return put16(b[:0x200], tCOFF+16, 0xffff) }, "SizeOfOptionalHeader"},
		{"SizeOfOptionalHeader too short", func(b []byte) []byte { return put16(b, tCOFF+16, 100) }, "SizeOfOptionalHeader"},
		{"bad optional header magic", func(b []byte) []byte { return put16(b, tOpt, 0x107) }, "optional header magic"},
		{"no certificate table entry", func(b []byte) []byte { return put32(b, tOpt+108, 4) }, "NumberOfRvaAndSizes"},
		{"too many data directories", func(b []byte) []byte { return put32(b, tOpt+108, 17) }, "NumberOfRvaAndSizes"},
		{"section table past the end", func(b []byte) []byte { return put16(b, tCOFF+2, 0xffff) }, "NumberOfSections"},
		{"SizeOfHeaders past the end", func(b []byte) []byte { return put32(b, tOpt+60, uint32(len(b)+1)) }, "SizeOfHeaders"},
		{"SizeOfHeaders inside the section table", func(b []byte) []byte { return put32(b, tOpt+60, uint32(secTable+8)) }, "SizeOfHeaders"},
		{"section past the end", func(b []byte) []byte { return put32(b, secTable+40+20, uint32(len(b)-0x100)) }, "section 1 (.s1) SizeOfRawData"},
		{"section offset past 4 GiB", func(b []byte) []byte { return put32(b, secTable+20, 0xffffff00) }, "section 0 (.s0) PointerToRawData"},
		{"section size huge", func(b []byte) []byte { return put32(b, secTable+16, 0xfffffe00) }, "section 0 (.s0) SizeOfRawData"},
		{"section inside the headers", func(b []byte) []byte { return put32(b, secTable+40+20, 0x10) }, "section 1 (.s1) PointerToRawData"},
		{"overlapping sections", func(b []byte) []byte { return put32(b, secTable+40+20, uint32(im.Sections[0].Offset+0x200)) }, "overlaps section .s0"},
		{"truncated in a section", func(b []byte) []byte { return b[:im.Sections[2].Offset+5] }, "section 2 (.s2) SizeOfRawData"},
		{"certificate table not at the end", func(b []byte) []byte { return append(signed[:len(signed):len(signed)], 0) }, "certificate table"},
		{"certificate table in the headers", func(b []byte) []byte {
			c := append([]byte(nil), signed...)
			return put32(c, int(im.CertDirOffset), 0x10)
		}, "certificate table"},
		{"truncated certificate table", func(b []byte) []byte {
			c := append([]byte(nil), signed[:len(signed)-16]...)
			return put32(c, int(im.CertDirOffset)+4, uint32(len(c))-binary.LittleEndian.Uint32(c[im.CertDirOffset:]))
		}, "WIN_CERTIFICATE dwLength"},
		{"WIN_CERTIFICATE length 0", func(b []byte) []byte {
			c := append([]byte(nil), signed...)
			return put32(c, int(binary.LittleEndian.Uint32(c[im.CertDirOffset:])), 0)
		}, "WIN_CERTIFICATE dwLength"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.edit(append([]byte(nil), good...))
			for op, f := range map[string]func() error{
				"Parse":  func() error { _, err := Parse(b); return err },
				"Sign":   func() error { _, err := Sign(b, a.signer, a.cert, Options{Replace: true}); return err },
				"Digest": func() error { _, err := Digest(b); return err },
			} {
				err := f()
				var fe *FormatError
				if !errors.As(err, &fe) || !strings.Contains(err.Error(), c.field) {
					t.Errorf("%s: %v, want a FormatError naming %q", op, err, c.field)
				}
			}
		})
	}
}

// TestTruncated: every prefix of an image parses or is refused, never
// panics; a prefix that cuts a section is refused.
func TestTruncated(t *testing.T) {
	a, _ := keys(t)
	good := makePE(peSpec{sections: []int{0x200, 0x200}, trailing: 5})
	signed, err := Sign(good, a.signer, a.cert, Options{})
	if err != nil {
		t.Fatal(err)
	}
	im, _ := Parse(good)
	for _, whole := range [][]byte{good, signed} {
		for n := 0; n < len(whole); n++ {
			_, err := Parse(whole[:n])
			if int64(n) < im.Sections[1].End() && err == nil {
				t.Fatalf("a prefix of %d bytes (the last section ends at 0x%x) parsed", n, im.Sections[1].End())
			}
		}
	}
}

// FuzzParse: Parse never panics, and an image it accepts can be signed and
// the signature verifies.
func FuzzParse(f *testing.F) {
	a, _ := keys(f)
	for _, spec := range []peSpec{defaultSpec, {pe32: true, sections: []int{0x200}, trailing: 3}, {dirs: 5}} {
		pe := makePE(spec)
		f.Add(pe)
		signed, err := Sign(pe, a.signer, a.cert, Options{})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(signed)
	}
	f.Fuzz(func(t *testing.T, pe []byte) {
		if _, err := Parse(pe); err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse error %v is not a FormatError", err)
			}
			return
		}
		signed, err := Sign(pe, a.signer, a.cert, Options{Replace: true})
		if err != nil {
			if len(pe) > 1<<31 {
				return
			}
			t.Fatalf("Sign of an image Parse accepts: %v", err)
		}
		if _, err := Verify(signed); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	})
}
