package sign

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"

	"github.com/sigstore/sigstore/pkg/signature/options"
)

// Digest signing is for formats that sign a SHA-256 digest they computed
// themselves, such as update payloads: ECDSA and RSA keys sign the digest
// as a prehashed SHA-256 message (RSA: PKCS#1 v1.5 with the SHA-256
// DigestInfo, which update_engine verifies); Ed25519, which has no
// prehashed mode here, signs the 32 digest bytes as its message.

// SignDigest signs a 32-byte SHA-256 digest with s.
func SignDigest(s Signer, digest []byte) ([]byte, error) {
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("sign: digest of %d bytes, want %d", len(digest), sha256.Size)
	}
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	if _, ok := pub.(ed25519.PublicKey); ok {
		return s.Sign(bytes.NewReader(digest))
	}
	ks, ok := s.(*keySigner)
	if !ok {
		return nil, fmt.Errorf("%w: %T cannot sign a digest", ErrUnsupportedKey, s)
	}
	return ks.signDigest(digest)
}

// signDigest signs a SHA-256 digest: deterministically (RFC 6979) for an
// ECDSA key in memory, through the SignerVerifier otherwise.
func (s *keySigner) signDigest(digest []byte) ([]byte, error) {
	if s.ecdsa != nil {
		sig, err := s.ecdsa.Sign(nil, digest, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("sign: signing with %s: %w", s.name, err)
		}
		return sig, nil
	}
	sig, err := s.sv.SignMessage(nil, options.WithDigest(digest), options.WithCryptoSignerOpts(crypto.SHA256), options.WithContext(s.ctx))
	if err != nil {
		return nil, fmt.Errorf("sign: signing with %s: %w", s.name, err)
	}
	return sig, nil
}

// VerifyDigest checks a signature SignDigest made over digest.
func VerifyDigest(v Verifier, digest, sig []byte) error {
	pub, err := v.PublicKey()
	if err != nil {
		return err
	}
	m := &message{digest: digest}
	if _, ok := pub.(ed25519.PublicKey); ok {
		m = &message{data: digest}
	}
	return verifyMessage(pub, describeKey(fmt.Sprint(v), pub), m, sig)
}

// SignatureSize is the longest signature the public key's type makes: an
// RSA modulus, a DER-encoded ECDSA pair, or 64 bytes for Ed25519.
func SignatureSize(pub crypto.PublicKey) (int, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return k.Size(), nil
	case *ecdsa.PublicKey:
		n := (k.Curve.Params().BitSize + 7) / 8
		return 2*(n+3) + 3, nil // SEQUENCE{INTEGER r, INTEGER s}, each with a sign byte
	case ed25519.PublicKey:
		return ed25519.SignatureSize, nil
	}
	return 0, fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}
