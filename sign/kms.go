package sign

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
)

// KMS keys. Each provider is built in by its own file behind a build tag,
// so that a build carries only the cloud SDKs it asks for:
//
//	awskms://      kms_aws.go         -tags kms_aws
//	gcpkms://      kms_gcp.go         -tags kms_gcp
//	azurekms://    kms_azure.go       -tags kms_azure
//	hashivault://  kms_hashivault.go  -tags kms_hashivault
//
// The tag kms builds in all four; the release binary (`make build`) and
// `make test` use it. A build without a provider refuses its scheme with
// ErrKMSNotBuilt, which names the tag that brings it in; it never hands the
// reference to sigstore, whose fallback would run a plugin program named
// after the scheme from $PATH.

// kmsKnown lists every KMS scheme kiln accepts, built in or not, with the
// provider's name and the build tag of its file.
var kmsKnown = []struct{ scheme, name, tag string }{
	{"awskms://", "AWS KMS", "kms_aws"},
	{"gcpkms://", "Google Cloud KMS", "kms_gcp"},
	{"azurekms://", "Azure Key Vault", "kms_azure"},
	{"hashivault://", "HashiCorp Vault", "kms_hashivault"},
}

// KMSSchemes are the KMS URI schemes LoadSigner and LoadVerifier accept:
// those of this build (KMSBuiltIn) load the key; the others are refused
// with ErrKMSNotBuilt.
var KMSSchemes = func() []string {
	s := make([]string, len(kmsKnown))
	for i, k := range kmsKnown {
		s[i] = k.scheme
	}
	return s
}()

// kmsProvider is a provider built into this kiln.
type kmsProvider struct {
	// valid is the provider's own check of a reference's form, which
	// tells a mistyped reference (the user's mistake) from a KMS failure.
	valid func(ref string) error
	load  func(ctx context.Context, ref string) (signature.SignerVerifier, error)
}

// kmsProviders holds the providers built in, by scheme; the kms_*.go files
// add them.
var kmsProviders = map[string]kmsProvider{}

func addKMS(scheme string, p kmsProvider) {
	if i := kmsScheme(scheme); i < 0 || kmsKnown[i].scheme != scheme {
		panic("sign: KMS scheme " + scheme + " is not in kmsKnown")
	}
	if _, dup := kmsProviders[scheme]; dup {
		panic("sign: KMS scheme " + scheme + " added twice")
	}
	kmsProviders[scheme] = p
}

// kmsScheme returns the index in kmsKnown of ref's scheme, or -1.
func kmsScheme(ref string) int {
	for i, k := range kmsKnown {
		if strings.HasPrefix(ref, k.scheme) {
			return i
		}
	}
	return -1
}

// KMSBuiltIn returns the KMS schemes this build can load keys from, in
// KMSSchemes order.
func KMSBuiltIn() []string {
	var s []string
	for _, k := range kmsKnown {
		if _, ok := kmsProviders[k.scheme]; ok {
			s = append(s, k.scheme)
		}
	}
	return s
}

// ErrKMSNotBuilt: the key reference names a KMS provider this kiln was
// built without. An error that wraps it is also ErrUnknownScheme, a key
// error (kiln exits 2).
var ErrKMSNotBuilt = errors.New("sign: KMS provider not in this build")

type kmsNotBuiltError struct{ ref, name, tag string }

func (e *kmsNotBuiltError) Error() string {
	return fmt.Sprintf("sign: %s: this kiln was built without the %s provider: the release binary (make build) has every KMS provider; "+
		"to build one yourself, add the build tag %s (or kms, for all of them) to go build -tags", e.ref, e.name, e.tag)
}

func (e *kmsNotBuiltError) Is(target error) bool {
	return target == ErrKMSNotBuilt || target == ErrUnknownScheme
}

// loadKMS returns the provider's SignerVerifier for ref, whose scheme is
// one of KMSSchemes. An error for a malformed reference wraps
// ErrInvalidKey; one for a provider not built in, ErrKMSNotBuilt.
func loadKMS(ctx context.Context, ref string) (signature.SignerVerifier, error) {
	i := kmsScheme(ref)
	if i < 0 {
		return nil, fmt.Errorf("%w: %s", ErrUnknownScheme, ref)
	}
	p, ok := kmsProviders[kmsKnown[i].scheme]
	if !ok {
		return nil, &kmsNotBuiltError{ref: ref, name: kmsKnown[i].name, tag: kmsKnown[i].tag}
	}
	sv, err := p.load(ctx, ref)
	if err == nil {
		return sv, nil
	}
	if p.valid(ref) != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidKey, ref, err)
	}
	return nil, fmt.Errorf("sign: loading KMS key %s: %w", ref, err)
}
