package pkcs7

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// ErrVerify: a signature that does not verify, or that Verify cannot check.
var ErrVerify = errors.New("pkcs7: signature does not verify")

// contentInfo's Content is the [0] EXPLICIT wrapper: its Bytes are the
// content's DER.
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"optional,tag:0"`
}

type signedDataASN struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	ContentInfo      contentInfo
	Certificates     asn1.RawValue   `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue   `asn1:"optional,tag:1"`
	SignerInfos      []signerInfoASN `asn1:"set"`
}

type issuerAndSerial struct {
	Issuer asn1.RawValue
	Serial *big.Int
}

type signerInfoASN struct {
	Version                   int
	IssuerAndSerial           issuerAndSerial
	DigestAlgorithm           pkix.AlgorithmIdentifier
	AuthenticatedAttributes   asn1.RawValue `asn1:"optional,tag:0"`
	DigestEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedDigest           []byte
	UnauthenticatedAttributes asn1.RawValue `asn1:"optional,tag:1"`
}

type attributeASN struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue `asn1:"set"`
}

// SignedData is a parsed PKCS #7 SignedData.
type SignedData struct {
	ContentType  asn1.ObjectIdentifier
	Content      []byte // the DER of the embedded content; nil when detached
	Certificates []*x509.Certificate
	signers      []signerInfoASN
}

// Parse decodes a PKCS #7 SignedData, bare or in a ContentInfo. Zero
// bytes after it are ignored (some signers count a WIN_CERTIFICATE's
// padding in its length).
func Parse(der []byte) (*SignedData, error) {
	inner := der
	var ci contentInfo
	if rest, err := asn1.Unmarshal(der, &ci); err == nil && zeros(rest) && ci.ContentType.Equal(OIDSignedData) {
		inner = ci.Content.Bytes
	}
	var sd signedDataASN
	rest, err := asn1.Unmarshal(inner, &sd)
	if err != nil {
		return nil, fmt.Errorf("pkcs7: %w", err)
	}
	if !zeros(rest) {
		return nil, fmt.Errorf("pkcs7: %d bytes after the SignedData", len(rest))
	}
	out := &SignedData{ContentType: sd.ContentInfo.ContentType, signers: sd.SignerInfos}
	if len(sd.ContentInfo.Content.Bytes) > 0 {
		out.Content = sd.ContentInfo.Content.Bytes
	}
	if len(sd.Certificates.Bytes) > 0 {
		if out.Certificates, err = x509.ParseCertificates(sd.Certificates.Bytes); err != nil {
			return nil, fmt.Errorf("pkcs7: certificates: %w", err)
		}
	}
	return out, nil
}

// Signers returns the certificates (among those included) of the signers,
// in order; a signer whose certificate is not included is skipped.
func (sd *SignedData) Signers() []*x509.Certificate {
	var out []*x509.Certificate
	for _, si := range sd.signers {
		if c := sd.certificate(si); c != nil {
			out = append(out, c)
		}
	}
	return out
}

func (sd *SignedData) certificate(si signerInfoASN) *x509.Certificate {
	for _, c := range sd.Certificates {
		if bytes.Equal(c.RawIssuer, si.IssuerAndSerial.Issuer.FullBytes) && c.SerialNumber.Cmp(si.IssuerAndSerial.Serial) == 0 {
			return c
		}
	}
	return nil
}

// Verify checks the signature of every signer (SHA-256, RSA PKCS #1 v1.5,
// its certificate included) over the embedded content, or over detached
// when the content is detached, and returns the signers' certificates. It
// checks signatures, not trust: the caller decides whether it trusts the
// certificates.
func (sd *SignedData) Verify(detached []byte) ([]*x509.Certificate, error) {
	data := detached
	if sd.Content != nil {
		var err error
		if data, err = valueOctets(sd.Content); err != nil {
			return nil, err
		}
	}
	if len(sd.signers) == 0 {
		return nil, fmt.Errorf("%w: no signer", ErrVerify)
	}
	var certs []*x509.Certificate
	for i, si := range sd.signers {
		cert := sd.certificate(si)
		if cert == nil {
			return nil, fmt.Errorf("%w: signer %d: its certificate is not included", ErrVerify, i)
		}
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok || !si.DigestAlgorithm.Algorithm.Equal(OIDSHA256) {
			return nil, fmt.Errorf("%w: signer %d: only SHA-256 with RSA is checked", ErrVerify, i)
		}
		signed := data
		if len(si.AuthenticatedAttributes.FullBytes) > 0 {
			md, err := messageDigest(si.AuthenticatedAttributes.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: signer %d: %w", ErrVerify, i, err)
			}
			if sum := sha256.Sum256(data); !bytes.Equal(md, sum[:]) {
				return nil, fmt.Errorf("%w: signer %d: messageDigest is not the content's", ErrVerify, i)
			}
			signed = append([]byte{TagSet}, si.AuthenticatedAttributes.FullBytes[1:]...)
		}
		sum := sha256.Sum256(signed)
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], si.EncryptedDigest); err != nil {
			return nil, fmt.Errorf("%w: signer %d (%s)", ErrVerify, i, cert.Subject)
		}
		certs = append(certs, cert)
	}
	return certs, nil
}

// messageDigest finds the messageDigest attribute's value among the
// contents of an authenticated attributes SET.
func messageDigest(attrs []byte) ([]byte, error) {
	for len(attrs) > 0 {
		var a attributeASN
		var err error
		if attrs, err = asn1.Unmarshal(attrs, &a); err != nil {
			return nil, err
		}
		if a.Type.Equal(OIDMessageDigest) {
			var md []byte
			if _, err := asn1.Unmarshal(a.Values.Bytes, &md); err != nil {
				return nil, err
			}
			return md, nil
		}
	}
	return nil, errors.New("no messageDigest attribute")
}

func zeros(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
