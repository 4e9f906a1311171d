// Package efivar makes the files that enroll UEFI Secure Boot keys: EFI
// signature lists (.esl, as efitools' cert-to-efi-sig-list makes them) and
// signed time-based authenticated variable updates (.auth, as efitools'
// sign-efi-sig-list makes them), for PK, KEK and db.
//
// An .auth file is what SetVariable takes for a variable with the
// TIME_BASED_AUTHENTICATED_WRITE_ACCESS attribute: an
// EFI_VARIABLE_AUTHENTICATION_2 (an EFI_TIME, then a
// WIN_CERTIFICATE_UEFI_GUID of type EFI_CERT_TYPE_PKCS7_GUID whose CertData
// is a DER PKCS #7 SignedData, detached, over the variable's name in
// UTF-16 without its NUL, its vendor GUID, its attributes, the EFI_TIME and
// the new value) followed by the new value. PK is signed by PK, KEK by PK,
// db by KEK. Enrolling PK ends setup mode: after it, firmware checks KEK
// and db updates against PK and KEK.
package efivar

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/kiln-os/kiln/sign/internal/pkcs7"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// ErrFormat: bytes that are not a well-formed signature list or
// authenticated variable.
var ErrFormat = errors.New("efivar: malformed data")

// ErrDuplicate: an enrollment lists one certificate twice in a variable.
var ErrDuplicate = errors.New("efivar: duplicate certificate")

// Attributes are a variable's EFI_VARIABLE_* attribute bits.
type Attributes uint32

// Attribute bits.
const (
	NonVolatile                       Attributes = 0x01
	BootServiceAccess                 Attributes = 0x02
	RuntimeAccess                     Attributes = 0x04
	TimeBasedAuthenticatedWriteAccess Attributes = 0x20
	AppendWrite                       Attributes = 0x40

	// SecureBootAttributes are those of PK, KEK, db and dbx: NV, BS, RT
	// and time-based authenticated writes.
	SecureBootAttributes = NonVolatile | BootServiceAccess | RuntimeAccess | TimeBasedAuthenticatedWriteAccess
)

var attributeNames = []struct {
	bit  Attributes
	name string
}{
	{NonVolatile, "NV"}, {BootServiceAccess, "BS"}, {RuntimeAccess, "RT"},
	{TimeBasedAuthenticatedWriteAccess, "TIME_BASED_AUTHENTICATED_WRITE_ACCESS"}, {AppendWrite, "APPEND_WRITE"},
}

func (a Attributes) String() string {
	var names []string
	rest := a
	for _, n := range attributeNames {
		if a&n.bit != 0 {
			names = append(names, n.name)
			rest &^= n.bit
		}
	}
	if rest != 0 || len(names) == 0 {
		names = append(names, fmt.Sprintf("0x%x", uint32(rest)))
	}
	return strings.Join(names, "|")
}

// Variable names a UEFI variable: its name and vendor GUID, and the
// attributes it is written with.
type Variable struct {
	Name       string
	Vendor     GUID
	Attributes Attributes
}

// The Secure Boot key variables.
var (
	PK  = Variable{"PK", GlobalVariable, SecureBootAttributes}
	KEK = Variable{"KEK", GlobalVariable, SecureBootAttributes}
	DB  = Variable{"db", ImageSecurityDatabase, SecureBootAttributes}
	DBX = Variable{"dbx", ImageSecurityDatabase, SecureBootAttributes}
)

// EFI_SIGNATURE_LIST and EFI_VARIABLE_AUTHENTICATION_2 sizes.
const (
	signatureListHeaderSize = 16 + 4 + 4 + 4 // SignatureType, ListSize, HeaderSize, SignatureSize
	signatureOwnerSize      = 16
	efiTimeSize             = 16
	winCertUEFIGUIDSize     = 4 + 2 + 2 + 16 // dwLength, wRevision, wCertificateType, CertType
	winCertRevision         = 0x0200
	winCertTypeEFIGUID      = 0x0ef1
)

