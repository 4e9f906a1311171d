package sign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"

	"github.com/kiln-os/kiln/sign/internal/atomicfile"
)

// MaxEd25519Message is the largest file SignFile and VerifyFile handle
// with an Ed25519 key: pure Ed25519 reads the whole message into memory.
const MaxEd25519Message = 64 << 20

// maxSignatureFile bounds what VerifyFile reads from a signature file; the
// largest signature kiln makes (8192-bit RSA) is 1366 base64 characters.
const maxSignatureFile = 64 << 10

// SignaturePath returns where SignFile writes the signature of path.
func SignaturePath(path string) string { return path + signatureSuffix }

// SignFile signs the file at path with s and writes the base64 signature,
// with a trailing newline, to path.sig (through a temporary file and a
// rename, so a reader never sees half a signature). Before writing, it
// checks the signature against s's public key, which catches a KMS key of
// the wrong kind.
func SignFile(ctx context.Context, s Signer, path string) error {
	return SignFileTo(ctx, s, path, SignaturePath(path))
}

// SignFileTo is SignFile writing the signature to sigPath.
func SignFileTo(ctx context.Context, s Signer, path, sigPath string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	pub, err := s.PublicKey()
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	defer f.Close()
	// Hash while the signer reads, so the self-check needs no second pass
	// over the file.
	h := sha256.New()
	var msg bytes.Buffer
	tee := io.Writer(h)
	if _, ok := pub.(ed25519.PublicKey); ok {
		tee = &msg
	}
	sig, err := s.Sign(&ctxReader{ctx, io.TeeReader(f, tee)})
	if err != nil {
		return fmt.Errorf("signing %s: %w", path, err)
	}
	m := &message{digest: h.Sum(nil)}
	if _, ok := pub.(ed25519.PublicKey); ok {
		m = &message{data: msg.Bytes()}
	}
	if err := verifyMessage(pub, describeKey(keyName(s), pub), m, sig); err != nil {
		return fmt.Errorf("signing %s: the signature made does not verify with the key's public key (a KMS key must be ECDSA SHA-256 or RSA PKCS #1 v1.5 SHA-256): %w", path, err)
	}
	return writeFileAtomic(sigPath, []byte(base64.StdEncoding.EncodeToString(sig)+"\n"))
}

// VerifyFile checks the signature in sigPath (as SignFile writes it) over
// the file at path. Its errors wrap ErrNoSignature (sigPath missing),
// ErrMalformedSignature (empty, not base64, wrong length or shape for the
// key) or ErrBadSignature (a different key, or a changed file or
// signature); other errors are I/O errors.
func VerifyFile(ctx context.Context, v Verifier, path, sigPath string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sig, err := ReadSignature(sigPath)
	if err != nil {
		return fmt.Errorf("verifying %s: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("verifying %s: %w", path, err)
	}
	defer f.Close()
	if err := v.Verify(&ctxReader{ctx, f}, sig); err != nil {
		return fmt.Errorf("verifying %s with %s: %w", path, sigPath, err)
	}
	return nil
}

// ReadSignature reads a signature file: one line of standard base64
// (surrounding white space is ignored).
func ReadSignature(sigPath string) ([]byte, error) {
	f, err := os.Open(sigPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoSignature, sigPath)
	}
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSignatureFile+1))
	if err != nil {
		return nil, fmt.Errorf("sign: reading %s: %w", sigPath, err)
	}
	if len(data) > maxSignatureFile {
		return nil, fmt.Errorf("%w: %s: larger than %d bytes", ErrMalformedSignature, sigPath, maxSignatureFile)
	}
	text := strings.TrimSpace(string(data))
	if text == "" {
		return nil, fmt.Errorf("%w: %s is empty", ErrMalformedSignature, sigPath)
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64: %w", ErrMalformedSignature, sigPath, err)
	}
	return sig, nil
}

// message is what a signature covers: the SHA-256 digest of the file (ECDSA,
// RSA) or its bytes (Ed25519).
type message struct {
	digest []byte
	data   []byte
}

func (m *message) reader() io.Reader { return bytes.NewReader(m.data) }

