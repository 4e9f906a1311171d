package sign

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"
)

// EnvScheme prefixes a key reference held in an environment variable:
// env://VAR.
const EnvScheme = "env://"

var uriRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)

// refKind is what a key reference points at.
type refKind uint8

const (
	refFile refKind = iota
	refEnv
	refKMS
)

// parseRef classifies ref. Only the schemes kiln knows reach loadKMS (see
// kms.go): an unknown scheme would otherwise make sigstore look for a
// plugin program named after it on $PATH.
func parseRef(ref string) (refKind, string, error) {
	switch {
	case ref == "":
		return 0, "", fmt.Errorf("%w: empty key reference", ErrInvalidKey)
	case strings.HasPrefix(ref, EnvScheme):
		name := strings.TrimPrefix(ref, EnvScheme)
		if name == "" || strings.ContainsAny(name, "=\x00") {
			return 0, "", fmt.Errorf("%w: %q names no environment variable", ErrInvalidKey, ref)
		}
		return refEnv, name, nil
	case uriRE.MatchString(ref):
		for _, s := range KMSSchemes {
			if strings.HasPrefix(ref, s) {
				return refKMS, ref, nil
			}
		}
		scheme, _, _ := strings.Cut(ref, "://")
		return 0, "", fmt.Errorf("%w %q (want a PEM file, %s, or one of %s)", ErrUnknownScheme, scheme+"://", EnvScheme+"VAR", strings.Join(KMSSchemes, " "))
	}
	return refFile, ref, nil
}

// readRef returns the PEM bytes a file or env:// reference holds.
func readRef(kind refKind, target string) ([]byte, error) {
	if kind == refEnv {
		v, ok := os.LookupEnv(target)
		if !ok || v == "" {
			return nil, fmt.Errorf("%w: environment variable %s is not set", ErrInvalidKey, target)
		}
		return []byte(v), nil
	}
	f, err := os.Open(target)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s: no such file", ErrInvalidKey, target)
		}
		return nil, fmt.Errorf("sign: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is a %s, not a PEM key file", ErrInvalidKey, target, map[bool]string{true: "directory", false: "special file"}[st.IsDir()])
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("sign: reading %s: %w", target, err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalidKey, target, maxKeyFileSize)
	}
	return data, nil
}

// Signer signs blobs.
type Signer interface {
	// Sign returns the raw signature over the bytes read from r: over
	// their SHA-256 for ECDSA and RSA keys, over the bytes themselves for
	// Ed25519 keys (see the package documentation).
	Sign(r io.Reader) ([]byte, error)
	// PublicKey returns the public half of the signing key.
	PublicKey() (crypto.PublicKey, error)
}

// Verifier checks blob signatures.
type Verifier interface {
	// Verify checks sig, the raw signature bytes, over the bytes read
	// from r. It returns an error wrapping ErrMalformedSignature when sig
	// cannot be a signature of the key's type, and ErrBadSignature when it
	// does not verify.
	Verify(r io.Reader, sig []byte) error
	// PublicKey returns the key signatures are checked with.
	PublicKey() (crypto.PublicKey, error)
}

var (
	_ Signer       = (*keySigner)(nil)
	_ Verifier     = (*keyVerifier)(nil)
	_ Verifier     = (*keySigner)(nil)
	_ fmt.Stringer = (*keySigner)(nil)
	_ fmt.Stringer = (*keyVerifier)(nil)
)

// LoadSigner loads the signing key ref names: a PEM file, env://VAR or a
// KMS URI. passphrase is called only for an encrypted key; it may be nil,
// and may return nil for "no passphrase". ctx is kept for the KMS calls the
// signer makes later.
func LoadSigner(ctx context.Context, ref string, passphrase func() ([]byte, error)) (Signer, error) {
	kind, target, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	if kind == refKMS {
		sv, err := loadKMS(ctx, target)
		if err != nil {
			return nil, err
		}
		return &keySigner{name: ref, sv: sv, ctx: ctx}, nil
	}
	data, err := readRef(kind, target)
	if err != nil {
		return nil, err
	}
	priv, err := parsePrivateKey(data, ref, passphrase)
	if err != nil {
		return nil, err
	}
	sv, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnsupportedKey, ref, err)
	}
	return &keySigner{name: ref, sv: sv, pub: priv.Public(), ecdsa: asECDSA(priv), ctx: ctx}, nil
}

