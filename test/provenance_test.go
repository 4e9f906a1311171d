package test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-os/kiln/build/provenance"
	"github.com/kiln-os/kiln/sign"
)

// TestProvenanceEnvelope: the DSSE envelope kiln signs is checked by
// openssl over the PAE bytes (the DSSE spec's encoding, its own example
// reproduced), for every key type; it is the same twice; Verify reads it
// back, and refuses a changed payload and another key.
func TestProvenanceEnvelope(t *testing.T) {
	if got := string(provenance.PAE("http://example.com/HelloWorld", []byte("hello world"))); got != "DSSEv1 29 http://example.com/HelloWorld 11 hello world" {
		t.Errorf("PAE: %q", got)
	}
	dir := t.TempDir()
	st := &provenance.Statement{
		Type:          provenance.StatementType,
		Subject:       []provenance.ResourceDescriptor{{Name: "disk.img", Digest: map[string]string{"sha256": "00ff"}}},
		PredicateType: provenance.PredicateType,
		Predicate: provenance.Provenance{
			BuildDefinition: provenance.BuildDefinition{BuildType: provenance.BuildType,
				ExternalParameters: provenance.ExternalParameters{Recipe: "demo.yaml", Set: []string{"version=2.0.0"}},
				InternalParameters: provenance.InternalParameters{SourceDateEpoch: 1700000000}},
			RunDetails: provenance.RunDetails{Builder: provenance.Builder{ID: provenance.BuilderID, Version: map[string]string{"kiln": "test"}}},
		},
	}
	ctx := context.Background()
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", filepath.Join(dir, "other"))
	other, err := sign.LoadVerifier(ctx, filepath.Join(dir, "other.pub"))
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"rsa-2048", "ecdsa-p256", "ed25519"} {
		key := filepath.Join(dir, typ)
		mustRun(t, kiln, "keygen", "--type", typ, "-o", key)
		s, err := sign.LoadSigner(ctx, key+".key", nil)
		if err != nil {
			t.Fatal(err)
		}
		env, err := provenance.Sign(st, s)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := provenance.Sign(st, s)
		if !bytes.Equal(env, again) {
			t.Errorf("%s: two envelopes of one statement differ", typ)
		}
		var e provenance.Envelope
		if err := json.Unmarshal(env, &e); err != nil {
			t.Fatal(err)
		}
		body, _ := base64.StdEncoding.DecodeString(e.Payload)
		sig, _ := base64.StdEncoding.DecodeString(e.Signatures[0].Sig)
		pae, sigFile := filepath.Join(dir, typ+".pae"), filepath.Join(dir, typ+".sig")
		os.WriteFile(pae, provenance.PAE(e.PayloadType, body), 0o644)
		os.WriteFile(sigFile, sig, 0o644)
		if typ == "ed25519" {
			mustRun(t, "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", key+".pub", "-rawin", "-in", pae, "-sigfile", sigFile)
		} else {
			mustRun(t, "openssl", "dgst", "-sha256", "-verify", key+".pub", "-signature", sigFile, pae)
		}
		v, err := sign.LoadVerifier(ctx, key+".pub")
		if err != nil {
			t.Fatal(err)
		}
		got, err := provenance.Verify(bytes.NewReader(env), v)
		if err != nil || got.Predicate.BuildDefinition.ExternalParameters.Recipe != "demo.yaml" {
			t.Errorf("%s: Verify: %+v, %v", typ, got, err)
		}
		if _, err := provenance.Verify(bytes.NewReader(env), other); err == nil {
			t.Errorf("%s: verified with another key", typ)
		}
		e.Payload = base64.StdEncoding.EncodeToString(bytes.Replace(body, []byte("demo.yaml"), []byte("evil.yaml"), 1))
		changed, _ := json.Marshal(e)
		if _, err := provenance.Verify(bytes.NewReader(changed), v); err == nil {
			t.Errorf("%s: a changed payload verifies", typ)
		}
	}
}
