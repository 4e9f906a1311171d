// Package authenticode signs PE/COFF images (UEFI applications, Linux
// kernels with an EFI stub, unified kernel images) with Authenticode, as
// UEFI Secure Boot firmware verifies them, in pure Go.
//
// The image hash follows Microsoft's "Windows Authenticode Portable
// Executable Signature Format" as edk2's DxeImageVerificationLib computes
// it: the headers up to SizeOfHeaders without the optional header's
// CheckSum and the certificate table's data directory entry; the sections'
// raw data sorted by file offset; the bytes after them up to the
// certificate table. The signature is a PKCS #7 SignedData holding an
// SpcIndirectDataContent with that SHA-256 hash, signed with RSA PKCS #1
// v1.5 through authenticated attributes contentType, messageDigest and an
// empty SpcSpOpusInfo, in a WIN_CERTIFICATE (revision 0x0200, type
// PKCS_SIGNED_DATA) appended at an 8-byte boundary, which the certificate
// table's data directory entry points to. The CheckSum is recomputed over
// the signed file, as sbsign does.
//
// Signing is deterministic: the same image, key and certificate give the
// same bytes (no signing time is recorded).
package authenticode

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/internal/atomicfile"
	"github.com/kiln-os/kiln/sign/internal/pkcs7"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// ErrSigned: the image already carries a signature and replacing it was
// not asked for.
var ErrSigned = errors.New("authenticode: image is already signed")

// FormatError is a malformed PE/COFF image: what is wrong with which field,
// at which byte.
type FormatError struct {
	Off   int64  // file offset of the field
	Field string // the field, as the PE specification names it
	Msg   string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("authenticode: malformed PE image: %s at byte 0x%x: %s", e.Field, e.Off, e.Msg)
}

// WIN_CERTIFICATE.
const (
	winCertHeaderSize     = 8
	winCertRevision       = 0x0200
	winCertTypePKCSSigned = 0x0002
)

// Authenticode object identifiers.
var (
	oidSpcIndirectDataContent = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	oidSpcPEImageData         = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 15}
	oidSpcSpOpusInfo          = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 12}
)

// Options change how Sign treats its input.
type Options struct {
	// Replace drops the signatures an already signed image carries (its
	// whole certificate table) and signs it anew, e.g. to sign a
	// distribution's kernel with one's own db key instead. Without it,
	// Sign refuses a signed image with ErrSigned.
	Replace bool
}

// Digest returns the Authenticode SHA-256 hash of the image pe as firmware
// computes it, signed or not.
func Digest(pe []byte) ([]byte, error) {
	im, err := Parse(pe)
	if err != nil {
		return nil, err
	}
	return digest(pe, im, im.hashedEnd()), nil
}

// digest hashes pe's headers (without the CheckSum and the certificate
// table entry), its sections in file order, then what follows the bytes
// hashed so far up to end, the start of the certificate table.
func digest(pe []byte, im *Image, end int64) []byte {
	h := sha256.New()
	// (1) The headers, skipping the CheckSum and the certificate table's
	// data directory entry.
	h.Write(pe[:im.CheckSumOffset])
	h.Write(pe[im.CheckSumOffset+4 : im.CertDirOffset])
	h.Write(pe[im.CertDirOffset+dataDirSize : im.SizeOfHeaders])
	// (2) The sections' raw data, by file offset.
	hashed := im.SizeOfHeaders
	for _, s := range im.Sections {
		h.Write(pe[s.Offset:s.End()])
		hashed += s.Size
	}
	// (3) The data after the last hashed byte count (SUM_OF_BYTES_HASHED),
	// up to the certificate table.
	if end > hashed {
		h.Write(pe[hashed:end])
	}
	return h.Sum(nil)
}

