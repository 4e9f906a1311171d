package authenticode_test

import (
	"context"
	"fmt"
	"os"

	"github.com/kiln-os/kiln/sign/authenticode"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// Sign a kernel with a db key (a PEM file here; env:// and KMS keys load
// the same way), replacing the distribution's signature.
func ExampleSign() {
	key, err := secureboot.LoadKey(context.Background(), "db.key", "db.pem", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	kernel, err := os.ReadFile("vmlinuz")
	if err != nil {
		fmt.Println(err)
		return
	}
	signed, err := authenticode.Sign(kernel, key.Signer, key.Cert, authenticode.Options{Replace: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	os.WriteFile("vmlinuz.signed", signed, 0o644)
}
