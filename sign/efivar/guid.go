package efivar

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is an EFI_GUID in its in-memory byte order: the first three fields
// little-endian, the last eight bytes as written.
type GUID [16]byte

// GUIDs of the UEFI specification.
var (
	// GlobalVariable is EFI_GLOBAL_VARIABLE, the vendor GUID of PK and KEK.
	GlobalVariable = MustParseGUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
	// ImageSecurityDatabase is EFI_IMAGE_SECURITY_DATABASE_GUID, the
	// vendor GUID of db and dbx.
	ImageSecurityDatabase = MustParseGUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
	// CertX509 is EFI_CERT_X509_GUID, the signature type of a DER X.509
	// certificate in a signature list.
	CertX509 = MustParseGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
	// CertTypePKCS7 is EFI_CERT_TYPE_PKCS7_GUID, the certificate type of
	// an authenticated variable's PKCS #7 signature.
	CertTypePKCS7 = MustParseGUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
)

// ParseGUID parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (either case,
// optionally in braces).
func ParseGUID(s string) (GUID, error) {
	t := strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	var g GUID
	if len(t) != 36 || t[8] != '-' || t[13] != '-' || t[18] != '-' || t[23] != '-' {
		return g, fmt.Errorf("efivar: GUID %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	b, err := hex.DecodeString(t[0:8] + t[9:13] + t[14:18] + t[19:23] + t[24:36])
	if err != nil {
		return g, fmt.Errorf("efivar: GUID %q: not hexadecimal", s)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(b[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(b[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(b[6:]))
	copy(g[8:], b[8:])
	return g, nil
}

// MustParseGUID is ParseGUID for constants; it panics on a malformed one.
func MustParseGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String formats g as "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lowercase.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:]), binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

// DerivedGUID is a GUID derived from data: the first 16 bytes of its
// SHA-256, marked as an RFC 9562 version 8 (custom) UUID. It names an
// owner reproducibly, e.g. from the PK certificate.
func DerivedGUID(data []byte) GUID {
	sum := sha256.Sum256(data)
	var b [16]byte
	copy(b[:], sum[:16])
	b[6] = b[6]&0x0f | 0x80 // version 8
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	g := MustParseGUID(fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]))
	return g
}
