//go:build kms || kms_aws

package sign

import "github.com/sigstore/sigstore/pkg/signature/kms/aws"

func init() { addSigstoreKMS(aws.ReferenceScheme, aws.ValidReference) }
