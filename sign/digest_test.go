package sign

import (
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSignDigestEachKeyType: digest signatures verify with kiln, fail
// with another key or another digest, and (ECDSA, RSA) verify with openssl
// as a prehashed SHA-256 signature, which is what update_engine checks.
func TestSignDigestEachKeyType(t *testing.T) {
	for _, kt := range KeyTypes {
		t.Run(kt.String(), func(t *testing.T) {
			dir := t.TempDir()
			k := newKey(t, kt, dir, "k")
			other := newKey(t, kt, dir, "other")
			digest := sha256.Sum256([]byte("payload header, manifest and data"))
			sig, err := SignDigest(k.signer, digest[:])
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := k.signer.PublicKey()
			if n, err := SignatureSize(pub); err != nil || len(sig) > n {
				t.Errorf("signature %d bytes, SignatureSize %d %v", len(sig), n, err)
			}
			if err := VerifyDigest(k.verifier, digest[:], sig); err != nil {
				t.Fatal(err)
			}
			if err := VerifyDigest(other.verifier, digest[:], sig); !errors.Is(err, ErrBadSignature) {
				t.Errorf("other key: %v", err)
			}
			wrong := sha256.Sum256([]byte("something else"))
			if err := VerifyDigest(k.verifier, wrong[:], sig); !errors.Is(err, ErrBadSignature) {
				t.Errorf("other digest: %v", err)
			}
			if kt == Ed25519 {
				return
			}
			dg, sg := filepath.Join(dir, "digest"), filepath.Join(dir, "sig")
			os.WriteFile(dg, digest[:], 0o644)
			os.WriteFile(sg, sig, 0o644)
			out, err := exec.Command("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", k.pub, "-in", dg, "-sigfile", sg, "-pkeyopt", "digest:sha256").CombinedOutput()
			if err != nil {
				t.Errorf("openssl pkeyutl -verify: %v %s", err, out)
			}
		})
	}
}
