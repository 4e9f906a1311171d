package fat

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
)

func shortString(s [11]byte) string {
	base, ext := strings.TrimRight(string(s[:8]), " "), strings.TrimRight(string(s[8:]), " ")
	if ext == "" {
		return base
	}
	return base + "." + ext
}

func TestDirNames(t *testing.T) {
	names := []string{
		"FOOBAR~1.TXT", "Long Name One.txt", "Long Name Two.txt", "README.TXT", "ReadMe.md",
		"a.b.c", "foo bar.txt", "lower.txt", "mixed.TXT", "résumé.pdf", "x.jpeg", ".profile",
	}
	want := []struct {
		short string
		lcase byte
		long  bool
	}{
		{"FOOBAR~1.TXT", 0, false},
		{"LONGNA~1.TXT", 0, true},
		{"LONGNA~2.TXT", 0, true},
		{"README.TXT", 0, false},
		{"README.MD", 0, true}, // fits 8.3 but its case needs the long name
		{"A~1.C", 0, true},
		{"FOOBAR~2.TXT", 0, true}, // ~1 is another name's own short name
		{"LOWER.TXT", lowerBase | lowerExt, false},
		{"MIXED.TXT", lowerBase, false},
		{"R_SUM_~1.PDF", 0, true},
		{"X~1.JPE", 0, true},
		{"PROFIL~1", 0, true},
	}
	got, err := dirNames(names)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		g := got[i]
		if shortString(g.short) != w.short || g.lcase != w.lcase || (g.long != nil) != w.long {
			t.Errorf("%q: short %q lcase %#x long %v, want %q %#x %v", names[i], shortString(g.short), g.lcase, g.long != nil, w.short, w.lcase, w.long)
		}
		if g.long != nil && string(utf16.Decode(g.long)) != names[i] {
			t.Errorf("%q: long name %q", names[i], string(utf16.Decode(g.long)))
		}
	}
}

func TestDirNamesManyTails(t *testing.T) {
	var names []string
	for i := range 1200 {
		names = append(names, "entry-with-a-longer-name-"+strings.Repeat("x", i%3)+string(rune('a'+i%26))+strings.Repeat("y", i/26))
	}
	got, err := dirNames(names)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[11]byte]bool{}
	for i, g := range got {
		if seen[g.short] {
			t.Fatalf("%q: short name %q given twice", names[i], shortString(g.short))
		}
		seen[g.short] = true
	}
	if s := shortString(got[0].short); s != "ENTRY-~1" {
		t.Errorf("first tail %q", s)
	}
	if s := shortString(got[998].short); s != "ENTR~999" {
		t.Errorf("999th tail %q", s)
	}
	if s := shortString(got[1199].short); s != "ENT~1200" {
		t.Errorf("1200th tail %q", s)
	}
}

func TestDirNamesErrors(t *testing.T) {
	for _, tt := range []struct {
		names []string
		err   error
	}{
		{[]string{"a.txt", "A.TXT"}, ErrDuplicateName},
		{[]string{"Résumé", "RÉSUMÉ"}, ErrDuplicateName},
		{[]string{"a*b"}, ErrInvalidName},
		{[]string{"a\x01b"}, ErrInvalidName},
		{[]string{"a "}, ErrInvalidName},
		{[]string{"a."}, ErrInvalidName},
		{[]string{"."}, ErrInvalidName},
		{[]string{"\xff"}, ErrInvalidName},
		{[]string{strings.Repeat("é", 256)}, ErrInvalidName},
	} {
		if _, err := dirNames(tt.names); !errors.Is(err, tt.err) {
			t.Errorf("%q: %v, want %v", tt.names, err, tt.err)
		}
	}
	if _, err := dirNames([]string{strings.Repeat("é", 255), strings.Repeat("n", 255)}); err != nil {
		t.Errorf("255-unit names: %v", err)
	}
}

func TestChecksum(t *testing.T) {
	// The checksum of "LONGNA~1TXT", computed by hand with fatgen103's
	// rotate-right-and-add.
	var s [11]byte
	copy(s[:], "LONGNA~1TXT")
	var sum byte
	for _, c := range s {
		sum = (sum>>1 | sum<<7) + c
	}
	if got := checksum(s); got != sum {
		t.Errorf("checksum %#x, want %#x", got, sum)
	}
	copy(s[:], "A          ")
	// 'A' (0x41), then ten spaces each rotated in: 0xC0 0x80 0x60 0x50
	// 0x48 0x44 0x42 0x41 0xC0 0x80.
	if got := checksum(s); got != 0x80 {
		t.Errorf("checksum of %q: %#x, want 0x80", s, got)
	}
}

