package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/sign"
)

// runSignCmd runs keygen or sign in-process under a root like
// newRootCommand's and returns what Run would: output and exit code.
func runSignCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	g := &globals{env: Env{Args: args, Stdin: strings.NewReader(""), Stdout: &o, Stderr: &e}}
	root := &cobra.Command{Use: "kiln", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().BoolVar(&g.json, "json", false, "")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &cobraUsage{err} })
	root.AddCommand(newKeygenCommand(g), newSignCommand(g))
	wrapArgs(root)
	root.SetArgs(args)
	root.SetOut(&o)
	root.SetErr(&e)
	err := root.ExecuteContext(context.Background())
	if err == nil {
		return o.String(), e.String(), exitOK
	}
	e.WriteString("kiln: " + err.Error() + "\n")
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return o.String(), e.String(), ee.code
	case isCobraUsage(err):
		return o.String(), e.String(), exitUsage
	}
	return o.String(), e.String(), exitFailure
}

// unsetPassphrase unsets KILN_KEY_PASSWORD for the test (t.Setenv restores
// it afterwards).
func unsetPassphrase(t *testing.T) {
	t.Helper()
	t.Setenv(passphraseEnv, "")
	os.Unsetenv(passphraseEnv)
}

func opensslVerifies(t *testing.T, typ, pub, file string) bool {
	t.Helper()
	text, err := os.ReadFile(file + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(text)))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "sig.bin")
	os.WriteFile(bin, raw, 0o644)
	var cmd *exec.Cmd
	if typ == "ed25519" {
		cmd = exec.Command("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", file, "-sigfile", bin)
	} else {
		cmd = exec.Command("openssl", "dgst", "-sha256", "-verify", pub, "-signature", bin, file)
	}
	return cmd.Run() == nil
}

func TestKeygenSignEachType(t *testing.T) {
	unsetPassphrase(t)
	ctx := context.Background()
	for _, typ := range []string{"ecdsa-p256", "ed25519", "rsa-3072"} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "release")
			out, e, code := runSignCmd(t, "keygen", "--type", typ, "-o", name)
			if code != 0 {
				t.Fatalf("keygen: %d %s", code, e)
			}
			if !strings.Contains(out, name+".key") || !strings.Contains(out, "SHA256:") {
				t.Errorf("keygen output: %q", out)
			}
			st, err := os.Stat(name + ".key")
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("key mode %v", st.Mode().Perm())
			}
			keyPEM, _ := os.ReadFile(name + ".key")
			if !bytes.HasPrefix(keyPEM, []byte("-----BEGIN PRIVATE KEY-----")) {
				t.Errorf("key file: %.40q", keyPEM)
			}

			file := filepath.Join(dir, "manifest.json")
			os.WriteFile(file, []byte(`{"name":"demo","version":"1.0.0"}`+"\n"), 0o644)
			out, e, code = runSignCmd(t, "sign", "--json", "--key", name+".key", file)
			if code != 0 {
				t.Fatalf("sign: %d %s", code, e)
			}
			var res map[string]string
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("sign --json: %v: %q", err, out)
			}
			if res["signature"] != file+".sig" || !strings.HasPrefix(res["fingerprint"], "SHA256:") || res["algorithm"] == "" {
				t.Errorf("sign --json: %v", res)
			}
			if strings.Contains(out+e, string(keyPEM[30:60])) {
				t.Error("private key material in the output")
			}

			v, err := sign.LoadVerifier(ctx, name+".pub")
			if err != nil {
				t.Fatal(err)
			}
			if err := sign.VerifyFile(ctx, v, file, file+".sig"); err != nil {
				t.Fatalf("kiln verify: %v", err)
			}
			if !opensslVerifies(t, typ, name+".pub", file) {
				t.Fatal("openssl does not verify the signature")
			}

			// Tampering: the file, then the signature.
			orig, _ := os.ReadFile(file)
			changed := bytes.Clone(orig)
			changed[3] ^= 0x20
			os.WriteFile(file, changed, 0o644)
			if err := sign.VerifyFile(ctx, v, file, file+".sig"); !errors.Is(err, sign.ErrBadSignature) {
				t.Errorf("changed file: %v", err)
			}
			if opensslVerifies(t, typ, name+".pub", file) {
				t.Error("openssl verifies a changed file")
			}
			os.WriteFile(file, orig, 0o644)
			sigText, _ := os.ReadFile(file + ".sig")
			os.WriteFile(file+".sig", sigText[:len(sigText)-9], 0o644)
			if err := sign.VerifyFile(ctx, v, file, file+".sig"); !errors.Is(err, sign.ErrMalformedSignature) {
				t.Errorf("truncated signature: %v", err)
			}

			// keygen never overwrites.
			before, _ := os.ReadFile(name + ".key")
			if _, e, code := runSignCmd(t, "keygen", "--type", typ, "-o", name); code != exitUsage || !strings.Contains(e, "refusing to overwrite") {
				t.Errorf("keygen over existing key: %d %s", code, e)
			}
			if after, _ := os.ReadFile(name + ".key"); !bytes.Equal(before, after) {
				t.Error("key overwritten")
			}
		})
	}
}

