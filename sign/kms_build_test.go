package sign

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// A KMS scheme whose provider this build lacks is refused as a key error
// (ErrKMSNotBuilt, also ErrUnknownScheme: exit 2) that names the provider
// and the build tag that brings it in, and no plugin program named after
// the scheme is run. Run in a build with every provider (make test), the
// providers are taken out for the test; in one without, the real refusal is
// checked too.
func TestKMSNotBuilt(t *testing.T) {
	// sigstore's fallback would run sigstore-kms-SCHEME from $PATH.
	bin := t.TempDir()
	ran := filepath.Join(t.TempDir(), "plugin-ran")
	for _, k := range kmsKnown {
		plugin := "#!/bin/sh\ntouch " + ran + "\nexit 1\n"
		if err := os.WriteFile(filepath.Join(bin, "sigstore-kms-"+strings.TrimSuffix(k.scheme, "://")), []byte(plugin), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	check := func(t *testing.T) {
		ctx := context.Background()
		for _, k := range kmsKnown {
			if _, ok := kmsProviders[k.scheme]; ok {
				continue
			}
			ref := k.scheme + "some/key"
			for name, load := range map[string]func() error{
				"LoadSigner":   func() error { _, err := LoadSigner(ctx, ref, nil); return err },
				"LoadVerifier": func() error { _, err := LoadVerifier(ctx, ref); return err },
			} {
				err := load()
				switch {
				case err == nil:
					t.Errorf("%s(%q): no error", name, ref)
				case !errors.Is(err, ErrKMSNotBuilt) || !errors.Is(err, ErrUnknownScheme):
					t.Errorf("%s(%q): %v: not ErrKMSNotBuilt and ErrUnknownScheme", name, ref, err)
				default:
					for _, want := range []string{ref, "built without the " + k.name + " provider", "make build", "build tag " + k.tag + " (or kms,"} {
						if !strings.Contains(err.Error(), want) {
							t.Errorf("%s(%q): %q does not say %q", name, ref, err, want)
						}
					}
				}
			}
		}
		if _, err := os.Stat(ran); err == nil {
			t.Error("a sigstore KMS plugin program was run")
		}
	}

	t.Run("this build", func(t *testing.T) {
		t.Logf("KMS providers built in: %v", KMSBuiltIn())
		check(t)
	})
	t.Run("none built", func(t *testing.T) {
		saved := kmsProviders
		kmsProviders = map[string]kmsProvider{}
		defer func() { kmsProviders = saved }()
		if got := KMSBuiltIn(); len(got) != 0 {
			t.Fatalf("KMSBuiltIn() = %v", got)
		}
		check(t)
	})
	// Unknown schemes stay unknown: only the four KMS schemes get the
	// "built without" message.
	if _, err := LoadSigner(context.Background(), "gcpkmsx://k", nil); !errors.Is(err, ErrUnknownScheme) || errors.Is(err, ErrKMSNotBuilt) {
		t.Errorf("gcpkmsx://: %v", err)
	}
}

// The tag each refusal names is the one on the provider's file, and every
// provider file is built in by the tag kms.
func TestKMSBuildTags(t *testing.T) {
	buildLine := regexp.MustCompile(`(?m)^//go:build (.*)$`)
	files, _ := filepath.Glob("kms_*.go")
	seen := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m := buildLine.FindSubmatch(data)
		if m == nil {
			t.Errorf("%s: no //go:build line", f)
			continue
		}
		expr := string(m[1])
		if f == "kms_sigstore.go" {
			for _, k := range kmsKnown {
				if !strings.Contains(expr, k.tag) {
					t.Errorf("%s: %q lacks %s", f, expr, k.tag)
				}
			}
			continue
		}
		found := false
		for _, k := range kmsKnown {
			if expr == "kms || "+k.tag {
				found, seen[k.scheme] = true, true
				if !strings.Contains(string(data), "ReferenceScheme") {
					t.Errorf("%s: adds no provider", f)
				}
			}
		}
		if !found {
			t.Errorf("%s: build line %q is not \"kms || kms_PROVIDER\" for a provider in kmsKnown", f, expr)
		}
	}
	for _, k := range kmsKnown {
		if !seen[k.scheme] {
			t.Errorf("%s: no file kms_*.go with //go:build kms || %s", k.scheme, k.tag)
		}
	}
	if !slices.Equal(KMSSchemes, []string{"awskms://", "gcpkms://", "azurekms://", "hashivault://"}) {
		t.Errorf("KMSSchemes = %v", KMSSchemes)
	}
}