// LoadVerifier loads the public key ref names: a PEM file ("PUBLIC KEY"),
// env://VAR or a KMS URI. For a KMS key the public key is fetched once, on
// first use; the signatures are then checked locally, the same way as for a
// file key.
func LoadVerifier(ctx context.Context, ref string) (Verifier, error) {
	kind, target, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	if kind == refKMS {
		sv, err := loadKMS(ctx, target)
		if err != nil {
			return nil, err
		}
		return &keyVerifier{name: ref, kms: sv, ctx: ctx}, nil
	}
	data, err := readRef(kind, target)
	if err != nil {
		return nil, err
	}
	pub, err := parsePublicKey(data, ref)
	if err != nil {
		return nil, err
	}
	return NewVerifier(pub, ref)
}

// NewVerifier returns a Verifier for pub; name identifies the key in errors
// (a file name, say).
func NewVerifier(pub crypto.PublicKey, name string) (Verifier, error) {
	if err := checkPublicKey(pub); err != nil {
		return nil, err
	}
	return &keyVerifier{name: name, pub: pub}, nil
}

// NewSigner returns a Signer for a private key already in memory; name
// identifies the key in errors.
func NewSigner(priv crypto.Signer, name string) (Signer, error) {
	if err := checkPublicKey(priv.Public()); err != nil {
		return nil, err
	}
	sv, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	return &keySigner{name: name, sv: sv, pub: priv.Public(), ecdsa: asECDSA(priv), ctx: context.Background()}, nil
}

// asECDSA returns priv if it is an ECDSA key in memory, else nil.
func asECDSA(priv crypto.Signer) *ecdsa.PrivateKey {
	k, _ := priv.(*ecdsa.PrivateKey)
	return k
}

// keySigner signs with a sigstore SignerVerifier: a key in memory or a KMS
// key. Every signature a key in memory makes is a function of the key and
// the message, so that a signed build is bit-identical to its rebuild:
// RSA PKCS #1 v1.5 and Ed25519 are deterministic by construction, and an
// ECDSA key in memory signs with RFC 6979 nonces (crypto/ecdsa with no
// random source), not through sigstore, whose ECDSA signer always draws a
// random nonce. A KMS signs as its service does (AWS, Google and Azure
// ECDSA signatures are randomized).
type keySigner struct {
	name  string
	sv    signature.SignerVerifier
	pub   crypto.PublicKey  // nil until fetched, for a KMS key
	ecdsa *ecdsa.PrivateKey // set for an ECDSA key in memory
	ctx   context.Context
}

func (s *keySigner) String() string { return s.name }

func (s *keySigner) PublicKey() (crypto.PublicKey, error) {
	return cachedPublicKey(&s.pub, s.name, func() (crypto.PublicKey, error) {
		return s.sv.PublicKey(options.WithContext(s.ctx))
	})
}

// cachedPublicKey returns *cached, fetching (from a KMS) and checking the
// key the first time.
func cachedPublicKey(cached *crypto.PublicKey, name string, fetch func() (crypto.PublicKey, error)) (crypto.PublicKey, error) {
	if *cached != nil {
		return *cached, nil
	}
	pub, err := fetch()
	if err != nil {
		return nil, fmt.Errorf("sign: fetching the public key of %s: %w", name, err)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	*cached = pub
	return pub, nil
}

func (s *keySigner) Sign(r io.Reader) ([]byte, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	m, err := readMessage(pub, r)
	if err != nil {
		return nil, err
	}
	if m.digest != nil {
		return s.signDigest(m.digest)
	}
	sig, err := s.sv.SignMessage(m.reader(), options.WithContext(s.ctx))
	if err != nil {
		return nil, fmt.Errorf("sign: signing with %s: %w", s.name, err)
	}
	return sig, nil
}

// Verify lets a Signer check its own signatures.
func (s *keySigner) Verify(r io.Reader, sig []byte) error {
	pub, err := s.PublicKey()
	if err != nil {
		return err
	}
	return verifyWith(pub, s.name, r, sig)
}

// keyVerifier checks signatures with a public key, held or fetched from a
// KMS.
type keyVerifier struct {
	name string
	pub  crypto.PublicKey
	kms  signature.SignerVerifier
	ctx  context.Context
}

func (v *keyVerifier) String() string { return v.name }

func (v *keyVerifier) PublicKey() (crypto.PublicKey, error) {
	return cachedPublicKey(&v.pub, v.name, func() (crypto.PublicKey, error) {
		return v.kms.PublicKey(options.WithContext(v.ctx))
	})
}

func (v *keyVerifier) Verify(r io.Reader, sig []byte) error {
	pub, err := v.PublicKey()
	if err != nil {
		return err
	}
	return verifyWith(pub, v.name, r, sig)
}
