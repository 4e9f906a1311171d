// Package pkcs7 builds the two PKCS #7 v1.5 (RFC 2315) SignedData shapes
// UEFI firmware checks, with one RSA signer whose certificate is included:
//
//   - Sign: a ContentInfo embedding its content (Authenticode's
//     SpcIndirectDataContent), signed through the authenticated attributes
//     contentType and messageDigest (plus any extra ones);
//   - SignDetached: a bare SignedData (no ContentInfo around it) over
//     detached data, with no authenticated attributes, as an
//     EFI_VARIABLE_AUTHENTICATION_2 holds it (efitools' sign-efi-sig-list
//     makes the same bytes).
//
// Both are DER and deterministic: no signing time, and RSA PKCS #1 v1.5
// signatures depend only on the key and the message.
package pkcs7

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"
	"slices"

	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// Object identifiers.
var (
	OIDData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	OIDSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	OIDSHA256        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	OIDRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	OIDContentType   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	OIDMessageDigest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
)

// DER tags.
const (
	TagInteger     = 0x02
	TagBitString   = 0x03
	TagOctetString = 0x04
	TagNull        = 0x05
	TagSequence    = 0x30
	TagSet         = 0x31
	// TagContext0 is [0] constructed (EXPLICIT, or IMPLICIT over a
	// constructed type).
	TagContext0 = 0xa0
)

// Attribute is an authenticated attribute: its type and the DER of its one
// value.
type Attribute struct {
	Type  asn1.ObjectIdentifier
	Value []byte
}

// TLV encodes one DER element: tag, definite length (shortest form) and
// the concatenated contents.
func TLV(tag byte, contents ...[]byte) []byte {
	n := 0
	for _, c := range contents {
		n += len(c)
	}
	out := []byte{tag}
	switch {
	case n < 0x80:
		out = append(out, byte(n))
	case n <= 0xff:
		out = append(out, 0x81, byte(n))
	case n <= 0xffff:
		out = append(out, 0x82, byte(n>>8), byte(n))
	case n <= 0xffffff:
		out = append(out, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		out = append(out, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	for _, c := range contents {
		out = append(out, c...)
	}
	return out
}

// OID encodes an object identifier.
func OID(oid asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(oid)
	if err != nil {
		panic(err) // only the constants above are encoded
	}
	return b
}

// sha256Alg is the AlgorithmIdentifier for SHA-256, with the NULL
// parameters OpenSSL writes (and edk2 looks for at a fixed offset).
func sha256Alg() []byte { return TLV(TagSequence, OID(OIDSHA256), []byte{TagNull, 0}) }

// Sign returns a ContentInfo (DER) holding a SignedData that embeds
// content, the DER of a value of type contentType, and is signed by key
// through authenticated attributes: contentType, messageDigest (SHA-256 of
// content's value octets, RFC 2315 9.3) and extra.
func Sign(key *secureboot.Key, contentType asn1.ObjectIdentifier, content []byte, extra ...Attribute) ([]byte, error) {
	value, err := valueOctets(content)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(value)
	attrs := append([]Attribute{
		{OIDContentType, OID(contentType)},
		{OIDMessageDigest, TLV(TagOctetString, digest[:])},
	}, extra...)
	encoded := make([][]byte, len(attrs))
	for i, a := range attrs {
		encoded[i] = TLV(TagSequence, OID(a.Type), TLV(TagSet, a.Value))
	}
	// DER orders a SET OF by its elements' encodings.
	slices.SortFunc(encoded, bytes.Compare)
	// The signature is over the attributes as a SET OF (tag 0x31); they
	// are stored with the [0] IMPLICIT tag (RFC 2315 9.3).
	signedAttrs := TLV(TagSet, encoded...)
	sig, err := signRSA(key, signedAttrs)
	if err != nil {
		return nil, err
	}
	attrField := append([]byte{TagContext0}, signedAttrs[1:]...)
	sd, err := signedData(key.Cert, TLV(TagSequence, OID(contentType), TLV(TagContext0, content)), attrField, sig)
	if err != nil {
		return nil, err
	}
	return TLV(TagSequence, OID(OIDSignedData), TLV(TagContext0, sd)), nil
}

// SignDetached returns a bare SignedData (DER, no ContentInfo around it)
// whose one signer signs data, detached (the content is id-data with no
// value), with no authenticated attributes.
func SignDetached(key *secureboot.Key, data []byte) ([]byte, error) {
	sig, err := signRSA(key, data)
	if err != nil {
		return nil, err
	}
	return signedData(key.Cert, TLV(TagSequence, OID(OIDData)), nil, sig)
}

// signedData encodes a SignedData with one SHA-256/RSA signer:
//
//	SignedData ::= SEQUENCE { version 1, digestAlgorithms SET, contentInfo,
//	  certificates [0] IMPLICIT SET OF Certificate, signerInfos SET }
//	SignerInfo ::= SEQUENCE { version 1, issuerAndSerialNumber,
//	  digestAlgorithm, authenticatedAttributes [0] IMPLICIT OPTIONAL,
//	  digestEncryptionAlgorithm, encryptedDigest OCTET STRING }
func signedData(cert *x509.Certificate, contentInfo, attrs, sig []byte) ([]byte, error) {
	version := []byte{TagInteger, 1, 1}
	serial, err := asn1.Marshal(new(big.Int).Set(cert.SerialNumber))
	if err != nil {
		return nil, fmt.Errorf("pkcs7: certificate serial number: %w", err)
	}
	signerInfo := TLV(TagSequence,
		version,
		TLV(TagSequence, cert.RawIssuer, serial),
		sha256Alg(),
		attrs,
		TLV(TagSequence, OID(OIDRSAEncryption), []byte{TagNull, 0}),
		TLV(TagOctetString, sig),
	)
	return TLV(TagSequence,
		version,
		TLV(TagSet, sha256Alg()),
		contentInfo,
		TLV(TagContext0, cert.Raw),
		TLV(TagSet, signerInfo),
	), nil
}

// signRSA signs msg (PKCS #1 v1.5 over its SHA-256) with key after checking
// that key's signer is RSA and its certificate carries its public key;
// sign.SignBytes checks the signature made against the public key (which
// catches a KMS key of another padding).
func signRSA(key *secureboot.Key, msg []byte) ([]byte, error) {
	if _, err := secureboot.CheckKey(key.Signer, key.Cert); err != nil {
		return nil, err
	}
	return sign.SignBytes(key.Signer, msg)
}

// valueOctets returns the contents octets of one DER element (what
// RFC 2315 digests: neither tag nor length).
func valueOctets(der []byte) ([]byte, error) {
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(der, &raw)
	if err != nil {
		return nil, fmt.Errorf("pkcs7: content: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("pkcs7: content: %d bytes after its DER element", len(rest))
	}
	return raw.Bytes, nil
}