// X509SignatureList returns an EFI_SIGNATURE_LIST of type
// EFI_CERT_X509_GUID holding one signature: owner, then the DER
// certificate cert.
func X509SignatureList(cert []byte, owner GUID) []byte {
	sigSize := signatureOwnerSize + len(cert)
	b := make([]byte, signatureListHeaderSize, signatureListHeaderSize+sigSize)
	copy(b, CertX509[:])
	binary.LittleEndian.PutUint32(b[16:], uint32(signatureListHeaderSize+sigSize))
	binary.LittleEndian.PutUint32(b[20:], 0) // SignatureHeaderSize
	binary.LittleEndian.PutUint32(b[24:], uint32(sigSize))
	b = append(b, owner[:]...)
	return append(b, cert...)
}

// Signature is one EFI_SIGNATURE_DATA of a signature list.
type Signature struct {
	Owner GUID
	Data  []byte // for EFI_CERT_X509_GUID, a DER certificate
}

// SignatureList is one parsed EFI_SIGNATURE_LIST.
type SignatureList struct {
	Type       GUID
	Header     []byte
	Signatures []Signature
}

// ParseSignatureLists parses a sequence of EFI_SIGNATURE_LISTs (the value
// of PK, KEK, db or dbx), checking every size against the data.
func ParseSignatureLists(b []byte) ([]SignatureList, error) {
	var lists []SignatureList
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < signatureListHeaderSize {
			return nil, fmt.Errorf("%w: signature list at byte %d: %d bytes, less than its %d-byte header", ErrFormat, off, len(rest), signatureListHeaderSize)
		}
		var l SignatureList
		copy(l.Type[:], rest)
		listSize := uint64(binary.LittleEndian.Uint32(rest[16:]))
		headerSize := uint64(binary.LittleEndian.Uint32(rest[20:]))
		sigSize := uint64(binary.LittleEndian.Uint32(rest[24:]))
		if listSize > uint64(len(rest)) || listSize < signatureListHeaderSize+headerSize {
			return nil, fmt.Errorf("%w: signature list at byte %d: SignatureListSize %d does not fit (%d bytes left, header %d)", ErrFormat, off, listSize, len(rest), headerSize)
		}
		if sigSize < signatureOwnerSize || (listSize-signatureListHeaderSize-headerSize)%sigSize != 0 {
			return nil, fmt.Errorf("%w: signature list at byte %d: SignatureSize %d does not divide the list's %d bytes of signatures", ErrFormat, off, sigSize, listSize-signatureListHeaderSize-headerSize)
		}
		l.Header = rest[signatureListHeaderSize : signatureListHeaderSize+headerSize]
		for p := signatureListHeaderSize + headerSize; p < listSize; p += sigSize {
			var s Signature
			copy(s.Owner[:], rest[p:])
			s.Data = rest[p+signatureOwnerSize : p+sigSize]
			l.Signatures = append(l.Signatures, s)
		}
		lists = append(lists, l)
		off += int(listSize)
	}
	return lists, nil
}

// EFITime encodes t as an EFI_TIME for a time-based authenticated write:
// UTC, to the second, Nanosecond, TimeZone and Daylight zero, as the UEFI
// specification asks of EFI_VARIABLE_AUTHENTICATION_2's TimeStamp.
func EFITime(t time.Time) ([]byte, error) {
	t = t.UTC()
	if t.Year() < 1900 || t.Year() > 9999 {
		return nil, fmt.Errorf("efivar: time %s is outside EFI_TIME's years 1900-9999", t.Format(time.RFC3339))
	}
	b := make([]byte, efiTimeSize)
	binary.LittleEndian.PutUint16(b[0:], uint16(t.Year()))
	b[2], b[3] = byte(t.Month()), byte(t.Day())
	b[4], b[5], b[6] = byte(t.Hour()), byte(t.Minute()), byte(t.Second())
	return b, nil
}

