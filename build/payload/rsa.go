package payload

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
)

// RSASigner signs with an RSA private key, PKCS#1 v1.5 over the SHA-256
// DigestInfo: the signature update_engine's payload verifier checks.
type RSASigner struct{ Key *rsa.PrivateKey }

var _ Signer = RSASigner{}

// Sign implements Signer.
func (s RSASigner) Sign(digest []byte) ([]byte, error) {
	return rsa.SignPKCS1v15(rand.Reader, s.Key, crypto.SHA256, digest)
}

// SignatureSize implements Signer.
func (s RSASigner) SignatureSize() int { return s.Key.Size() }

// RSAVerifier verifies RSASigner signatures.
type RSAVerifier struct{ Key *rsa.PublicKey }

var _ Verifier = RSAVerifier{}

// Verify implements Verifier.
func (v RSAVerifier) Verify(digest, sig []byte) error {
	if err := rsa.VerifyPKCS1v15(v.Key, crypto.SHA256, digest, sig); err != nil {
		return err
	}
	return nil
}
