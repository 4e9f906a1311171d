//go:build kms || kms_aws || kms_gcp || kms_azure || kms_hashivault

package sign

import (
	"context"
	"crypto"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms"
)

// addSigstoreKMS adds the sigstore KMS provider for scheme, which its
// package registered with kms.AddProvider when imported. Only schemes kiln
// built in reach kms.Get, so its fallback to a plugin program on $PATH
// never runs.
func addSigstoreKMS(scheme string, valid func(string) error) {
	addKMS(scheme, kmsProvider{
		valid: valid,
		load: func(ctx context.Context, ref string) (signature.SignerVerifier, error) {
			sv, err := kms.Get(ctx, ref, crypto.SHA256)
			if err != nil {
				return nil, err
			}
			return sv, nil
		},
	})
}