// SignedPayload returns the bytes an authenticated write of data to v at
// time t signs: v's name (UTF-16LE, no NUL), vendor GUID and attributes,
// the EFI_TIME, then data. (sign-efi-sig-list -o writes the same.)
func SignedPayload(v Variable, t time.Time, data []byte) ([]byte, error) {
	ts, err := EFITime(t)
	if err != nil {
		return nil, err
	}
	var b []byte
	for _, u := range utf16.Encode([]rune(v.Name)) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	b = append(b, v.Vendor[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(v.Attributes))
	b = append(b, ts...)
	return append(b, data...), nil
}

// SignUpdate returns an authenticated variable update of v to data at
// time t, signed with key (RSA, its certificate carrying its public key):
// EFI_VARIABLE_AUTHENTICATION_2 then data, what SetVariable and
// efi-updatevar take.
func SignUpdate(v Variable, t time.Time, data []byte, key *secureboot.Key) ([]byte, error) {
	if v.Attributes&TimeBasedAuthenticatedWriteAccess == 0 {
		return nil, fmt.Errorf("efivar: %s: attributes %s lack TIME_BASED_AUTHENTICATED_WRITE_ACCESS", v.Name, v.Attributes)
	}
	payload, err := SignedPayload(v, t, data)
	if err != nil {
		return nil, err
	}
	p7, err := pkcs7.SignDetached(key, payload)
	if err != nil {
		return nil, fmt.Errorf("efivar: signing %s: %w", v.Name, err)
	}
	ts, _ := EFITime(t)
	out := append([]byte(nil), ts...)
	out = binary.LittleEndian.AppendUint32(out, uint32(winCertUEFIGUIDSize+len(p7)))
	out = binary.LittleEndian.AppendUint16(out, winCertRevision)
	out = binary.LittleEndian.AppendUint16(out, winCertTypeEFIGUID)
	out = append(out, CertTypePKCS7[:]...)
	out = append(out, p7...)
	return append(out, data...), nil
}

// Update is a parsed authenticated variable update.
type Update struct {
	Time      []byte // the EFI_TIME
	Signature []byte // the PKCS #7 SignedData (DER)
	Data      []byte // the new value
}

// ParseUpdate splits an authenticated variable update (as SignUpdate
// makes) into its timestamp, signature and value, checking its header.
func ParseUpdate(b []byte) (*Update, error) {
	if len(b) < efiTimeSize+winCertUEFIGUIDSize {
		return nil, fmt.Errorf("%w: %d bytes, less than an EFI_VARIABLE_AUTHENTICATION_2 header", ErrFormat, len(b))
	}
	n := uint64(binary.LittleEndian.Uint32(b[efiTimeSize:]))
	rev := binary.LittleEndian.Uint16(b[efiTimeSize+4:])
	typ := binary.LittleEndian.Uint16(b[efiTimeSize+6:])
	var certType GUID
	copy(certType[:], b[efiTimeSize+8:])
	switch {
	case n < winCertUEFIGUIDSize || n > uint64(len(b)-efiTimeSize):
		return nil, fmt.Errorf("%w: WIN_CERTIFICATE dwLength %d is outside %d..%d", ErrFormat, n, winCertUEFIGUIDSize, len(b)-efiTimeSize)
	case rev != winCertRevision || typ != winCertTypeEFIGUID:
		return nil, fmt.Errorf("%w: WIN_CERTIFICATE revision 0x%x type 0x%x, want 0x%x and 0x%x", ErrFormat, rev, typ, winCertRevision, winCertTypeEFIGUID)
	case certType != CertTypePKCS7:
		return nil, fmt.Errorf("%w: CertType %s is not EFI_CERT_TYPE_PKCS7_GUID", ErrFormat, certType)
	}
	end := efiTimeSize + int(n)
	return &Update{Time: b[:efiTimeSize], Signature: b[efiTimeSize+winCertUEFIGUIDSize : end], Data: b[end:]}, nil
}

// X509SignatureLists returns one EFI_SIGNATURE_LIST per certificate (as
// X509SignatureList makes it), concatenated in the order given: what
// efitools gives for `cat` of cert-to-efi-sig-list's output for each. (A
// signature list has one SignatureSize, so certificates of different sizes
// cannot share one.)
func X509SignatureLists(owner GUID, certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, X509SignatureList(c.Raw, owner)...)
	}
	return b
}

