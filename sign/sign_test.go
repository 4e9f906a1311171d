package sign

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// keyFixture is a key pair written to disk.
type keyFixture struct {
	typ      KeyType
	name     string // NAME: NAME.key and NAME.pub exist
	priv     string
	pub      string
	keyPEM   []byte
	signer   Signer
	verifier Verifier
}

func newKey(t *testing.T, typ KeyType, dir, base string) *keyFixture {
	t.Helper()
	kp, err := GenerateKey(typ, nil)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, base)
	if err := WriteKeyPair(name, kp); err != nil {
		t.Fatal(err)
	}
	priv, pub := KeyPairPaths(name)
	s, err := LoadSigner(context.Background(), priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := LoadVerifier(context.Background(), pub)
	if err != nil {
		t.Fatal(err)
	}
	return &keyFixture{typ, name, priv, pub, kp.Private, s, v}
}

func writeRandom(t *testing.T, path string, n int, seed uint64) []byte {
	t.Helper()
	data := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// opensslVerify checks sigPath (base64, as kiln writes it) over file with
// Debian's openssl, the way the package documentation says to.
func opensslVerify(t *testing.T, typ KeyType, pub, file, sigPath string) error {
	t.Helper()
	sig, err := ReadSignature(sigPath)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "sig.bin")
	if err := os.WriteFile(bin, sig, 0o644); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if typ == Ed25519 {
		cmd = exec.Command("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", file, "-sigfile", bin)
	} else {
		cmd = exec.Command("openssl", "dgst", "-sha256", "-verify", pub, "-signature", bin, file)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return errors.New(strings.TrimSpace(string(out)))
	}
	if !strings.Contains(string(out), "Verified OK") && !strings.Contains(string(out), "Signature Verified Successfully") {
		return errors.New("openssl: " + string(out))
	}
	return nil
}