func TestSignEncryptedKey(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "k")
	t.Setenv(passphraseEnv, "s3cret passphrase")
	out, e, code := runSignCmd(t, "keygen", "--json", "-o", name)
	if code != 0 {
		t.Fatalf("keygen: %d %s", code, e)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil || res["encrypted"] != true || res["type"] != "rsa-2048" {
		t.Fatalf("keygen --json: %v %q", err, out)
	}
	keyPEM, _ := os.ReadFile(name + ".key")
	if !bytes.HasPrefix(keyPEM, []byte("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")) {
		t.Fatalf("key file: %.50q", keyPEM)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("payload"), 0o644)

	unsetPassphrase(t)
	_, e, code = runSignCmd(t, "sign", "--key", name+".key", file)
	if code != exitUsage || !strings.Contains(e, "encrypted") || !strings.Contains(e, passphraseEnv) {
		t.Errorf("no passphrase: %d %s", code, e)
	}
	t.Setenv(passphraseEnv, "wrong")
	_, e, code = runSignCmd(t, "sign", "--key", name+".key", file)
	if code != exitUsage || !strings.Contains(e, "wrong passphrase") {
		t.Errorf("wrong passphrase: %d %s", code, e)
	}
	if _, err := os.Stat(file + ".sig"); !os.IsNotExist(err) {
		t.Fatal("signature written without the key")
	}
	t.Setenv(passphraseEnv, "s3cret passphrase")
	if _, e, code := runSignCmd(t, "sign", "--key", name+".key", file); code != 0 {
		t.Fatalf("sign with passphrase: %d %s", code, e)
	}
	if !opensslVerifies(t, "ecdsa-p256", name+".pub", file) {
		t.Fatal("openssl does not verify")
	}
}

func TestSignEnvReference(t *testing.T) {
	unsetPassphrase(t)
	dir := t.TempDir()
	name := filepath.Join(dir, "k")
	if _, e, code := runSignCmd(t, "keygen", "--type", "ed25519", "-o", name); code != 0 {
		t.Fatalf("keygen: %d %s", code, e)
	}
	keyPEM, _ := os.ReadFile(name + ".key")
	t.Setenv("KILN_TEST_SIGNING_KEY", string(keyPEM))
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("payload"), 0o644)
	out, e, code := runSignCmd(t, "sign", "--key", "env://KILN_TEST_SIGNING_KEY", file)
	if code != 0 {
		t.Fatalf("sign: %d %s", code, e)
	}
	if !strings.Contains(out, "env://KILN_TEST_SIGNING_KEY") || strings.Contains(out+e, "PRIVATE KEY") {
		t.Errorf("output: %q %q", out, e)
	}
	if !opensslVerifies(t, "ed25519", name+".pub", file) {
		t.Fatal("openssl does not verify")
	}
}

func TestSignCommandErrors(t *testing.T) {
	unsetPassphrase(t)
	dir := t.TempDir()
	name := filepath.Join(dir, "k")
	if _, e, code := runSignCmd(t, "keygen", "-o", name); code != 0 {
		t.Fatalf("keygen: %d %s", code, e)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("x"), 0o644)
	t.Setenv("VAULT_ADDR", "")
	t.Setenv("BAO_ADDR", "")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"keygen"}, exitUsage, "-o NAME is required"},
		{[]string{"keygen", "--type", "dsa", "-o", filepath.Join(dir, "x")}, exitUsage, "unsupported key"},
		{[]string{"keygen", "-o", filepath.Join(dir, "nodir", "x")}, exitUsage, "no such file"},
		{[]string{"keygen", "extra", "-o", filepath.Join(dir, "y")}, exitUsage, ""},
		{[]string{"sign", file}, exitUsage, "--key"},
		{[]string{"sign", "--key", name + ".key"}, exitUsage, ""},
		{[]string{"sign", "--key", name + ".key", filepath.Join(dir, "missing")}, exitUsage, "no such file"},
		{[]string{"sign", "--key", name + ".key", dir}, exitUsage, "not a regular file"},
		{[]string{"sign", "--key", name + ".pub", file}, exitUsage, "public key"},
		{[]string{"sign", "--key", filepath.Join(dir, "nokey"), file}, exitUsage, "no such file"},
		{[]string{"sign", "--key", "foo://bar", file}, exitUsage, "unknown key reference scheme"},
		{[]string{"sign", "--key", "env://KILN_TEST_NOT_SET", file}, exitUsage, "not set"},
		{[]string{"sign", "--key", "hashivault://release", file}, exitFailure, "VAULT_ADDR"},
		{[]string{"sign", "--key", "awskms://", file}, exitUsage, "awskms://[ENDPOINT]"},
		{[]string{"sign", "--nope", file}, exitUsage, ""},
	}
	for _, c := range cases {
		_, e, code := runSignCmd(t, c.args...)
		if code != c.code || !strings.Contains(e, c.want) {
			t.Errorf("kiln %v: exit %d %q, want %d %q", c.args, code, e, c.code, c.want)
		}
	}
	for _, p := range []string{filepath.Join(dir, "x.key"), filepath.Join(dir, "y.key"), file + ".sig"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s written by a failed command", p)
		}
	}
}