// Enrollment is what the Secure Boot key enrollment files are made from.
type Enrollment struct {
	PK, KEK *secureboot.Key // PK signs PK and KEK; KEK signs db
	// MoreKEK are further certificates enrolled in KEK after KEK's own
	// (e.g. another vendor's KEK): they can sign db updates, but none
	// signs one here.
	MoreKEK []*x509.Certificate
	// DB are the certificates images are signed with: one signature
	// list each, in this order.
	DB []*x509.Certificate
	// Owner is the signature owner GUID in each list.
	Owner GUID
	// Time is the authenticated writes' timestamp (SOURCE_DATE_EPOCH):
	// firmware refuses a later update of a variable with an earlier time.
	Time time.Time
}

// File is one enrollment file: its name and contents.
type File struct {
	Name string
	Data []byte
}

// Files returns PK.esl, KEK.esl, db.esl (the certificates' signature
// lists: PK's; KEK's own, then MoreKEK; DB) and PK.auth, KEK.auth, db.auth
// (the signed updates that enroll them: PK signed by PK, KEK by PK, db by
// KEK). A certificate given twice for one variable is refused.
func (e *Enrollment) Files() ([]File, error) {
	if e.PK == nil || e.KEK == nil || len(e.DB) == 0 {
		return nil, errors.New("efivar: an enrollment needs PK and KEK keys and a db certificate")
	}
	kek := append([]*x509.Certificate{e.KEK.Cert}, e.MoreKEK...)
	steps := []struct {
		v      Variable
		certs  []*x509.Certificate
		signer *secureboot.Key
	}{{PK, []*x509.Certificate{e.PK.Cert}, e.PK}, {KEK, kek, e.PK}, {DB, e.DB, e.KEK}}
	for _, s := range steps {
		for i, c := range s.certs {
			if c == nil {
				return nil, fmt.Errorf("efivar: no %s certificate", s.v.Name)
			}
			if c.PublicKeyAlgorithm != x509.RSA {
				return nil, fmt.Errorf("%w: the %s certificate %s carries a %s key", secureboot.ErrNotRSA, s.v.Name, c.Subject, c.PublicKeyAlgorithm)
			}
			for _, d := range s.certs[:i] {
				if d != nil && d.Equal(c) {
					return nil, fmt.Errorf("%w: %s: certificate %s given twice", ErrDuplicate, s.v.Name, c.Subject)
				}
			}
		}
	}
	files := make([]File, 0, 2*len(steps))
	var auths []File
	for _, s := range steps {
		esl := X509SignatureLists(e.Owner, s.certs...)
		auth, err := SignUpdate(s.v, e.Time, esl, s.signer)
		if err != nil {
			return nil, err
		}
		files = append(files, File{s.v.Name + ".esl", esl})
		auths = append(auths, File{s.v.Name + ".auth", auth})
	}
	return append(files, auths...), nil
}

// WriteFiles writes files into dir: each to a temporary file first, then
// all renamed into place, so that a failure leaves no partial file (and,
// short of a failed rename, no partial set).
func WriteFiles(dir string, files []File) error {
	tmps := make([]string, 0, len(files))
	cleanup := func() {
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	for _, f := range files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) {
			cleanup()
			return fmt.Errorf("efivar: file name %q", f.Name)
		}
		tmp, err := os.CreateTemp(dir, "."+f.Name+".tmp*")
		if err != nil {
			cleanup()
			return fmt.Errorf("efivar: %w", err)
		}
		tmps = append(tmps, tmp.Name())
		_, err = tmp.Write(f.Data)
		if err == nil {
			err = tmp.Chmod(0o644)
		}
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			cleanup()
			return fmt.Errorf("efivar: writing %s: %w", filepath.Join(dir, f.Name), err)
		}
	}
	for i, f := range files {
		if err := os.Rename(tmps[i], filepath.Join(dir, f.Name)); err != nil {
			cleanup()
			return fmt.Errorf("efivar: writing %s: %w", filepath.Join(dir, f.Name), err)
		}
	}
	return nil
}