// readMessage reads r as the key type needs it: hashed as a stream, or
// whole for Ed25519.
func readMessage(pub crypto.PublicKey, r io.Reader) (*message, error) {
	if _, ok := pub.(ed25519.PublicKey); ok {
		data, err := io.ReadAll(io.LimitReader(r, MaxEd25519Message+1))
		if err != nil {
			return nil, fmt.Errorf("sign: reading: %w", err)
		}
		if len(data) > MaxEd25519Message {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxEd25519Message)
		}
		return &message{data: data}, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return nil, fmt.Errorf("sign: reading: %w", err)
	}
	return &message{digest: h.Sum(nil)}, nil
}

// verifyWith checks sig over the bytes of r with pub.
func verifyWith(pub crypto.PublicKey, name string, r io.Reader, sig []byte) error {
	// Reject a malformed signature before reading a large file.
	if err := checkShape(pub, sig); err != nil {
		return err
	}
	m, err := readMessage(pub, r)
	if err != nil {
		return err
	}
	return verifyMessage(pub, describeKey(name, pub), m, sig)
}

func verifyMessage(pub crypto.PublicKey, desc string, m *message, sig []byte) error {
	if err := checkShape(pub, sig); err != nil {
		return err
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	if m.digest != nil {
		err = v.VerifySignature(bytes.NewReader(sig), nil, options.WithDigest(m.digest), options.WithCryptoSignerOpts(crypto.SHA256))
	} else {
		err = v.VerifySignature(bytes.NewReader(sig), m.reader())
	}
	if err != nil {
		return fmt.Errorf("%w with key %s", ErrBadSignature, desc)
	}
	return nil
}

// checkShape rejects bytes that cannot be a signature by pub's key type:
// the wrong length for RSA and Ed25519, not a DER SEQUENCE{r, s} of the
// curve's size for ECDSA.
func checkShape(pub crypto.PublicKey, sig []byte) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(sig) != ed25519.SignatureSize {
			return fmt.Errorf("%w: the key is Ed25519, whose signatures have %d bytes; this one %s", ErrMalformedSignature, ed25519.SignatureSize, looksLike(sig))
		}
	case *rsa.PublicKey:
		if len(sig) != k.Size() {
			return fmt.Errorf("%w: the key is RSA-%d, whose signatures have %d bytes; this one %s", ErrMalformedSignature, k.N.BitLen(), k.Size(), looksLike(sig))
		}
	case *ecdsa.PublicKey:
		var rs struct{ R, S *big.Int }
		rest, err := asn1.Unmarshal(sig, &rs)
		if err != nil || len(rest) != 0 {
			return fmt.Errorf("%w: the key is ECDSA %s, whose signatures are ASN.1 DER; this one %s", ErrMalformedSignature, k.Curve.Params().Name, looksLike(sig))
		}
		n := k.Curve.Params().N
		if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.Cmp(n) >= 0 || rs.S.Cmp(n) >= 0 {
			return fmt.Errorf("%w: ECDSA r or s out of range for %s", ErrMalformedSignature, k.Curve.Params().Name)
		}
	default:
		return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
	}
	return nil
}

// looksLike says what kind of key a malformed signature may come from, so
// that a signature checked with the wrong kind of key says so.
func looksLike(sig []byte) string {
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(sig, &rs); err == nil && len(rest) == 0 {
		return fmt.Sprintf("is an ECDSA signature (%d bytes): made with an ECDSA key?", len(sig))
	}
	switch len(sig) {
	case ed25519.SignatureSize:
		return "has 64 bytes, as an Ed25519 signature: made with an Ed25519 key?"
	case 256, 384, 512:
		return fmt.Sprintf("has %d bytes, as an RSA-%d signature: made with an RSA key?", len(sig), len(sig)*8)
	}
	return fmt.Sprintf("has %d bytes, the shape of no signature kiln makes", len(sig))
}

// keyName returns what a Signer or Verifier calls its key, if anything.
func keyName(k any) string {
	if s, ok := k.(fmt.Stringer); ok {
		return s.String()
	}
	return ""
}

// describeKey names a key in messages: its reference and fingerprint.
func describeKey(n string, pub crypto.PublicKey) string {
	fp, err := Fingerprint(pub)
	switch {
	case err != nil:
		return n
	case n == "":
		return fp
	}
	return n + " (" + fp + ")"
}

// ctxReader stops reading once ctx is done, so a long hash is cancellable.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory and a rename.
func writeFileAtomic(path string, data []byte) error {
	if err := atomicfile.Write(path, data, publicKeyFileMode); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	return nil
}