// Sign returns the image pe signed with s, whose public key cert must
// carry. s must be an RSA key: UEFI firmware verifies RSA signatures only
// (a file, env:// or KMS key, as sign.LoadSigner loads). An image that is
// already signed is refused with ErrSigned unless opts.Replace is set. A
// malformed image gives a *FormatError.
func Sign(pe []byte, s sign.Signer, cert *x509.Certificate, opts Options) ([]byte, error) {
	im, err := Parse(pe)
	if err != nil {
		return nil, err
	}
	if im.Signed() && !opts.Replace {
		return nil, fmt.Errorf("%w (%s; replacing drops every signature it holds)", ErrSigned, describeSigners(pe, im))
	}
	key := &secureboot.Key{Signer: s, Cert: cert}
	if _, err := secureboot.CheckKey(s, cert); err != nil {
		return nil, err
	}

	// (1) The unsigned image, without any certificate table, padded with
	// zeros to the 8-byte boundary the table starts at; the padding is
	// part of the hashed trailing data, as verifiers see the signed file.
	body := pe[:im.hashedEnd()]
	tableOff := int64(align8(len(body)))
	out := make([]byte, tableOff, tableOff+4096)
	copy(out, body)

	// (2) The signature over the image hash.
	sum := digest(out, im, tableOff)
	p7, err := pkcs7.Sign(key, oidSpcIndirectDataContent, spcIndirectDataContent(sum), pkcs7.Attribute{Type: oidSpcSpOpusInfo, Value: pkcs7.TLV(pkcs7.TagSequence)})
	if err != nil {
		return nil, fmt.Errorf("authenticode: signing: %w", err)
	}
	if err := checkFirmwareShape(p7); err != nil {
		return nil, err
	}

	// (3) The certificate table: one WIN_CERTIFICATE, padded to 8 bytes.
	entry := winCertHeaderSize + len(p7)
	table := make([]byte, align8(entry))
	binary.LittleEndian.PutUint32(table[0:], uint32(entry))
	binary.LittleEndian.PutUint16(table[4:], winCertRevision)
	binary.LittleEndian.PutUint16(table[6:], winCertTypePKCSSigned)
	copy(table[winCertHeaderSize:], p7)
	if tableOff+int64(len(table)) > math.MaxUint32 {
		return nil, fmt.Errorf("authenticode: the signed image would be %d bytes, past the 4 GiB a certificate table can be addressed in", tableOff+int64(len(table)))
	}
	out = append(out, table...)

	// (4) The certificate table's data directory entry, then the CheckSum
	// over the whole signed file; neither is hashed.
	binary.LittleEndian.PutUint32(out[im.CertDirOffset:], uint32(tableOff))
	binary.LittleEndian.PutUint32(out[im.CertDirOffset+4:], uint32(len(table)))
	binary.LittleEndian.PutUint32(out[im.CheckSumOffset:], 0)
	binary.LittleEndian.PutUint32(out[im.CheckSumOffset:], checksum(out, im.CheckSumOffset))
	return out, nil
}

// describeSigners names the signers of a signed image for a message.
func describeSigners(pe []byte, im *Image) string {
	var names []string
	eachSignature(pe, im, func(_ int64, p7 []byte) error {
		if sd, err := pkcs7.Parse(p7); err == nil {
			for _, c := range sd.Signers() {
				names = append(names, c.Subject.String())
			}
		}
		return nil
	})
	if len(names) == 0 {
		return fmt.Sprintf("a certificate table of %d bytes at 0x%x", im.CertTable.Size, im.CertTable.Offset)
	}
	return "by " + strings.Join(names, ", ")
}

// Signed describes what SignFile wrote.
type Signed struct {
	// Digest is the signed image's Authenticode SHA-256 hash.
	Digest []byte
	// Replaced are the signers of the signatures the input carried and
	// Options.Replace dropped.
	Replaced []*x509.Certificate
	// Size is the signed image's size in bytes.
	Size int64
}

