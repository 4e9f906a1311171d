//go:build kms || kms_azure

package sign

import "github.com/sigstore/sigstore/pkg/signature/kms/azure"

func init() { addSigstoreKMS(azure.ReferenceScheme, azure.ValidReference) }
