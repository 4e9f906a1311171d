package sign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// KeyType is an algorithm keygen can create.
type KeyType uint8

// Key types.
const (
	ECDSAP256 KeyType = iota + 1
	Ed25519
	RSA3072
	// RSA2048 is the key update_engine's payload checks expect (256-byte
	// signatures).
	RSA2048
	RSA4096
)

var keyTypeNames = map[KeyType]string{
	ECDSAP256: "ecdsa-p256",
	Ed25519:   "ed25519",
	RSA2048:   "rsa-2048",
	RSA3072:   "rsa-3072",
	RSA4096:   "rsa-4096",
}

// rsaBits is the modulus size of each RSA key type.
var rsaBits = map[KeyType]int{RSA2048: 2048, RSA3072: 3072, RSA4096: 4096}

// KeyTypes lists the key types in the order help text shows them.
var KeyTypes = []KeyType{ECDSAP256, Ed25519, RSA2048, RSA3072, RSA4096}

func (t KeyType) String() string {
	if n, ok := keyTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("KeyType(%d)", uint8(t))
}

// ParseKeyType returns the key type named s ("ecdsa-p256", "ed25519",
// "rsa-2048", "rsa-3072", "rsa-4096").
func ParseKeyType(s string) (KeyType, error) {
	for t, n := range keyTypeNames {
		if strings.EqualFold(s, n) {
			return t, nil
		}
	}
	names := make([]string, len(KeyTypes))
	for i, t := range KeyTypes {
		names[i] = t.String()
	}
	return 0, fmt.Errorf("%w: key type %q (want one of %s)", ErrUnsupportedKey, s, strings.Join(names, ", "))
}

// PEM block types.
const (
	privateKeyPEM        = "PRIVATE KEY"
	encryptedSigstorePEM = "ENCRYPTED SIGSTORE PRIVATE KEY"
	encryptedCosignPEM   = "ENCRYPTED COSIGN PRIVATE KEY"
	encryptedPKCS8PEM    = "ENCRYPTED PRIVATE KEY"
	publicKeyPEM         = "PUBLIC KEY"
	rsaPrivateKeyPEM     = "RSA PRIVATE KEY"
	ecPrivateKeyPEM      = "EC PRIVATE KEY"
)

const (
	minRSABits        = 2048
	maxRSABits        = 8192
	maxKeyFileSize    = 1 << 20
	keyFileMode       = 0o600
	publicKeyFileMode = 0o644
	privateKeySuffix  = ".key"
	publicKeySuffix   = ".pub"
	signatureSuffix   = ".sig"
	fingerprintPrefix = "SHA256:"
)

// KeyPair is a PEM-encoded key pair as keygen writes it.
type KeyPair struct {
	Type      KeyType
	Private   []byte // PKCS #8 PEM, or cosign's encrypted PEM when Encrypted
	Public    []byte // PKIX PEM
	Encrypted bool
}

// GenerateKey creates a key pair of type t. When passphrase is not nil
// (empty is allowed, as cosign allows it), the private key is encrypted the
// way cosign encrypts it (scrypt and NaCl secretbox, PEM type "ENCRYPTED
// SIGSTORE PRIVATE KEY"), so cosign can load it too.
func GenerateKey(t KeyType, passphrase []byte) (*KeyPair, error) {
	var priv crypto.Signer
	var err error
	switch t {
	case ECDSAP256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case RSA2048, RSA3072, RSA4096:
		priv, err = rsa.GenerateKey(rand.Reader, rsaBits[t])
	default:
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, t)
	}
	if err != nil {
		return nil, fmt.Errorf("sign: generating %v key: %w", t, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("sign: encoding %v private key: %w", t, err)
	}
	kp := &KeyPair{Type: t}
	if passphrase == nil {
		kp.Private = pem.EncodeToMemory(&pem.Block{Type: privateKeyPEM, Bytes: der})
	} else {
		enc, err := encrypted.Encrypt(der, passphrase)
		if err != nil {
			return nil, fmt.Errorf("sign: encrypting %v private key: %w", t, err)
		}
		kp.Private = pem.EncodeToMemory(&pem.Block{Type: encryptedSigstorePEM, Bytes: enc})
		kp.Encrypted = true
	}
	if kp.Public, err = cryptoutils.MarshalPublicKeyToPEM(priv.Public()); err != nil {
		return nil, fmt.Errorf("sign: encoding %v public key: %w", t, err)
	}
	return kp, nil
}

// KeyPairPaths returns the files WriteKeyPair writes for name: name.key and
// name.pub.
func KeyPairPaths(name string) (private, public string) {
	return name + privateKeySuffix, name + publicKeySuffix
}

// WriteKeyPair writes kp to name.key (mode 0600) and name.pub (mode 0644).
// It never overwrites a file: when either exists it writes nothing and
// returns an error that wraps ErrExists.
func WriteKeyPair(name string, kp *KeyPair) error {
	privPath, pubPath := KeyPairPaths(name)
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%w: %s (refusing to overwrite a key)", ErrExists, p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("sign: %w", err)
		}
	}
	if err := writeExclusive(privPath, kp.Private, keyFileMode); err != nil {
		return err
	}
	if err := writeExclusive(pubPath, kp.Public, publicKeyFileMode); err != nil {
		os.Remove(privPath)
		return err
	}
	return nil
}