// opensslSign signs file with openssl and writes the base64 signature to
// sigPath, as kiln would.
func opensslSign(t *testing.T, typ KeyType, priv, file, sigPath string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sig.bin")
	var cmd *exec.Cmd
	if typ == Ed25519 {
		cmd = exec.Command("openssl", "pkeyutl", "-sign", "-inkey", priv, "-rawin", "-in", file, "-out", bin)
	} else {
		cmd = exec.Command("openssl", "dgst", "-sha256", "-sign", priv, "-out", bin, file)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl sign: %v: %s", err, out)
	}
	sig, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sigPath, []byte(base64.StdEncoding.EncodeToString(sig)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestKeyTypeNames(t *testing.T) {
	for _, kt := range KeyTypes {
		name := kt.String()
		if strings.HasPrefix(name, "KeyType(") {
			t.Errorf("key type %d has no name", kt)
		}
		got, err := ParseKeyType(name)
		if err != nil || got != kt {
			t.Errorf("ParseKeyType(%q) = %v, %v", name, got, err)
		}
	}
	if len(keyTypeNames) != len(KeyTypes) {
		t.Errorf("%d names for %d key types", len(keyTypeNames), len(KeyTypes))
	}
	if _, err := ParseKeyType("dsa-1024"); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("ParseKeyType(dsa-1024): %v", err)
	}
}

func TestSignVerifyEachKeyType(t *testing.T) {
	ctx := context.Background()
	for _, kt := range KeyTypes {
		t.Run(kt.String(), func(t *testing.T) {
			dir := t.TempDir()
			k := newKey(t, kt, dir, "release")
			other := newKey(t, kt, dir, "other")

			st, err := os.Stat(k.priv)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want 0600", k.priv, st.Mode().Perm())
			}
			for path, typ := range map[string]string{k.priv: "PRIVATE KEY", k.pub: "PUBLIC KEY"} {
				data, _ := os.ReadFile(path)
				if !strings.HasPrefix(string(data), "-----BEGIN "+typ+"-----\n") {
					t.Errorf("%s: not a %s PEM: %.40q", path, typ, data)
				}
			}

			file := filepath.Join(dir, "manifest.json")
			data := writeRandom(t, file, 3<<20+17, uint64(kt))
			if err := SignFile(ctx, k.signer, file); err != nil {
				t.Fatal(err)
			}
			sigPath := SignaturePath(file)
			sigText, err := os.ReadFile(sigPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasSuffix(sigText, []byte("\n")) || bytes.Count(sigText, []byte("\n")) != 1 {
				t.Errorf("signature file is not one line: %q", sigText)
			}
			if err := VerifyFile(ctx, k.verifier, file, sigPath); err != nil {
				t.Fatalf("kiln verify: %v", err)
			}
			if err := opensslVerify(t, kt, k.pub, file, sigPath); err != nil {
				t.Fatalf("openssl verify: %v", err)
			}
			// The Signer checks its own signatures too.
			if v, ok := k.signer.(Verifier); !ok {
				t.Error("signer is not a Verifier")
			} else if err := VerifyFile(ctx, v, file, sigPath); err != nil {
				t.Errorf("verify with the signer: %v", err)
			}

			// And kiln accepts what openssl signs.
			osslSig := filepath.Join(dir, "openssl.sig")
			opensslSign(t, kt, k.priv, file, osslSig)
			if err := VerifyFile(ctx, k.verifier, file, osslSig); err != nil {
				t.Errorf("kiln verify of openssl's signature: %v", err)
			}

			sig, err := ReadSignature(sigPath)
			if err != nil {
				t.Fatal(err)
			}
			writeSig := func(name string, raw []byte) string {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			}
			flipped := bytes.Clone(sig)
			flipped[len(flipped)-1] ^= 0x01
			flippedSig := writeSig("flipped.sig", flipped)
			truncSig := writeSig("trunc.sig", sig[:len(sig)-1])
			halfText := filepath.Join(dir, "half.sig")
			os.WriteFile(halfText, sigText[:len(sigText)/2], 0o644)
			garbage := filepath.Join(dir, "garbage.sig")
			os.WriteFile(garbage, []byte("this is not base64!\n"), 0o644)
			empty := filepath.Join(dir, "empty.sig")
			os.WriteFile(empty, []byte("\n"), 0o644)

			changed := filepath.Join(dir, "changed.json")
			mod := bytes.Clone(data)
			mod[len(mod)/2] ^= 0x80
			os.WriteFile(changed, mod, 0o644)

			cases := []struct {
				name    string
				v       Verifier
				file    string
				sig     string
				want    error
				message string
			}{
				{"file byte flipped", k.verifier, changed, sigPath, ErrBadSignature, "signature does not verify with key " + k.pub},
				{"signature byte flipped", k.verifier, file, flippedSig, ErrBadSignature, "signature does not verify with key " + k.pub},
				{"wrong key", other.verifier, file, sigPath, ErrBadSignature, "signature does not verify with key " + other.pub},
				{"signature truncated", k.verifier, file, truncSig, ErrMalformedSignature, "malformed signature"},
				{"signature text truncated", k.verifier, file, halfText, ErrMalformedSignature, "malformed signature"},
				{"not base64", k.verifier, file, garbage, ErrMalformedSignature, "not base64"},
				{"empty", k.verifier, file, empty, ErrMalformedSignature, "empty"},
				{"missing", k.verifier, file, filepath.Join(dir, "nope.sig"), ErrNoSignature, "signature file missing"},
			}
			for _, c := range cases {
				err := VerifyFile(ctx, c.v, c.file, c.sig)
				t.Logf("%s: %v", c.name, err)
				if !errors.Is(err, c.want) {
					t.Errorf("%s: got %v, want %v", c.name, err, c.want)
					continue
				}
				for _, other := range []error{ErrBadSignature, ErrMalformedSignature, ErrNoSignature} {
					if other != c.want && errors.Is(err, other) {
						t.Errorf("%s: %v is also %v", c.name, err, other)
					}
				}
				if !strings.Contains(err.Error(), c.message) || !strings.HasPrefix(err.Error(), "verifying "+c.file) || !strings.Contains(err.Error(), ": sign: ") {
					t.Errorf("%s: message %q, want %q", c.name, err, c.message)
				}
			}
			// openssl agrees on the ones it can read.
			for _, c := range cases[:3] {
				pub := k.pub
				if c.v == other.verifier {
					pub = other.pub
				}
				if err := opensslVerify(t, kt, pub, c.file, c.sig); err == nil {
					t.Errorf("%s: openssl accepts it", c.name)
				}
			}
		})
	}
}

func TestStreamingHash(t *testing.T) {
	k := newKey(t, ECDSAP256, t.TempDir(), "k")
	const size = 256 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	sig, err := k.signer.Sign(io.LimitReader(zeros{}, size))
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("signing %d bytes allocated %d bytes: the file is not streamed", size, alloc)
	}
	if err := k.verifier.Verify(io.LimitReader(zeros{}, size), sig); err != nil {
		t.Fatal(err)
	}
	if err := k.verifier.Verify(io.LimitReader(zeros{}, size-1), sig); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("shorter message: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestEd25519TooLarge(t *testing.T) {
	k := newKey(t, Ed25519, t.TempDir(), "k")
	if _, err := k.signer.Sign(io.LimitReader(zeros{}, MaxEd25519Message+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if _, err := k.signer.Sign(io.LimitReader(zeros{}, 1<<20)); err != nil {
		t.Fatal(err)
	}
}

func TestEncryptedKey(t *testing.T) {
	ctx := context.Background()
	for _, kt := range KeyTypes {
		t.Run(kt.String(), func(t *testing.T) {
			dir := t.TempDir()
			kp, err := GenerateKey(kt, []byte("correct horse"))
			if err != nil {
				t.Fatal(err)
			}
			if !kp.Encrypted || !bytes.HasPrefix(kp.Private, []byte("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")) {
				t.Fatalf("not an encrypted sigstore key: %.60q", kp.Private)
			}
			name := filepath.Join(dir, "k")
			if err := WriteKeyPair(name, kp); err != nil {
				t.Fatal(err)
			}
			priv, pub := KeyPairPaths(name)
			pass := func(s string) func() ([]byte, error) {
				return func() ([]byte, error) { return []byte(s), nil }
			}
			noPass := func() ([]byte, error) { return nil, nil }
			for _, c := range []struct {
				name string
				pf   func() ([]byte, error)
				want error
			}{
				{"nil func", nil, ErrPassphraseRequired},
				{"no passphrase", noPass, ErrPassphraseRequired},
				{"wrong passphrase", pass("battery staple"), ErrWrongPassphrase},
				{"empty passphrase", pass(""), ErrWrongPassphrase},
			} {
				s, err := LoadSigner(ctx, priv, c.pf)
				if !errors.Is(err, c.want) || s != nil {
					t.Errorf("%s: got %v, want %v", c.name, err, c.want)
				} else if strings.Contains(err.Error(), "BEGIN") || !strings.Contains(err.Error(), priv) {
					t.Errorf("%s: message %q", c.name, err)
				}
			}
			s, err := LoadSigner(ctx, priv, pass("correct horse"))
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, "f")
			writeRandom(t, file, 1000, 1)
			if err := SignFile(ctx, s, file); err != nil {
				t.Fatal(err)
			}
			v, err := LoadVerifier(ctx, pub)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyFile(ctx, v, file, SignaturePath(file)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestEmptyPassphraseKey(t *testing.T) {
	// cosign encrypts with an empty passphrase when COSIGN_PASSWORD="".
	kp, err := GenerateKey(ECDSAP256, []byte{})
	if err != nil {
		t.Fatal(err)
	}
	if !kp.Encrypted {
		t.Fatal("an empty passphrase should still encrypt")
	}
	p := filepath.Join(t.TempDir(), "k.key")
	os.WriteFile(p, kp.Private, 0o600)
	if _, err := LoadSigner(context.Background(), p, nil); !errors.Is(err, ErrPassphraseRequired) {
		t.Errorf("no passphrase: %v", err)
	}
	if _, err := LoadSigner(context.Background(), p, func() ([]byte, error) { return []byte{}, nil }); err != nil {
		t.Errorf("empty passphrase: %v", err)
	}
}

// Keys written by openssl: PKCS #8 encrypted, SEC 1 and PKCS #1.
func TestOpenSSLKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v: %s", args, err, out)
		}
	}
	encKey := filepath.Join(dir, "enc.pem")
	run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes-256-cbc", "-pass", "pass:hunter2", "-out", encKey)
	ecKey := filepath.Join(dir, "ec.pem")
	run("ec", "-in", encKey, "-passin", "pass:hunter2", "-out", ecKey) // SEC 1 "EC PRIVATE KEY"
	rsaKey := filepath.Join(dir, "rsa.pem")
	run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsaKey)
	rsa1 := filepath.Join(dir, "rsa1.pem")
	run("rsa", "-in", rsaKey, "-traditional", "-out", rsa1) // PKCS #1 "RSA PRIVATE KEY"
	smallRSA := filepath.Join(dir, "rsa1024.pem")
	run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", smallRSA)

	if _, err := LoadSigner(ctx, encKey, nil); !errors.Is(err, ErrPassphraseRequired) {
		t.Errorf("encrypted PKCS #8 without passphrase: %v", err)
	}
	if _, err := LoadSigner(ctx, encKey, func() ([]byte, error) { return []byte("wrong"), nil }); !errors.Is(err, ErrWrongPassphrase) {
		t.Errorf("encrypted PKCS #8, wrong passphrase: %v", err)
	}
	file := filepath.Join(dir, "f")
	writeRandom(t, file, 5000, 2)
	for _, c := range []struct {
		path string
		pf   func() ([]byte, error)
		typ  KeyType
	}{
		{encKey, func() ([]byte, error) { return []byte("hunter2"), nil }, ECDSAP256},
		{ecKey, nil, ECDSAP256},
		{rsa1, nil, RSA2048},
	} {
		s, err := LoadSigner(ctx, c.path, c.pf)
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		if err := SignFile(ctx, s, file); err != nil {
			t.Fatal(err)
		}
		pub := filepath.Join(dir, "pub.pem")
		run("pkey", "-in", c.path, "-passin", "pass:hunter2", "-pubout", "-out", pub)
		if err := opensslVerify(t, c.typ, pub, file, SignaturePath(file)); err != nil {
			t.Errorf("%s: openssl verify: %v", c.path, err)
		}
	}
	if _, err := LoadSigner(ctx, smallRSA, nil); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("1024-bit RSA: %v", err)
	}
}

func TestEnvReference(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	k := newKey(t, Ed25519, dir, "k")
	pubPEM, _ := os.ReadFile(k.pub)
	t.Setenv("KILN_TEST_SIGNING_KEY", string(k.keyPEM))
	t.Setenv("KILN_TEST_PUBLIC_KEY", string(pubPEM))
	t.Setenv("KILN_TEST_EMPTY", "")

	s, err := LoadSigner(ctx, "env://KILN_TEST_SIGNING_KEY", nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := LoadVerifier(ctx, "env://KILN_TEST_PUBLIC_KEY")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f")
	writeRandom(t, file, 100, 3)
	if err := SignFile(ctx, s, file); err != nil {
		t.Fatal(err)
	}
	if err := VerifyFile(ctx, v, file, SignaturePath(file)); err != nil {
		t.Fatal(err)
	}
	if err := VerifyFile(ctx, k.verifier, file, SignaturePath(file)); err != nil {
		t.Fatal(err)
	}

	for _, ref := range []string{"env://KILN_TEST_UNSET_VARIABLE", "env://KILN_TEST_EMPTY", "env://"} {
		if _, err := LoadSigner(ctx, ref, nil); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("LoadSigner(%s): %v", ref, err)
		}
	}
	// A key in the wrong role: the error says so and shows no key.
	if _, err := LoadVerifier(ctx, "env://KILN_TEST_SIGNING_KEY"); !errors.Is(err, ErrInvalidKey) || strings.Contains(err.Error(), "BEGIN") {
		t.Errorf("verifier from a private key: %v", err)
	}
	if _, err := LoadSigner(ctx, "env://KILN_TEST_PUBLIC_KEY", nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("signer from a public key: %v", err)
	}
	t.Setenv("KILN_TEST_SIGNING_KEY", "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
	if _, err := LoadSigner(ctx, "env://KILN_TEST_SIGNING_KEY", nil); !errors.Is(err, ErrInvalidKey) || strings.Contains(err.Error(), "bm90") {
		t.Errorf("garbage key: %v", err)
	}
}

func TestBadReferences(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, c := range []struct {
		ref  string
		want error
	}{
		{"", ErrInvalidKey},
		{filepath.Join(dir, "missing.key"), ErrInvalidKey},
		{"foo://bar", ErrUnknownScheme},
		{"file:///etc/passwd", ErrUnknownScheme},
	} {
		if _, err := LoadSigner(ctx, c.ref, nil); !errors.Is(err, c.want) {
			t.Errorf("LoadSigner(%q): %v, want %v", c.ref, err, c.want)
		}
		if _, err := LoadVerifier(ctx, c.ref); !errors.Is(err, c.want) {
			t.Errorf("LoadVerifier(%q): %v, want %v", c.ref, err, c.want)
		}
	}
	notPEM := filepath.Join(dir, "notpem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	if _, err := LoadSigner(ctx, notPEM, nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("not PEM: %v", err)
	}
}

func TestWriteKeyPairRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	kp, err := GenerateKey(ECDSAP256, nil)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "k")
	if err := WriteKeyPair(name, kp); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(name + ".key")
	kp2, _ := GenerateKey(ECDSAP256, nil)
	if err := WriteKeyPair(name, kp2); !errors.Is(err, ErrExists) {
		t.Fatalf("second write: %v", err)
	}
	after, _ := os.ReadFile(name + ".key")
	if !bytes.Equal(before, after) {
		t.Fatal("key overwritten")
	}
	// Only the .pub exists: nothing is written.
	name2 := filepath.Join(dir, "j")
	os.WriteFile(name2+".pub", []byte("x"), 0o644)
	if err := WriteKeyPair(name2, kp2); !errors.Is(err, ErrExists) {
		t.Fatalf("existing .pub: %v", err)
	}
	if _, err := os.Stat(name2 + ".key"); !os.IsNotExist(err) {
		t.Fatalf("%s.key written: %v", name2, err)
	}
}

func TestFingerprintAndAlgorithm(t *testing.T) {
	dir := t.TempDir()
	want := map[KeyType]string{ECDSAP256: "ecdsa-p256-sha256", Ed25519: "ed25519", RSA2048: "rsa-2048-pkcs1v15-sha256",
		RSA3072: "rsa-3072-pkcs1v15-sha256", RSA4096: "rsa-4096-pkcs1v15-sha256"}
	for _, kt := range KeyTypes {
		k := newKey(t, kt, dir, kt.String())
		pub, err := k.verifier.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		switch pub.(type) {
		case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
		default:
			t.Errorf("%v: public key %T", kt, pub)
		}
		alg, err := Algorithm(pub)
		if err != nil || alg != want[kt] {
			t.Errorf("%v: Algorithm = %q, %v", kt, alg, err)
		}
		fp, err := Fingerprint(pub)
		if err != nil || !strings.HasPrefix(fp, "SHA256:") || len(fp) != len("SHA256:")+43 {
			t.Errorf("%v: Fingerprint = %q, %v", kt, fp, err)
		}
		// openssl computes the same digest of the PKIX DER.
		der, err := exec.Command("openssl", "pkey", "-pubin", "-in", k.pub, "-outform", "DER").Output()
		if err != nil {
			t.Fatal(err)
		}
		c := exec.Command("openssl", "dgst", "-sha256", "-binary")
		c.Stdin = bytes.NewReader(der)
		bin, err := c.Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := "SHA256:" + base64.RawStdEncoding.EncodeToString(bin); got != fp {
			t.Errorf("%v: fingerprint %s, openssl %s", kt, fp, got)
		}
	}
}

func TestCancelledContext(t *testing.T) {
	k := newKey(t, RSA3072, t.TempDir(), "k")
	file := filepath.Join(t.TempDir(), "f")
	writeRandom(t, file, 10, 4)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := SignFile(ctx, k.signer, file); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(SignaturePath(file)); !os.IsNotExist(err) {
		t.Fatal("signature written after cancel")
	}
}

// FuzzVerify: arbitrary signature bytes never panic and are either
// malformed or bad, never accepted.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	var keys []*keyFixture
	msg := []byte("kiln manifest")
	for _, kt := range KeyTypes {
		kp, err := GenerateKey(kt, nil)
		if err != nil {
			f.Fatal(err)
		}
		name := filepath.Join(dir, kt.String())
		if err := WriteKeyPair(name, kp); err != nil {
			f.Fatal(err)
		}
		priv, pub := KeyPairPaths(name)
		s, err := LoadSigner(context.Background(), priv, nil)
		if err != nil {
			f.Fatal(err)
		}
		v, err := LoadVerifier(context.Background(), pub)
		if err != nil {
			f.Fatal(err)
		}
		sig, err := s.Sign(bytes.NewReader(msg))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(len(keys)), sig)
		keys = append(keys, &keyFixture{typ: kt, verifier: v})
	}
	f.Add(uint8(0), []byte{0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, which uint8, sig []byte) {
		k := keys[int(which)%len(keys)]
		err := k.verifier.Verify(bytes.NewReader(append(msg, 'x')), sig)
		if err == nil {
			t.Fatal("a signature over a different message verifies")
		}
		if !errors.Is(err, ErrMalformedSignature) && !errors.Is(err, ErrBadSignature) {
			t.Fatalf("unexpected error kind: %v", err)
		}
	})
}
