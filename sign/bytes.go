package sign

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// SignBytes signs data with s as SignFile signs a file's bytes, and checks
// the signature against s's public key before returning it.
func SignBytes(s Signer, data []byte) ([]byte, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	sig, err := s.Sign(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	if err := verifyWith(pub, keyName(s), bytes.NewReader(data), sig); err != nil {
		return nil, fmt.Errorf("the signature made does not verify with the key's public key: %w", err)
	}
	return sig, nil
}

// VerifyBytes checks sig, a raw signature as SignBytes makes, over data.
func VerifyBytes(v Verifier, data, sig []byte) error {
	return v.Verify(bytes.NewReader(data), sig)
}

// ParsePublicKeyPEM decodes a PEM public key (PKIX), as a .pub file of
// kiln keygen holds; name labels it in errors.
func ParsePublicKeyPEM(data []byte, name string) (crypto.PublicKey, error) {
	return parsePublicKey(data, name)
}

// PublicKeyPEM encodes a public key as PKIX PEM, as kiln keygen writes it.
func PublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: publicKeyPEM, Bytes: der}), nil
}