// writeExclusive creates path (failing if it exists) with mode and writes
// data. On failure it removes what it created.
func writeExclusive(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s (refusing to overwrite a key)", ErrExists, path)
	}
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	// The umask can only clear bits; make sure no group/other bit is set on
	// a private key even under an unusual umask.
	if err := f.Chmod(mode); err == nil {
		_, err = f.Write(data)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			return nil
		}
	} else {
		f.Close()
	}
	os.Remove(path)
	return fmt.Errorf("sign: writing %s: %w", path, err)
}

// Fingerprint names a public key without showing it: "SHA256:" and the
// unpadded base64 of the SHA-256 of its PKIX DER encoding (the style of
// ssh-keygen -l).
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	sum := sha256.Sum256(der)
	return fingerprintPrefix + base64.RawStdEncoding.EncodeToString(sum[:]), nil
}

// Algorithm names the signature algorithm kiln uses with pub, e.g.
// "ecdsa-p256-sha256", "rsa-3072-pkcs1v15-sha256" or "ed25519".
func Algorithm(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return fmt.Sprintf("ecdsa-%s-sha256", strings.ToLower(strings.ReplaceAll(k.Curve.Params().Name, "-", ""))), nil
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d-pkcs1v15-sha256", k.N.BitLen()), nil
	case ed25519.PublicKey:
		return "ed25519", nil
	}
	return "", fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// checkPublicKey accepts the keys kiln signs and verifies with.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s", ErrUnsupportedKey, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if b := k.N.BitLen(); b < minRSABits || b > maxRSABits {
			return fmt.Errorf("%w: %d-bit RSA (want %d to %d bits)", ErrUnsupportedKey, b, minRSABits, maxRSABits)
		}
		return nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: Ed25519 key of %d bytes", ErrInvalidKey, len(k))
		}
		return nil
	}
	return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// parsePrivateKey decodes a PEM private key, decrypting it with the
// passphrase when it is encrypted. name is used in errors; key bytes never
// are.
func parsePrivateKey(data []byte, name string, passphrase func() ([]byte, error)) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: %s: no PEM block", ErrInvalidKey, name)
	}
	var key any
	var err error
	switch block.Type {
	case encryptedSigstorePEM, encryptedCosignPEM, encryptedPKCS8PEM:
		pw, perr := getPassphrase(passphrase, name)
		if perr != nil {
			return nil, perr
		}
		// cryptoutils skips decryption for a nil passphrase; an empty one
		// is a real (cosign-style) passphrase.
		if pw == nil {
			pw = []byte{}
		}
		if block.Type == encryptedPKCS8PEM {
			key, err = cryptoutils.UnmarshalPEMToPrivateKey(data, cryptoutils.StaticPasswordFunc(pw))
		} else {
			var der []byte
			if der, err = encrypted.Decrypt(block.Bytes, pw); err == nil {
				key, err = x509.ParsePKCS8PrivateKey(der)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", ErrWrongPassphrase, name)
		}
	case privateKeyPEM, rsaPrivateKeyPEM, ecPrivateKeyPEM:
		//nolint:staticcheck // legacy "Proc-Type: 4,ENCRYPTED" PEM is still found in the wild
		if x509.IsEncryptedPEMBlock(block) {
			pw, perr := getPassphrase(passphrase, name)
			if perr != nil {
				return nil, perr
			}
			if key, err = cryptoutils.UnmarshalPEMToPrivateKey(data, cryptoutils.StaticPasswordFunc(pw)); err != nil {
				return nil, fmt.Errorf("%w (%s)", ErrWrongPassphrase, name)
			}
			break
		}
		switch block.Type {
		case privateKeyPEM:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case rsaPrivateKeyPEM:
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			key, err = x509.ParseECPrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: cannot parse %s", ErrInvalidKey, name, block.Type)
		}
	case publicKeyPEM:
		return nil, fmt.Errorf("%w: %s holds a public key; signing needs the private key", ErrInvalidKey, name)
	default:
		return nil, fmt.Errorf("%w: %s: PEM block %q is not a private key", ErrInvalidKey, name, block.Type)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %s: %T", ErrUnsupportedKey, name, key)
	}
	if err := checkPublicKey(s.Public()); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

func getPassphrase(passphrase func() ([]byte, error), name string) ([]byte, error) {
	if passphrase == nil {
		return nil, fmt.Errorf("%w (%s)", ErrPassphraseRequired, name)
	}
	pw, err := passphrase()
	if err != nil {
		return nil, fmt.Errorf("sign: reading passphrase for %s: %w", name, err)
	}
	if pw == nil {
		return nil, fmt.Errorf("%w (%s)", ErrPassphraseRequired, name)
	}
	return pw, nil
}

// parsePublicKey decodes a PEM public key (PKIX).
func parsePublicKey(data []byte, name string) (crypto.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: %s: no PEM block", ErrInvalidKey, name)
	}
	switch block.Type {
	case publicKeyPEM:
	case privateKeyPEM, encryptedSigstorePEM, encryptedCosignPEM, encryptedPKCS8PEM, rsaPrivateKeyPEM, ecPrivateKeyPEM:
		return nil, fmt.Errorf("%w: %s holds a private key; verifying needs the public key (.pub)", ErrInvalidKey, name)
	default:
		return nil, fmt.Errorf("%w: %s: PEM block %q is not a public key", ErrInvalidKey, name, block.Type)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: cannot parse public key", ErrInvalidKey, name)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return pub, nil
}
