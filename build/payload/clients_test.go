package payload

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
)

func TestClientNames(t *testing.T) {
	if len(Clients) != len(clients) {
		t.Fatalf("%d clients listed, %d defined", len(Clients), len(clients))
	}
	for _, c := range Clients {
		if strings.HasPrefix(c.String(), "Client(") || c.Description() == c.String() {
			t.Errorf("client %d has no name or description", c)
		}
		if got, err := ParseClient(c.String()); err != nil || got != c {
			t.Errorf("ParseClient(%q) = %v, %v", c, got, err)
		}
	}
	if _, err := ParseClient("flatcar"); err == nil {
		t.Error("ParseClient(flatcar) succeeded")
	}
	for _, v := range []VerityTree{VerityTreeInPayload, VerityTreeByClient} {
		if got, err := ParseVerityTree(v.String()); err != nil || got != v {
			t.Errorf("ParseVerityTree(%q) = %v, %v", v, got, err)
		}
	}
	if Clients[0] != ClientAndroid12 || Compression(0) != CompressionXZ || VerityTree(0) != VerityTreeInPayload {
		t.Error("the zero values are not the android-12.1-compatible defaults")
	}
}

// TestClientsOfPayloads: which families apply what the planner makes, as
// Inspect reports it, for each option that changes the answer.
func TestClientsOfPayloads(t *testing.T) {
	oldFiles, newFiles := releases(1)
	oldImg, oldMap := buildImage(oldFiles, 8<<20, 1)
	newImg, newMap := buildImage(newFiles, 8<<20, 2)
	dataBlocks := uint64(len(newImg)/BlockSize) - 40
	oldImg, _ = withTree(t, oldImg, dataBlocks)
	newImg, v := withTree(t, newImg, dataBlocks)
	rsa3072, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	all := "android-12 chromiumos android-zstd kiln"
	for _, tc := range []struct {
		name  string
		delta bool
		comp  Compression
		tree  VerityTree
		key   *rsa.PrivateKey
		want  string // the families that apply it
	}{
		{"full xz", false, CompressionXZ, VerityTreeInPayload, testKey(), all},
		{"delta xz", true, CompressionXZ, VerityTreeInPayload, testKey(), all},
		{"full none", false, CompressionNone, VerityTreeInPayload, testKey(), all},
		{"full bz2", false, CompressionBZ2, VerityTreeInPayload, testKey(), all},
		{"full zstd", false, CompressionZstd, VerityTreeInPayload, testKey(), "android-zstd kiln"},
		{"delta auto", true, CompressionAuto, VerityTreeInPayload, testKey(), "android-zstd kiln"},
		{"delta tree by client", true, CompressionXZ, VerityTreeByClient, testKey(), "android-12 android-zstd kiln"},
		{"delta rsa-3072", true, CompressionXZ, VerityTreeInPayload, rsa3072, "kiln"},
	} {
		cfg := Config{New: Image{R: bytes.NewReader(newImg), Size: int64(len(newImg)), Map: newMap}, NewVersion: "2",
			Verity: v, VerityTree: tc.tree, Compression: tc.comp}
		if tc.delta {
			cfg.Old, cfg.OldVersion = &Image{R: bytes.NewReader(oldImg), Size: int64(len(oldImg)), Map: oldMap}, "1"
		}
		plan := mustPlan(t, cfg)
		data := mustWrite(t, plan, RSASigner{tc.key})
		plan.Close()
		p, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range Inspect(t.Context(), p, nil).Clients {
			if c.Applies != (c.Why == "") {
				t.Errorf("%s: %s applies=%v why %q", tc.name, c.Client, c.Applies, c.Why)
			}
			if c.Applies {
				got = append(got, c.Client)
			}
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s: applied by %q, want %q", tc.name, got, tc.want)
		}
		// What CheckConfig says before planning agrees (the key aside).
		for _, c := range Clients {
			cfgOK := c.CheckConfig(&cfg) == nil
			if applies := strings.Contains(" "+tc.want+" ", " "+c.String()+" "); tc.key == testKey() && cfgOK != applies {
				t.Errorf("%s: CheckConfig(%v) ok=%v, Check ok=%v", tc.name, c, cfgOK, applies)
			}
		}
	}
}

func TestClientCheckKey(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	r4096, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range Clients {
		wantAny := c == ClientKiln
		if err := c.CheckKey(&testKey().PublicKey); err != nil {
			t.Errorf("%v refuses RSA-2048: %v", c, err)
		}
		for name, pub := range map[string]any{"ecdsa": &ec.PublicKey, "ed25519": edPub, "rsa-4096": &r4096.PublicKey} {
			err := c.CheckKey(pub)
			if (err == nil) != wantAny {
				t.Errorf("%v, %s key: %v", c, name, err)
			}
			if err != nil && !strings.Contains(err.Error(), "RSA-2048") {
				t.Errorf("%v, %s key: message %q does not say what it needs", c, name, err)
			}
		}
	}
}
