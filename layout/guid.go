package layout

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is a GUID in its textual byte order (the order in which
// "7130c94a-213a-..." is written). GPT stores the first three fields
// little-endian; the conversion happens only when the table is encoded.
type GUID [16]byte

// ParseGUID parses the 8-4-4-4-12 hexadecimal form, in either case.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("malformed GUID %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return g, fmt.Errorf("malformed GUID %q: not hexadecimal", s)
	}
	copy(g[:], b)
	return g, nil
}

// MustGUID parses a GUID known to be valid; it panics otherwise. It is for
// the constants of this package.
func MustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String returns the upper-case 8-4-4-4-12 form, as sgdisk and cgpt print.
func (g GUID) String() string {
	h := strings.ToUpper(hex.EncodeToString(g[:]))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// IsZero reports whether every byte is zero (an unused GPT entry's type).
func (g GUID) IsZero() bool { return g == GUID{} }

// MarshalText encodes the GUID as text (for JSON output).
func (g GUID) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

// UnmarshalText parses the GUID from text.
func (g *GUID) UnmarshalText(b []byte) error {
	v, err := ParseGUID(string(b))
	if err != nil {
		return err
	}
	*g = v
	return nil
}

// DeriveGUID returns a GUID that is a pure function of seed and the names:
// the SHA-256 of them, marked as an RFC 9562 version 8 (custom) UUID. The
// same seed gives the same disk and partition GUIDs, so the same inputs
// give the same bytes.
func DeriveGUID(seed string, names ...string) GUID {
	h := sha256.New()
	fmt.Fprintf(h, "kiln-guid\x00%d:%s", len(seed), seed)
	for _, n := range names {
		fmt.Fprintf(h, "\x00%d:%s", len(n), n)
	}
	var g GUID
	copy(g[:], h.Sum(nil))
	g[6] = g[6]&0x0f | 0x80 // version 8
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g
}

// mixedEndian converts between the textual byte order and GPT's on-disk
// order (first three fields little-endian). The conversion is its own
// inverse.
func (g GUID) mixedEndian() [16]byte {
	var b [16]byte
	b[0], b[1], b[2], b[3] = g[3], g[2], g[1], g[0]
	b[4], b[5] = g[5], g[4]
	b[6], b[7] = g[7], g[6]
	copy(b[8:], g[8:])
	return b
}
