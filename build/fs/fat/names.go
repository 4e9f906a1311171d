package fat

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// NT case flags in a short entry's DIR_NTRes byte: the base name or the
// extension is displayed in lower case. Windows NT, Linux's vfat, mtools
// and UEFI firmware honour them.
const (
	lowerBase = 0x08
	lowerExt  = 0x10
)

// maxLongName is the longest long file name in UTF-16 code units.
const maxLongName = 255

// lfnChars is how many UTF-16 code units one long-name entry holds.
const lfnChars = 13

// entryName is how one tree name is stored in a directory: an 8.3 short
// name (padded with spaces, upper case), its case flags, and the long
// name entries' UTF-16 text when the short name alone cannot say it.
type entryName struct {
	short [11]byte
	lcase byte
	long  []uint16 // nil: no long-name entries
}

// slots is how many 32-byte directory entries the name takes.
func (n entryName) slots() int {
	return 1 + (len(n.long)+lfnChars-1)/lfnChars
}

// validShortChar reports whether c may appear in a short name as it is
// (upper case letters, digits and fatgen103's allowed punctuation).
func validShortChar(c byte) bool {
	switch {
	case c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("$%'-_@~`!(){}^#&", c) >= 0
}

func upperASCII(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// checkLongName rejects names that FAT cannot store or that a FAT driver
// would not give back unchanged: empty, "." and "..", control characters,
// the characters \ / : * ? " < > |, invalid UTF-8, a trailing dot or
// space (Windows and Linux strip them) and more than 255 UTF-16 units.
func checkLongName(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %q is not UTF-8", ErrInvalidName, name)
	}
	for _, r := range name {
		if r < 0x20 || strings.ContainsRune(`\/:*?"<>|`, r) {
			return fmt.Errorf("%w: %q has the character %q", ErrInvalidName, name, r)
		}
	}
	if last := name[len(name)-1]; last == '.' || last == ' ' {
		return fmt.Errorf("%w: %q ends in %q", ErrInvalidName, name, last)
	}
	if n := len(utf16.Encode([]rune(name))); n > maxLongName {
		return fmt.Errorf("%w: %q is %d UTF-16 units, the most is %d", ErrInvalidName, name, n, maxLongName)
	}
	return nil
}

// exact83 reports whether name is itself an 8.3 name (one to eight
// characters, optionally a dot and one to three more, all of them valid
// short-name characters once upper-cased). It returns the short name, the
// NT case flags, and whether those flags can express the name's case:
// each part must be all lower or all upper case ("readme.TXT" can,
// "ReadMe.txt" cannot and needs a long name).
func exact83(name string) (short [11]byte, lcase byte, caseOK, ok bool) {
	base, ext := name, ""
	if i := strings.IndexByte(name, '.'); i >= 0 {
		base, ext = name[:i], name[i+1:]
		if ext == "" || strings.IndexByte(ext, '.') >= 0 {
			return short, 0, false, false
		}
	}
	if base == "" || len(base) > 8 || len(ext) > 3 {
		return short, 0, false, false
	}
	for i := range short {
		short[i] = ' '
	}
	caseOK = true
	part := func(s string, dst []byte, flag byte) bool {
		var lower, upper bool
		for i := 0; i < len(s); i++ {
			c := s[i]
			switch {
			case c >= 'a' && c <= 'z':
				lower = true
			case c >= 'A' && c <= 'Z':
				upper = true
			}
			u := upperASCII(c)
			if !validShortChar(u) {
				return false
			}
			dst[i] = u
		}
		if lower && upper {
			caseOK = false
		} else if lower {
			lcase |= flag
		}
		return true
	}
	if !part(base, short[:8], lowerBase) || !part(ext, short[8:], lowerExt) {
		return short, 0, false, false
	}
	if !caseOK {
		lcase = 0
	}
	return short, lcase, caseOK, true
}

// basis makes fatgen103's basis name for a long name: upper case, spaces
// and leading dots dropped, characters a short name cannot hold turned into
// '_', the primary part (up to the first dot of what precedes the last
// dot) cut to 8 characters and the extension (after the last dot) to 3.
func basis(name string) (base, ext []byte) {
	s := strings.TrimLeft(strings.ReplaceAll(name, " ", ""), ".")
	prim := s
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		prim, s = s[:i], s[i+1:]
		if j := strings.IndexByte(prim, '.'); j >= 0 {
			prim = prim[:j]
		}
	} else {
		s = ""
	}
	conv := func(part string, max int) []byte {
		var out []byte
		for _, r := range part {
			if len(out) == max {
				break
			}
			c := byte('_')
			if r < utf8.RuneSelf {
				if u := upperASCII(byte(r)); validShortChar(u) {
					c = u
				}
			}
			out = append(out, c)
		}
		return out
	}
	base, ext = conv(prim, 8), conv(s, 3)
	if len(base) == 0 {
		base = []byte{'_'}
	}
	return base, ext
}

