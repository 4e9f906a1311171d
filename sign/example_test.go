package sign_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kiln-os/kiln/sign"
)

// Create a key pair, sign a manifest, verify it, then catch a change.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "kiln-sign-example")
	defer os.RemoveAll(dir)

	kp, err := sign.GenerateKey(sign.ECDSAP256, nil) // nil: no passphrase
	if err != nil {
		panic(err)
	}
	name := filepath.Join(dir, "release")
	if err := sign.WriteKeyPair(name, kp); err != nil { // release.key, release.pub
		panic(err)
	}
	priv, pub := sign.KeyPairPaths(name)

	manifest := filepath.Join(dir, "manifest.json")
	os.WriteFile(manifest, []byte(`{"version":"1.0.0"}`), 0o644)

	s, err := sign.LoadSigner(ctx, priv, nil)
	if err != nil {
		panic(err)
	}
	if err := sign.SignFile(ctx, s, manifest); err != nil { // writes manifest.json.sig
		panic(err)
	}

	v, err := sign.LoadVerifier(ctx, pub)
	if err != nil {
		panic(err)
	}
	fmt.Println(sign.VerifyFile(ctx, v, manifest, sign.SignaturePath(manifest)))

	os.WriteFile(manifest, []byte(`{"version":"6.6.6"}`), 0o644)
	err = sign.VerifyFile(ctx, v, manifest, sign.SignaturePath(manifest))
	fmt.Println(errors.Is(err, sign.ErrBadSignature))
	// Output:
	// <nil>
	// true
}
