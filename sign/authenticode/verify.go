package authenticode

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kiln-os/kiln/sign/internal/pkcs7"
)

// ErrBadSignature: a signature in the image does not verify: the image
// changed after signing, or the signature is damaged.
var ErrBadSignature = errors.New("authenticode: signature does not verify")

// ErrUnsigned: the image has no signature.
var ErrUnsigned = errors.New("authenticode: image is not signed")

type spcIndirectData struct {
	Data          asn1.RawValue
	MessageDigest struct {
		Algorithm pkix.AlgorithmIdentifier
		Digest    []byte
	}
}

// Verify checks every Authenticode signature in the image pe: the hash each
// signs is the image's and the signature over it verifies with the signer's
// certificate (SHA-256 and RSA only). It returns the signers' certificates.
// It checks signatures, not trust: the caller compares the certificates
// with those it trusts (firmware: db).
func Verify(pe []byte) ([]*x509.Certificate, error) {
	im, err := Parse(pe)
	if err != nil {
		return nil, err
	}
	if !im.Signed() {
		return nil, ErrUnsigned
	}
	sum := digest(pe, im, im.hashedEnd())
	var certs []*x509.Certificate
	err = eachSignature(pe, im, func(off int64, p7 []byte) error {
		sd, err := pkcs7.Parse(p7)
		if err != nil {
			return fmt.Errorf("%w: WIN_CERTIFICATE at 0x%x: %w", ErrBadSignature, off, err)
		}
		var spc spcIndirectData
		if sd.Content == nil || !sd.ContentType.Equal(oidSpcIndirectDataContent) {
			return fmt.Errorf("%w: WIN_CERTIFICATE at 0x%x holds no SpcIndirectDataContent", ErrBadSignature, off)
		}
		if _, err := asn1.Unmarshal(sd.Content, &spc); err != nil {
			return fmt.Errorf("%w: WIN_CERTIFICATE at 0x%x: SpcIndirectDataContent: %w", ErrBadSignature, off, err)
		}
		if !spc.MessageDigest.Algorithm.Algorithm.Equal(pkcs7.OIDSHA256) {
			return fmt.Errorf("%w: WIN_CERTIFICATE at 0x%x: the image hash is not SHA-256 (%v)", ErrBadSignature, off, spc.MessageDigest.Algorithm.Algorithm)
		}
		if !bytes.Equal(spc.MessageDigest.Digest, sum) {
			return fmt.Errorf("%w: WIN_CERTIFICATE at 0x%x signs image hash %x, the image's is %x", ErrBadSignature, off, spc.MessageDigest.Digest, sum)
		}
		signers, err := sd.Verify(nil)
		if err != nil {
			return fmt.Errorf("%w: WIN_CERTIFICATE at 0x%x: %w", ErrBadSignature, off, err)
		}
		certs = append(certs, signers...)
		return nil
	})
	return certs, err
}

// Signers returns the certificates of the image's signers, without
// checking the signatures.
func Signers(pe []byte) ([]*x509.Certificate, error) {
	im, err := Parse(pe)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	err = eachSignature(pe, im, func(off int64, p7 []byte) error {
		sd, err := pkcs7.Parse(p7)
		if err != nil {
			return fmt.Errorf("%w: WIN_CERTIFICATE at 0x%x: %w", ErrBadSignature, off, err)
		}
		certs = append(certs, sd.Signers()...)
		return nil
	})
	return certs, err
}

// eachSignature calls fn with each PKCS #7 signature in the certificate
// table (Parse checked the entries' lengths); other certificate types are
// refused.
func eachSignature(pe []byte, im *Image, fn func(off int64, p7 []byte) error) error {
	table := pe[im.CertTable.Offset:im.CertTable.End()]
	for pos := 0; pos < len(table); {
		n := int(binary.LittleEndian.Uint32(table[pos:]))
		rev, typ := binary.LittleEndian.Uint16(table[pos+4:]), binary.LittleEndian.Uint16(table[pos+6:])
		off := im.CertTable.Offset + int64(pos)
		if rev != winCertRevision || typ != winCertTypePKCSSigned {
			return &FormatError{Off: off, Field: "WIN_CERTIFICATE", Msg: fmt.Sprintf("revision 0x%x type 0x%x, want 0x%x and 0x%x (PKCS_SIGNED_DATA)", rev, typ, winCertRevision, winCertTypePKCSSigned)}
		}
		if err := fn(off, table[pos+winCertHeaderSize:pos+n]); err != nil {
			return err
		}
		pos += align8(n)
	}
	return nil
}
