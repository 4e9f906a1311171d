package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/sign"
)

// passphraseEnv holds the passphrase of an encrypted private key.
const passphraseEnv = "KILN_KEY_PASSWORD"

// keyPassphrase reads the key passphrase from the environment: nil when the
// variable is unset, so a plain key needs nothing and an encrypted one fails
// with a clear error.
func keyPassphrase() ([]byte, error) {
	if pw, ok := os.LookupEnv(passphraseEnv); ok {
		return []byte(pw), nil
	}
	return nil, nil
}

func newKeygenCommand(g *globals) *cobra.Command {
	var typ, out string
	names := make([]string, len(sign.KeyTypes))
	for i, t := range sign.KeyTypes {
		names[i] = t.String()
	}
	c := &cobra.Command{
		Use:   "keygen [--type " + strings.Join(names, "|") + "] -o NAME",
		Short: "Create a signing key pair: NAME.key (private) and NAME.pub (public)",
		Long: "Create a signing key pair: NAME.key (PKCS #8 PEM, mode 0600) and NAME.pub (PKIX PEM).\n" +
			"When " + passphraseEnv + " is set (even to an empty string), NAME.key is encrypted with it\n" +
			"in cosign's format (\"ENCRYPTED SIGSTORE PRIVATE KEY\"). Existing files are never overwritten.\n" +
			"Payload keys for update_engine clients are rsa-2048 (the 256-byte signatures they check).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError(errors.New("keygen: -o NAME is required"))
			}
			t, err := sign.ParseKeyType(typ)
			if err != nil {
				return usageError(err)
			}
			privPath, pubPath := sign.KeyPairPaths(out)
			for _, p := range []string{privPath, pubPath} {
				if _, err := os.Lstat(p); err == nil {
					return usageError(fmt.Errorf("%w: %s (refusing to overwrite a key)", sign.ErrExists, p))
				}
			}
			pw, _ := keyPassphrase()
			kp, err := sign.GenerateKey(t, pw)
			if err != nil {
				return err
			}
			if err := sign.WriteKeyPair(out, kp); err != nil {
				if errors.Is(err, sign.ErrExists) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
					return usageError(err)
				}
				return err
			}
			v, err := sign.LoadVerifier(cmd.Context(), pubPath)
			if err != nil {
				return err
			}
			pub, err := v.PublicKey()
			if err != nil {
				return err
			}
			fp, err := sign.Fingerprint(pub)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{
					"type":        t.String(),
					"private_key": privPath,
					"public_key":  pubPath,
					"encrypted":   kp.Encrypted,
					"fingerprint": fp,
				})
			}
			enc := "not encrypted (set " + passphraseEnv + " to encrypt)"
			if kp.Encrypted {
				enc = "encrypted with " + passphraseEnv
			}
			fmt.Fprintf(g.env.Stdout, "wrote %s (%s, %s) and %s\nfingerprint %s\n", privPath, t, enc, pubPath, fp)
			return nil
		},
	}
	c.Flags().StringVar(&typ, "type", sign.RSA2048.String(), "key type: "+strings.Join(names, ", ")+"; rsa-2048, the default, is what update_engine's payload clients and UEFI firmware verify, so one key signs releases, payloads and Secure Boot binaries")
	c.Flags().StringVarP(&out, "output", "o", "", "write NAME.key and NAME.pub")
	return c
}

func newSignCommand(g *globals) *cobra.Command {
	var key string
	c := &cobra.Command{
		Use:   "sign --key KEYREF FILE",
		Short: "Sign a file: writes FILE.sig (base64 signature over the file)",
		Long: "Sign a file and write FILE.sig: the base64 signature (ECDSA or RSA PKCS #1 v1.5 over the\n" +
			"file's SHA-256, or pure Ed25519 over the file).\n\n" +
			"KEYREF is a PEM private key file, env://VAR (the PEM in an environment variable), or a KMS\n" +
			"URI (awskms://, gcpkms://, azurekms://, hashivault://). An encrypted key is decrypted with\n" +
			passphraseEnv + ".",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usageError(errors.New("sign: --key KEYREF is required"))
			}
			file := args[0]
			if st, err := os.Stat(file); err != nil {
				return usageError(err)
			} else if !st.Mode().IsRegular() {
				return usageError(fmt.Errorf("%s is not a regular file", file))
			}
			s, err := sign.LoadSigner(cmd.Context(), key, keyPassphrase)
			if err != nil {
				return keyError(err)
			}
			pub, err := s.PublicKey()
			if err != nil {
				return err
			}
			fp, err := sign.Fingerprint(pub)
			if err != nil {
				return err
			}
			alg, err := sign.Algorithm(pub)
			if err != nil {
				return err
			}
			sigPath := sign.SignaturePath(file)
			g.logger().Debug("signing", "file", file, "key", key, "fingerprint", fp, "algorithm", alg)
			if err := sign.SignFile(cmd.Context(), s, file); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]string{
					"file":        file,
					"signature":   sigPath,
					"key":         key,
					"fingerprint": fp,
					"algorithm":   alg,
				})
			}
			fmt.Fprintf(g.env.Stdout, "%s: signed %s with %s (%s, %s)\n", sigPath, file, key, alg, fp)
			return nil
		},
	}
	c.Flags().StringVar(&key, "key", "", "signing key: PEM file, env://VAR, or KMS URI")
	return c
}

// keyError makes a key the user named but kiln cannot use a usage error
// (exit 2); KMS and I/O failures stay failures (exit 1).
func keyError(err error) error {
	for _, e := range []error{sign.ErrPassphraseRequired, sign.ErrWrongPassphrase, sign.ErrInvalidKey, sign.ErrUnsupportedKey, sign.ErrUnknownScheme} {
		if errors.Is(err, e) {
			if errors.Is(err, sign.ErrPassphraseRequired) {
				err = fmt.Errorf("%w (set %s)", err, passphraseEnv)
			}
			return usageError(err)
		}
	}
	return err
}
