// Package secureboot holds what UEFI Secure Boot signing shares: the
// rule that firmware verifies RSA signatures only, a kiln signing key paired
// with the X.509 certificate that carries its public key, and self-signed
// certificates for kiln keys (any key reference, KMS included).
//
// The formats built on it are in sign/authenticode (signed PE/EFI
// binaries) and sign/efivar (PK, KEK and db enrollment files).
package secureboot

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/kiln-os/kiln/sign"
)

// Errors a caller can tell apart with errors.Is.
var (
	// ErrNotRSA: the key is not RSA. UEFI firmware (edk2 and the firmware
	// built on it) checks PKCS #1 v1.5 RSA signatures with SHA-256 only.
	ErrNotRSA = errors.New("secureboot: UEFI firmware verifies RSA signatures only")
	// ErrKeyMismatch: the certificate carries another public key than the
	// signing key's.
	ErrKeyMismatch = errors.New("secureboot: key does not match certificate")
	// ErrCertificate: a certificate file holds no X.509 certificate kiln
	// can use.
	ErrCertificate = errors.New("secureboot: invalid certificate")
)

// maxCertFile bounds what LoadCertificate reads.
const maxCertFile = 1 << 20

// Key is a signing key and the certificate that carries its public key:
// what firmware-facing signatures (Authenticode, authenticated variables)
// are made with.
type Key struct {
	Signer sign.Signer
	Cert   *x509.Certificate
}

// CheckKey returns the RSA public key of s after checking that s is an RSA
// key and that cert carries that public key.
func CheckKey(s sign.Signer, cert *x509.Certificate) (*rsa.PublicKey, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	rpub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s is %s", ErrNotRSA, keyName(s), describe(pub))
	}
	if cert == nil {
		return nil, fmt.Errorf("%w: no certificate", ErrCertificate)
	}
	if !rpub.Equal(cert.PublicKey) {
		return nil, mismatch(keyName(s), "the certificate", pub, cert)
	}
	return rpub, nil
}

// LoadKey loads the signing key keyRef names (a PEM file, env://VAR or a
// KMS URI, as sign.LoadSigner) and the certificate in certPath (PEM or
// DER), and checks that the key is RSA and that the certificate carries
// its public key. Its errors name both.
func LoadKey(ctx context.Context, keyRef, certPath string, passphrase func() ([]byte, error)) (*Key, error) {
	cert, err := LoadCertificate(certPath)
	if err != nil {
		return nil, err
	}
	s, err := sign.LoadSigner(ctx, keyRef, passphrase)
	if err != nil {
		return nil, err
	}
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	if _, ok := pub.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: %s is %s (make an RSA key: kiln keygen --type rsa-2048)", ErrNotRSA, keyRef, describe(pub))
	}
	if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: %s carries %s", ErrNotRSA, certPath, describe(cert.PublicKey))
	}
	if _, err := CheckKey(s, cert); err != nil {
		return nil, mismatch(keyRef, certPath, pub, cert)
	}
	return &Key{Signer: s, Cert: cert}, nil
}

// LoadCertificate reads one X.509 certificate from a PEM ("CERTIFICATE")
// or DER file.
func LoadCertificate(path string) (*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s: no such file", ErrCertificate, path)
		}
		return nil, fmt.Errorf("secureboot: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrCertificate, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCertFile+1))
	if err != nil {
		return nil, fmt.Errorf("secureboot: reading %s: %w", path, err)
	}
	if len(data) > maxCertFile {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrCertificate, path, maxCertFile)
	}
	return ParseCertificate(data, path)
}

// ParseCertificate decodes one X.509 certificate, PEM ("CERTIFICATE") or
// DER; name labels it in errors.
func ParseCertificate(data []byte, name string) (*x509.Certificate, error) {
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: %s: PEM block %q is not a certificate", ErrCertificate, name, block.Type)
		}
		der = block.Bytes
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCertificate, name, err)
	}
	return cert, nil
}

// CertificatePEM encodes a DER certificate as PEM.
func CertificatePEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// mismatch is the ErrKeyMismatch error naming the key and certificate and
// their fingerprints.
func mismatch(keyName, certName string, pub crypto.PublicKey, cert *x509.Certificate) error {
	kfp, _ := sign.Fingerprint(pub)
	cfp, err := sign.Fingerprint(cert.PublicKey)
	if err != nil {
		cfp = describe(cert.PublicKey)
	}
	return fmt.Errorf("%w: %s (%s) is not the key %s carries (%s)", ErrKeyMismatch, keyName, kfp, certName, cfp)
}

// keyName is how errors name a signer: its reference when it has one.
func keyName(s sign.Signer) string {
	if n, ok := s.(fmt.Stringer); ok {
		return n.String()
	}
	return "the signing key"
}

// describe names a public key's algorithm for an error message.
func describe(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("an RSA-%d key", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "an ECDSA " + k.Curve.Params().Name + " key"
	case ed25519.PublicKey:
		return "an Ed25519 key"
	}
	return fmt.Sprintf("a %T key", pub)
}
