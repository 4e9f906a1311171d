package secureboot

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"time"

	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/internal/atomicfile"
)

// ErrSubject: a certificate subject kiln cannot parse.
var ErrSubject = errors.New("secureboot: malformed subject")

// NoExpiry is the notAfter of a certificate with no well-defined
// expiration date (RFC 5280, 4.1.2.5). UEFI firmware does not check
// certificate times; a Secure Boot key is retired by replacing it.
var NoExpiry = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// CertificateOptions are the fields of a self-signed certificate.
type CertificateOptions struct {
	Subject pkix.Name
	// NotBefore is the start of validity, the build's SOURCE_DATE_EPOCH;
	// it is truncated to the second.
	NotBefore time.Time
	// Days is the validity in days; 0 means no expiry (NoExpiry).
	Days int
}

// NewCertificate returns a self-signed X.509 v3 certificate (DER) for the
// RSA key of s: a CA (basicConstraints cA, keyUsage digitalSignature and
// keyCertSign), so it can be PK, KEK or db, signed with SHA-256 and PKCS #1
// v1.5 through s (a file, env:// or KMS key). The output is a function of
// the key and opts: the serial number is derived from them, and RSA PKCS #1
// v1.5 signatures are deterministic.
func NewCertificate(s sign.Signer, opts CertificateOptions) ([]byte, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	rpub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s is %s (make an RSA key: kiln keygen --type rsa-2048)", ErrNotRSA, keyName(s), describe(pub))
	}
	if len(opts.Subject.ToRDNSequence()) == 0 {
		return nil, fmt.Errorf("%w: empty subject", ErrSubject)
	}
	if opts.Days < 0 {
		return nil, fmt.Errorf("secureboot: validity of %d days", opts.Days)
	}
	notBefore := opts.NotBefore.UTC().Truncate(time.Second)
	notAfter := NoExpiry
	if opts.Days > 0 {
		notAfter = notBefore.AddDate(0, 0, opts.Days)
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("secureboot: certificate would end (%s) before it starts (%s)", notAfter.Format(time.RFC3339), notBefore.Format(time.RFC3339))
	}
	spki, err := x509.MarshalPKIXPublicKey(rpub)
	if err != nil {
		return nil, fmt.Errorf("secureboot: %w", err)
	}
	subject, err := asn1.Marshal(opts.Subject.ToRDNSequence())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSubject, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(spki, subject, notBefore, notAfter),
		Subject:               opts.Subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          subjectKeyID(rpub),
		SignatureAlgorithm:    x509.SHA256WithRSA,
	}
	// rand is not read: the signer ignores it and the serial number and
	// key identifier are set.
	der, err := x509.CreateCertificate(noRand{}, tmpl, tmpl, rpub, cryptoSigner{s, rpub})
	if err != nil {
		return nil, fmt.Errorf("secureboot: making the certificate with %s: %w", keyName(s), err)
	}
	return der, nil
}

// WriteCertificatePEM writes the DER certificate der to path as PEM,
// through a temporary file and a rename.
func WriteCertificatePEM(path string, der []byte) error {
	if err := atomicfile.Write(path, CertificatePEM(der), 0o644); err != nil {
		return fmt.Errorf("secureboot: %w", err)
	}
	return nil
}

// serialNumber derives a positive 127-bit serial number from what the
// certificate says, so the same key and options give the same certificate
// and different ones (in practice) never share a serial.
func serialNumber(spki, subject []byte, notBefore, notAfter time.Time) *big.Int {
	h := sha256.New()
	h.Write([]byte("kiln secureboot certificate serial v1\x00"))
	for _, b := range [][]byte{spki, subject} {
		binary.Write(h, binary.BigEndian, uint32(len(b)))
		h.Write(b)
	}
	binary.Write(h, binary.BigEndian, notBefore.Unix())
	binary.Write(h, binary.BigEndian, notAfter.Unix())
	sum := h.Sum(nil)[:16]
	sum[0] &= 0x7f
	sum[0] |= 0x40 // never 0, always 16 bytes
	return new(big.Int).SetBytes(sum)
}