// dirNames chooses the stored form of every name of one directory, in
// order. Names that are 8.3 names keep that short name (with case flags
// when they are not upper case); others get a long name and a short name
// made from their basis with the first free "~N" tail. Short names that
// names already own are reserved before any tail is chosen, so the result
// depends only on the set of names.
func dirNames(names []string) ([]entryName, error) {
	out := make([]entryName, len(names))
	used := make(map[[11]byte]bool, len(names))
	folded := make(map[string]string, len(names))
	var generate []int
	for i, name := range names {
		if err := checkLongName(name); err != nil {
			return nil, err
		}
		key := strings.ToUpper(name)
		if prev, dup := folded[key]; dup {
			return nil, fmt.Errorf("%w: %q and %q", ErrDuplicateName, prev, name)
		}
		folded[key] = name
		short, lcase, caseOK, ok := exact83(name)
		if !ok || used[short] {
			generate = append(generate, i)
			continue
		}
		used[short] = true
		out[i].short, out[i].lcase = short, lcase
		if !caseOK {
			out[i].long = utf16.Encode([]rune(name))
		}
	}
	next := map[string]int{}
	for _, i := range generate {
		base, ext := basis(names[i])
		key := string(base) + "." + string(ext)
		n := next[key]
		for {
			n++
			tail := "~" + strconv.Itoa(n)
			if len(tail) > 8 {
				return nil, fmt.Errorf("%w: no free short name for %q", ErrDirFull, names[i])
			}
			var short [11]byte
			for j := range short {
				short[j] = ' '
			}
			b := base
			if len(b) > 8-len(tail) {
				b = b[:8-len(tail)]
			}
			copy(short[:], b)
			copy(short[len(b):], tail)
			copy(short[8:], ext)
			if !used[short] {
				used[short] = true
				out[i].short = short
				out[i].long = utf16.Encode([]rune(names[i]))
				break
			}
		}
		next[key] = n
	}
	return out, nil
}

// checksum is the short-name checksum stored in every long-name entry.
func checksum(short [11]byte) byte {
	var sum byte
	for _, c := range short {
		sum = (sum&1)<<7 + sum>>1 + c
	}
	return sum
}

// putLongEntries writes the long-name entries of n into dst (32 bytes
// each), last part first as fatgen103 orders them.
func putLongEntries(dst []byte, n entryName) {
	count := (len(n.long) + lfnChars - 1) / lfnChars
	sum := checksum(n.short)
	for k := 0; k < count; k++ {
		seq := count - k // physical entry k holds part seq
		e := dst[k*dirEntrySize : (k+1)*dirEntrySize]
		ord := byte(seq)
		if k == 0 {
			ord |= 0x40
		}
		e[0] = ord
		e[11] = attrLongName
		e[12] = 0
		e[13] = sum
		e[26], e[27] = 0, 0
		var units [lfnChars]uint16
		start := (seq - 1) * lfnChars
		for j := range units {
			switch p := start + j; {
			case p < len(n.long):
				units[j] = n.long[p]
			case p == len(n.long):
				units[j] = 0
			default:
				units[j] = 0xFFFF
			}
		}
		offs := [lfnChars]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}
		for j, off := range offs {
			e[off] = byte(units[j])
			e[off+1] = byte(units[j] >> 8)
		}
	}
}
