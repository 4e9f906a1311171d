//go:build kms || kms_hashivault

package sign

import "github.com/sigstore/sigstore/pkg/signature/kms/hashivault"

func init() { addSigstoreKMS(hashivault.ReferenceScheme, hashivault.ValidReference) }
