//go:build kms || kms_gcp

package sign

import "github.com/sigstore/sigstore/pkg/signature/kms/gcp"

func init() { addSigstoreKMS(gcp.ReferenceScheme, gcp.ValidReference) }