// SignFile signs the image in the file in with s and cert (as Sign) and
// writes it to out through a temporary file and a rename: out is either
// the whole signed image or untouched. in and out may be the same file.
func SignFile(in, out string, s sign.Signer, cert *x509.Certificate, opts Options) (*Signed, error) {
	pe, err := os.ReadFile(in)
	if err != nil {
		return nil, fmt.Errorf("authenticode: %w", err)
	}
	var replaced []*x509.Certificate
	if im, err := Parse(pe); err == nil && im.Signed() && opts.Replace {
		replaced, _ = Signers(pe)
	}
	signed, err := Sign(pe, s, cert, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", in, err)
	}
	sum, err := Digest(signed)
	if err != nil {
		return nil, fmt.Errorf("authenticode: the signed image: %w", err)
	}
	if err := atomicfile.Write(out, signed, 0o644); err != nil {
		return nil, fmt.Errorf("authenticode: %w", err)
	}
	return &Signed{Digest: sum, Replaced: replaced, Size: int64(len(signed))}, nil
}

// spcIndirectDataContent encodes
//
//	SpcIndirectDataContent ::= SEQUENCE {
//	  data SEQUENCE { type SPC_PE_IMAGE_DATAOBJ,
//	    value SpcPeImageData ::= SEQUENCE { flags BIT STRING {},
//	      file [0] EXPLICIT SpcLink: [2] EXPLICIT SpcString:
//	        [0] IMPLICIT BMPString "<<<Obsolete>>>" } },
//	  messageDigest DigestInfo ::= SEQUENCE { sha256, OCTET STRING } }
func spcIndirectDataContent(sum []byte) []byte {
	var obsolete []byte
	for _, c := range "<<<Obsolete>>>" {
		obsolete = append(obsolete, 0, byte(c)) // UTF-16BE
	}
	peImageData := pkcs7.TLV(pkcs7.TagSequence,
		[]byte{pkcs7.TagBitString, 1, 0},
		pkcs7.TLV(pkcs7.TagContext0, pkcs7.TLV(0xa2, pkcs7.TLV(0x80, obsolete))),
	)
	return pkcs7.TLV(pkcs7.TagSequence,
		pkcs7.TLV(pkcs7.TagSequence, pkcs7.OID(oidSpcPEImageData), peImageData),
		pkcs7.TLV(pkcs7.TagSequence,
			pkcs7.TLV(pkcs7.TagSequence, pkcs7.OID(pkcs7.OIDSHA256), []byte{pkcs7.TagNull, 0}),
			pkcs7.TLV(pkcs7.TagOctetString, sum),
		),
	)
}

// checkFirmwareShape checks what edk2's HashPeImageByType assumes of the
// signature: a ContentInfo whose length takes two bytes, so that the
// digest algorithm's OID is 32 bytes in.
func checkFirmwareShape(p7 []byte) error {
	oid := pkcs7.OID(pkcs7.OIDSHA256)[2:]
	if len(p7) < 32+len(oid) || p7[1] != 0x82 || string(p7[32:32+len(oid)]) != string(oid) {
		return fmt.Errorf("authenticode: the signature (%d bytes) is not shaped as firmware reads it (SHA-256 OID at byte 32)", len(p7))
	}
	return nil
}

// Checksum returns the PE CheckSum of the image pe as the optional header
// should hold it: the 16-bit one's-complement-style sum of the file's
// little-endian words (the CheckSum field read as zero), plus the file
// size (the algorithm of Windows' CheckSumMappedFile).
func Checksum(pe []byte) (uint32, error) {
	im, err := Parse(pe)
	if err != nil {
		return 0, err
	}
	return checksum(pe, im.CheckSumOffset), nil
}

// checksum sums pe with the 4 bytes at skip read as zero.
func checksum(pe []byte, skip int64) uint32 {
	var sum uint64
	n := int64(len(pe))
	for i := int64(0); i+1 < n; i += 2 {
		w := uint64(pe[i]) | uint64(pe[i+1])<<8
		if i+1 >= skip && i < skip+4 {
			if i >= skip {
				w &^= 0xff
			}
			if i+1 < skip+4 {
				w &^= 0xff00
			}
		}
		sum += w
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if n%2 == 1 && (n-1 < skip || n-1 >= skip+4) {
		sum += uint64(pe[n-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	return uint32(sum) + uint32(n)
}
