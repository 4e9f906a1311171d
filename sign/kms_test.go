//go:build kms || (kms_aws && kms_gcp && kms_azure && kms_hashivault)

package sign

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature/kms"
)

// Each KMS scheme reaches its provider's own code: a malformed reference
// is rejected by the provider with its own format message, not by kiln
// ("unknown scheme") nor by sigstore's plugin lookup ("no kms provider").
// No cloud is contacted.
func TestKMSSchemesReachProviders(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		ref, want string
	}{
		{"awskms://", "awskms://[ENDPOINT]/[ID/ALIAS/ARN]"},
		{"gcpkms://projects/p", "gcpkms://projects/[PROJECT_ID]/locations/"},
		{"azurekms://", "azurekms://[VAULT_NAME][VAULT_URL]/[KEY_NAME]"},
		{"hashivault://not/a/key", "hashivault://<key>"},
	} {
		for name, load := range map[string]func() error{
			"LoadSigner":   func() error { _, err := LoadSigner(ctx, c.ref, nil); return err },
			"LoadVerifier": func() error { _, err := LoadVerifier(ctx, c.ref); return err },
		} {
			err := load()
			var notFound *kms.ProviderNotFoundError
			switch {
			case err == nil:
				t.Errorf("%s(%q): no error", name, c.ref)
			case errors.Is(err, ErrUnknownScheme), errors.As(err, &notFound):
				t.Errorf("%s(%q): provider not reached: %v", name, c.ref, err)
			case !strings.Contains(err.Error(), c.want):
				t.Errorf("%s(%q): %v, want the provider's %q", name, c.ref, err, c.want)
			case !errors.Is(err, ErrInvalidKey):
				t.Errorf("%s(%q): %v is not ErrInvalidKey", name, c.ref, err)
			}
		}
	}
	for _, s := range KMSSchemes {
		found := false
		for _, p := range kms.SupportedProviders() {
			found = found || p == s
		}
		if !found {
			t.Errorf("%s: no provider registered (have %v)", s, kms.SupportedProviders())
		}
	}

	// A well-formed hashivault reference goes further, to the client setup.
	t.Setenv("VAULT_ADDR", "")
	t.Setenv("BAO_ADDR", "")
	if _, err := LoadSigner(ctx, "hashivault://release", nil); err == nil || !strings.Contains(err.Error(), "VAULT_ADDR or BAO_ADDR is not set") || errors.Is(err, ErrInvalidKey) {
		t.Errorf("hashivault without VAULT_ADDR: %v", err)
	}
}

// fakeVault is the part of Vault's transit engine the hashivault provider
// uses: read a key, sign a digest.
type fakeVault struct {
	key   *ecdsa.PrivateKey
	wrong atomic.Bool // sign with another key
	calls atomic.Int32
}

func (f *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.calls.Add(1)
	if r.Header.Get("X-Vault-Token") != "test-token" {
		http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
		return
	}
	reply := func(data map[string]any) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"data": data})
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/transit/keys/release":
		pub, _ := cryptoutils.MarshalPublicKeyToPEM(f.key.Public())
		reply(map[string]any{
			"latest_version": 1,
			"keys":           map[string]any{"1": map[string]any{"name": "P-256", "public_key": string(pub)}},
		})
	case (r.Method == http.MethodPut || r.Method == http.MethodPost) && r.URL.Path == "/v1/transit/sign/release/sha2-256":
		var req struct {
			Input     string `json:"input"`
			Prehashed bool   `json:"prehashed"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !req.Prehashed {
			http.Error(w, `{"errors":["bad request"]}`, http.StatusBadRequest)
			return
		}
		digest, err := base64.StdEncoding.DecodeString(req.Input)
		if err != nil || len(digest) != sha256.Size {
			http.Error(w, `{"errors":["bad input"]}`, http.StatusBadRequest)
			return
		}
		key := f.key
		if f.wrong.Load() {
			key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		sig, err := ecdsa.SignASN1(rand.Reader, key, digest)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		reply(map[string]any{"signature": "vault:v1:" + base64.StdEncoding.EncodeToString(sig)})
	default:
		http.Error(w, `{"errors":["no handler"]}`, http.StatusNotFound)
	}
}

// A KMS key end to end, against a local fake of Vault's transit API:
// SignFile asks the KMS to sign the digest, VerifyFile fetches the public
// key and checks locally, and the result verifies with the public key as a
// PEM file too.
func TestKMSHashivaultRoundTrip(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fv := &fakeVault{key: key}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	t.Setenv("VAULT_ADDR", srv.URL)
	t.Setenv("VAULT_TOKEN", "test-token")
	t.Setenv("BAO_ADDR", "")
	t.Setenv("TRANSIT_SECRET_ENGINE_PATH", "")
	t.Setenv("VAULT_KEY_PREFIX", "")

	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "manifest.json")
	writeRandom(t, file, 10000, 5)

	s, err := LoadSigner(ctx, "hashivault://release", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := SignFile(ctx, s, file); err != nil {
		t.Fatal(err)
	}
	if fv.calls.Load() == 0 {
		t.Fatal("the fake Vault was never called")
	}
	v, err := LoadVerifier(ctx, "hashivault://release")
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyFile(ctx, v, file, SignaturePath(file)); err != nil {
		t.Fatal(err)
	}
	pubPEM, _ := cryptoutils.MarshalPublicKeyToPEM(key.Public())
	pubPath := filepath.Join(dir, "vault.pub")
	os.WriteFile(pubPath, pubPEM, 0o644)
	if err := opensslVerify(t, ECDSAP256, pubPath, file, SignaturePath(file)); err != nil {
		t.Fatalf("openssl: %v", err)
	}

	// A KMS whose signatures do not match its public key: SignFile says
	// so and writes nothing.
	fv.wrong.Store(true)
	other := filepath.Join(dir, "other.json")
	writeRandom(t, other, 100, 6)
	err = SignFile(ctx, s, other)
	if err == nil || !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "hashivault://release") {
		t.Fatalf("mismatched KMS signature: %v", err)
	}
	if _, err := os.Stat(SignaturePath(other)); !os.IsNotExist(err) {
		t.Fatalf("signature written: %v", err)
	}
}