// TestLongEntries checks the long-name entries of a name that needs two of
// them and holds a surrogate pair: order bytes, attribute, checksum, the
// terminating 0x0000 and the 0xFFFF padding.
func TestLongEntries(t *testing.T) {
	name := "emoji 😀 file.txt" // 17 UTF-16 units: 2 entries
	n := entryName{long: utf16.Encode([]rune(name))}
	copy(n.short[:], "EMOJI_~1TXT")
	if n.slots() != 3 {
		t.Fatalf("slots %d, want 3", n.slots())
	}
	buf := make([]byte, 2*dirEntrySize)
	putLongEntries(buf, n)
	units := func(e []byte) []uint16 {
		var u []uint16
		for _, off := range []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
			u = append(u, uint16(e[off])|uint16(e[off+1])<<8)
		}
		return u
	}
	first, second := buf[:32], buf[32:]
	if first[0] != 0x42 || second[0] != 0x01 {
		t.Errorf("order bytes %#x %#x, want 0x42 0x01", first[0], second[0])
	}
	for _, e := range [][]byte{first, second} {
		if e[11] != attrLongName || e[12] != 0 || e[13] != checksum(n.short) || e[26] != 0 || e[27] != 0 {
			t.Errorf("entry % x", e)
		}
	}
	all := append(units(second), units(first)...)
	if string(utf16.Decode(all[:17])) != name {
		t.Errorf("name %q", string(utf16.Decode(all[:17])))
	}
	if all[6] != 0xD83D || all[7] != 0xDE00 {
		t.Errorf("surrogate pair %#x %#x", all[6], all[7])
	}
	if all[17] != 0 {
		t.Errorf("no terminator: %#x", all[17])
	}
	for _, u := range all[18:] {
		if u != 0xFFFF {
			t.Errorf("padding %#x", u)
		}
	}
	// A name of exactly 13 units has no terminator.
	n = entryName{long: utf16.Encode([]rune("abcdefghijklm"))}
	buf = make([]byte, dirEntrySize)
	putLongEntries(buf, n)
	if u := units(buf); buf[0] != 0x41 || string(utf16.Decode(u)) != "abcdefghijklm" {
		t.Errorf("13-unit name: %#x %q", buf[0], string(utf16.Decode(u)))
	}
}

func TestDosTime(t *testing.T) {
	for _, tt := range []struct {
		in         string
		date, time uint16
		tenth      byte
	}{
		{"2024-02-29T13:37:43.25Z", 44<<9 | 2<<5 | 29, 13<<11 | 37<<5 | 21, 125},
		{"1970-01-01T00:00:00Z", 0<<9 | 1<<5 | 1, 0, 0},
		{"2200-01-01T00:00:00Z", 127<<9 | 12<<5 | 31, 23<<11 | 59<<5 | 29, 0},
		{"2024-01-01T01:00:00+01:00", 44<<9 | 1<<5 | 1, 0, 0}, // stored as UTC
	} {
		tm, err := timeParse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		d, h, tenth := dosTime(tm)
		if d != tt.date || h != tt.time || tenth != tt.tenth {
			t.Errorf("%s: %#x %#x %d, want %#x %#x %d", tt.in, d, h, tenth, tt.date, tt.time, tt.tenth)
		}
	}
}

func TestVolumeLabel(t *testing.T) {
	for in, want := range map[string]string{"": "EFI-SYSTEM ", "efi": "EFI        ", "ABCDEFGHIJK": "ABCDEFGHIJK", "MY DISK": "MY DISK    "} {
		got, err := volumeLabel(in)
		if err != nil || string(got[:]) != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"ABCDEFGHIJKL", "A.B", " A", "   ", "é"} {
		if _, err := volumeLabel(in); !errors.Is(err, ErrInvalidLabel) {
			t.Errorf("%q: %v, want %v", in, err, ErrInvalidLabel)
		}
	}
}

func timeParse(s string) (time.Time, error) { return time.Parse(time.RFC3339Nano, s) }