// subjectKeyID is RFC 5280's method (1): the SHA-1 of the subjectPublicKey
// bits (set here so that it does not change with the Go release).
func subjectKeyID(pub *rsa.PublicKey) []byte {
	sum := sha1.Sum(x509.MarshalPKCS1PublicKey(pub))
	return sum[:]
}

// cryptoSigner lets crypto/x509 sign with a kiln key: the digest is
// signed as a prehashed SHA-256 message, PKCS #1 v1.5.
type cryptoSigner struct {
	s   sign.Signer
	pub *rsa.PublicKey
}

func (c cryptoSigner) Public() crypto.PublicKey { return c.pub }

func (c cryptoSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, pss := opts.(*rsa.PSSOptions); pss || opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("secureboot: only PKCS #1 v1.5 with SHA-256 is supported")
	}
	return sign.SignDigest(c.s, digest)
}

// noRand fails any read: NewCertificate must not depend on randomness.
type noRand struct{}

func (noRand) Read([]byte) (int, error) {
	return 0, errors.New("secureboot: certificate creation asked for randomness")
}

// subjectKeys maps the attribute names ParseSubject accepts to the
// pkix.Name field they fill.
var subjectKeys = map[string]func(n *pkix.Name, v string){
	"CN":           func(n *pkix.Name, v string) { n.CommonName = v },
	"O":            func(n *pkix.Name, v string) { n.Organization = append(n.Organization, v) },
	"OU":           func(n *pkix.Name, v string) { n.OrganizationalUnit = append(n.OrganizationalUnit, v) },
	"C":            func(n *pkix.Name, v string) { n.Country = append(n.Country, v) },
	"L":            func(n *pkix.Name, v string) { n.Locality = append(n.Locality, v) },
	"ST":           func(n *pkix.Name, v string) { n.Province = append(n.Province, v) },
	"STREET":       func(n *pkix.Name, v string) { n.StreetAddress = append(n.StreetAddress, v) },
	"POSTALCODE":   func(n *pkix.Name, v string) { n.PostalCode = append(n.PostalCode, v) },
	"SERIALNUMBER": func(n *pkix.Name, v string) { n.SerialNumber = v },
}

// ParseSubject parses a distinguished name written as "CN=Example db
// key,O=Example" (RFC 4514 style: comma-separated, "\," for a literal
// comma) or as openssl's "/CN=Example db key/O=Example". The attributes
// are CN, O, OU, C, L, ST, STREET, POSTALCODE and SERIALNUMBER; the
// certificate holds them in crypto/x509's order (C, ST, L, STREET,
// POSTALCODE, O, OU, CN, SERIALNUMBER) whatever order they are given in,
// so both spellings of a subject give the same certificate.
func ParseSubject(s string) (pkix.Name, error) {
	var n pkix.Name
	sep := ','
	body := s
	if strings.HasPrefix(s, "/") {
		sep, body = '/', s[1:]
	}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '\\' && i+1 < len(body):
			i++
			cur.WriteByte(body[i])
		case rune(c) == sep:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	parts = append(parts, cur.String())
	for _, p := range parts {
		k, v, ok := strings.Cut(p, "=")
		k, v = strings.ToUpper(strings.TrimSpace(k)), strings.TrimSpace(v)
		if !ok || v == "" {
			return pkix.Name{}, fmt.Errorf("%w: %q: want KEY=value pairs such as CN=Example db key,O=Example", ErrSubject, s)
		}
		set, known := subjectKeys[k]
		if !known {
			return pkix.Name{}, fmt.Errorf("%w: %q: unknown attribute %s (want CN, O, OU, C, L, ST, STREET, POSTALCODE or SERIALNUMBER)", ErrSubject, s, k)
		}
		set(&n, v)
	}
	return n, nil
}
