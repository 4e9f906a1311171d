package main

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/authenticode"
	"github.com/kiln-os/kiln/sign/efivar"
	"github.com/kiln-os/kiln/sign/secureboot"
)

func newSecureBootCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "secureboot",
		Short: "UEFI Secure Boot: sign EFI binaries, make certificates and key enrollment files",
		Long: "Sign PE/EFI binaries (UKIs, kernels, boot loaders) with Authenticode, make a self-signed X.509\n" +
			"certificate for a kiln key, and make the PK, KEK and db enrollment files (see docs/secureboot.md).\n" +
			"UEFI firmware verifies RSA signatures only: keys are RSA (kiln keygen --type rsa-2048).",
	}
	c.AddCommand(newSecureBootSignCommand(g), newSecureBootCertCommand(g), newSecureBootEnrollCommand(g))
	return c
}

// secureBootError makes input kiln cannot use (a malformed PE, a signed
// one without --replace, a non-RSA key, a certificate of another key, a
// bad subject) a usage error (exit 2); the rest goes through keyError.
func secureBootError(err error) error {
	var fe *authenticode.FormatError
	if errors.As(err, &fe) {
		return usageError(err)
	}
	for _, e := range []error{authenticode.ErrSigned, secureboot.ErrNotRSA, secureboot.ErrKeyMismatch, secureboot.ErrCertificate, secureboot.ErrSubject} {
		if errors.Is(err, e) {
			if errors.Is(err, authenticode.ErrSigned) {
				err = fmt.Errorf("%w; --replace signs it anew", err)
			}
			return usageError(err)
		}
	}
	return keyError(err)
}

// regularFile checks that path names an existing regular file.
func regularFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return usageError(err)
	}
	if !st.Mode().IsRegular() {
		return usageError(fmt.Errorf("%s is not a regular file", path))
	}
	return nil
}

func newSecureBootSignCommand(g *globals) *cobra.Command {
	var key, cert, out string
	var replace bool
	c := &cobra.Command{
		Use:   "sign IN.efi --key KEYREF --cert CERT.pem -o OUT.efi [--replace]",
		Short: "Sign a PE/EFI binary with Authenticode for UEFI Secure Boot",
		Long: "Sign the PE/EFI binary IN.efi (a UKI, a kernel with an EFI stub, a boot loader) with Authenticode and\n" +
			"write OUT.efi (replaced whole, through a temporary file). KEYREF is an RSA key: a PEM file, env://VAR or\n" +
			"a KMS URI; CERT.pem (PEM or DER) carries its public key, as firmware's db lists it. A binary that is\n" +
			"already signed is refused unless --replace, which drops its signatures (e.g. Debian's, on its kernel).\n" +
			"The output is the same bytes for the same input, key and certificate.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in := args[0]
			for _, f := range []struct{ name, v string }{{"--key KEYREF", key}, {"--cert CERT.pem", cert}, {"-o OUT.efi", out}} {
				if f.v == "" {
					return usageError(fmt.Errorf("secureboot sign: %s is required", f.name))
				}
			}
			if err := regularFile(in); err != nil {
				return err
			}
			k, err := secureboot.LoadKey(cmd.Context(), key, cert, keyPassphrase)
			if err != nil {
				return secureBootError(err)
			}
			res, err := authenticode.SignFile(in, out, k.Signer, k.Cert, authenticode.Options{Replace: replace})
			if err != nil {
				return secureBootError(err)
			}
			fp, _ := sign.Fingerprint(k.Cert.PublicKey)
			replaced := subjects(res.Replaced)
			if g.json {
				return g.printJSON(map[string]any{"input": in, "output": out, "key": key, "certificate": cert,
					"subject": k.Cert.Subject.String(), "fingerprint": fp, "digest": "sha256:" + hex.EncodeToString(res.Digest),
					"size": res.Size, "replaced": replaced})
			}
			fmt.Fprintf(g.env.Stdout, "%s: signed %s with %s (%s, %s)\nAuthenticode sha256:%x\n", out, in, key, k.Cert.Subject, fp, res.Digest)
			for _, r := range replaced {
				fmt.Fprintf(g.env.Stdout, "replaced the signature of %s\n", r)
			}
			return nil
		},
	}
	c.Flags().StringVar(&key, "key", "", "RSA signing key: PEM file, env://VAR, or KMS URI")
	c.Flags().StringVar(&cert, "cert", "", "the key's X.509 certificate (PEM or DER)")
	c.Flags().StringVarP(&out, "output", "o", "", "write the signed binary here (may be IN.efi)")
	c.Flags().BoolVar(&replace, "replace", false, "drop the signatures an already signed input carries")
	return c
}

func subjects(certs []*x509.Certificate) []string {
	out := []string{}
	for _, c := range certs {
		out = append(out, c.Subject.String())
	}
	return out
}

func newSecureBootCertCommand(g *globals) *cobra.Command {
	var key, subject, out string
	var days int
	c := &cobra.Command{
		Use:   "cert --key KEYREF --subject \"CN=...\" [--days N] -o CERT.pem",
		Short: "Make a self-signed X.509 certificate for a kiln RSA key (for PK, KEK or db)",
		Long: "Make a self-signed X.509 certificate (PEM) for the RSA key KEYREF (a PEM file, env://VAR or a KMS\n" +
			"URI): a CA certificate usable as PK, KEK or db. It starts at SOURCE_DATE_EPOCH (0 when unset) and has\n" +
			"no expiry unless --days; its serial number is derived from the key, subject and validity, so the same\n" +
			"inputs give the same certificate. SUBJECT is \"CN=...,O=...\" or \"/CN=.../O=...\".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range []struct{ name, v string }{{"--key KEYREF", key}, {"--subject", subject}, {"-o CERT.pem", out}} {
				if f.v == "" {
					return usageError(fmt.Errorf("secureboot cert: %s is required", f.name))
				}
			}
			if days < 0 {
				return usageError(fmt.Errorf("secureboot cert: --days %d: want 0 (no expiry) or more", days))
			}
			name, err := secureboot.ParseSubject(subject)
			if err != nil {
				return usageError(err)
			}
			epoch, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			s, err := sign.LoadSigner(cmd.Context(), key, keyPassphrase)
			if err != nil {
				return keyError(err)
			}
			der, err := secureboot.NewCertificate(s, secureboot.CertificateOptions{Subject: name, NotBefore: epoch, Days: days})
			if err != nil {
				return secureBootError(err)
			}
			if err := secureboot.WriteCertificatePEM(out, der); err != nil {
				return usageError(err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				return err
			}
			fp, _ := sign.Fingerprint(cert.PublicKey)
			notAfter := cert.NotAfter.UTC().Format(time.RFC3339)
			if g.json {
				return g.printJSON(map[string]any{"certificate": out, "key": key, "subject": cert.Subject.String(), "serial": fmt.Sprintf("%x", cert.SerialNumber),
					"not_before": cert.NotBefore.UTC().Format(time.RFC3339), "not_after": notAfter, "fingerprint": fp})
			}
			if cert.NotAfter.Equal(secureboot.NoExpiry) {
				notAfter = "no expiry"
			}
			fmt.Fprintf(g.env.Stdout, "wrote %s: %s, serial %x, key %s (%s), valid from %s (%s)\n", out, cert.Subject, cert.SerialNumber, key, fp,
				cert.NotBefore.UTC().Format(time.RFC3339), notAfter)
			return nil
		},
	}
	c.Flags().StringVar(&key, "key", "", "RSA key: PEM file, env://VAR, or KMS URI")
	c.Flags().StringVar(&subject, "subject", "", "the certificate's subject and issuer, e.g. \"CN=Example db key,O=Example\"")
	c.Flags().IntVar(&days, "days", 0, "validity in days from SOURCE_DATE_EPOCH (0: no expiry; firmware does not check it)")
	c.Flags().StringVarP(&out, "output", "o", "", "write the PEM certificate here")
	return c
}

// efiTimeLayouts are the forms --time takes.
var efiTimeLayouts = []string{time.RFC3339, "2006-01-02 15:04:05", "2006-01-02T15:04:05"}

func parseEFITime(s string) (time.Time, error) {
	for _, l := range efiTimeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("--time %q: want RFC 3339 (2023-11-14T22:13:20Z) or \"2023-11-14 22:13:20\" (UTC)", s)
}

// loadEnrollCerts reads the certificates given with flag (each file one
// RSA certificate, none given twice, skip being those already read for
// the same variable).
func loadEnrollCerts(flag string, paths []string, skip []*x509.Certificate, skipNames []string) ([]*x509.Certificate, error) {
	seen, names := append([]*x509.Certificate(nil), skip...), append([]string(nil), skipNames...)
	var certs []*x509.Certificate
	for _, p := range paths {
		if err := singleCertificate(p); err != nil {
			return nil, err
		}
		c, err := secureboot.LoadCertificate(p)
		if err != nil {
			return nil, secureBootError(err)
		}
		if c.PublicKeyAlgorithm != x509.RSA {
			return nil, usageError(fmt.Errorf("%w: %s carries a %s key", secureboot.ErrNotRSA, p, c.PublicKeyAlgorithm))
		}
		for i, d := range seen {
			if d.Equal(c) {
				return nil, usageError(fmt.Errorf("secureboot enroll-files: %s %s is the certificate of %s (%s): each certificate once", flag, p, names[i], c.Subject))
			}
		}
		seen, names = append(seen, c), append(names, p)
		certs = append(certs, c)
	}
	return certs, nil
}

// singleCertificate refuses a PEM file holding more than one certificate
// (a bundle): LoadCertificate, like cert-to-efi-sig-list, reads only the
// first, and the others would be left out of the variable unsaid.
func singleCertificate(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil // LoadCertificate says why
	}
	n := 0
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			n++
		}
	}
	if n > 1 {
		return usageError(fmt.Errorf("%w: %s holds %d certificates: give each in a file of its own, one flag each", secureboot.ErrCertificate, path, n))
	}
	return nil
}

func newSecureBootEnrollCommand(g *globals) *cobra.Command {
	var pkKey, pkCert, kekKey, owner, at, out string
	var kekCerts, dbCerts []string
	c := &cobra.Command{
		Use:   "enroll-files --pk-key KEYREF --pk-cert PK.pem --kek-key KEYREF --kek-cert KEK.pem [--kek-cert MORE.pem...] --db-cert DB.pem [--db-cert MORE.pem...] [--owner GUID] [--time T] -o DIR",
		Short: "Make the PK, KEK and db enrollment files (.esl and signed .auth)",
		Long: "Write into DIR the EFI signature lists PK.esl, KEK.esl and db.esl and the signed authenticated variable\n" +
			"updates PK.auth (signed by PK), KEK.auth (by PK) and db.auth (by KEK), the files efitools'\n" +
			"cert-to-efi-sig-list and sign-efi-sig-list make. --db-cert may be given several times (your db key,\n" +
			"another vendor's signer): db holds one signature list per certificate, in the order given, as `cat` of\n" +
			"cert-to-efi-sig-list's outputs. So may --kek-cert: the first is --kek-key's certificate (it signs\n" +
			"db.auth), the others are enrolled in KEK after it. Each file holds one certificate. The updates carry\n" +
			"SOURCE_DATE_EPOCH (0 when unset) as their time unless --time: firmware refuses a later update of a\n" +
			"variable with an earlier time. The owner GUID defaults to one derived from the PK certificate. Enroll in\n" +
			"setup mode, PK last, e.g.\n" +
			"efi-updatevar -f db.auth db; efi-updatevar -f KEK.auth KEK; efi-updatevar -f PK.auth PK.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			first := func(l []string) string {
				if len(l) == 0 {
					return ""
				}
				return l[0]
			}
			for _, f := range []struct{ name, v string }{{"--pk-key", pkKey}, {"--pk-cert", pkCert}, {"--kek-key", kekKey}, {"--kek-cert", first(kekCerts)}, {"--db-cert", first(dbCerts)}, {"-o DIR", out}} {
				if f.v == "" {
					return usageError(fmt.Errorf("secureboot enroll-files: %s is required", f.name))
				}
			}
			ts, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			if at != "" {
				if ts, err = parseEFITime(at); err != nil {
					return usageError(err)
				}
			}
			for _, p := range []string{pkCert, kekCerts[0]} {
				if err := singleCertificate(p); err != nil {
					return err
				}
			}
			pk, err := secureboot.LoadKey(cmd.Context(), pkKey, pkCert, keyPassphrase)
			if err != nil {
				return secureBootError(err)
			}
			kek, err := secureboot.LoadKey(cmd.Context(), kekKey, kekCerts[0], keyPassphrase)
			if err != nil {
				return secureBootError(err)
			}
			moreKEK, err := loadEnrollCerts("--kek-cert", kekCerts[1:], []*x509.Certificate{kek.Cert}, kekCerts[:1])
			if err != nil {
				return err
			}
			db, err := loadEnrollCerts("--db-cert", dbCerts, nil, nil)
			if err != nil {
				return err
			}
			ownerGUID := efivar.DerivedGUID(pk.Cert.Raw)
			if owner != "" {
				if ownerGUID, err = efivar.ParseGUID(owner); err != nil {
					return usageError(fmt.Errorf("--owner: %w", err))
				}
			}
			e := &efivar.Enrollment{PK: pk, KEK: kek, MoreKEK: moreKEK, DB: db, Owner: ownerGUID, Time: ts}
			files, err := e.Files()
			if err != nil {
				return secureBootError(err)
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return usageError(fmt.Errorf("secureboot enroll-files: %w", err))
			}
			if err := efivar.WriteFiles(out, files); err != nil {
				return usageError(err)
			}
			kekSubjects := subjects(append([]*x509.Certificate{kek.Cert}, moreKEK...))
			dbSubjects := subjects(db)
			if g.json {
				list := []map[string]any{}
				for _, f := range files {
					list = append(list, map[string]any{"file": filepath.Join(out, f.Name), "size": len(f.Data)})
				}
				return g.printJSON(map[string]any{"directory": out, "owner": ownerGUID.String(), "time": ts.Format(time.RFC3339), "files": list,
					"pk": subjects([]*x509.Certificate{pk.Cert}), "kek": kekSubjects, "db": dbSubjects})
			}
			fmt.Fprintf(g.env.Stdout, "wrote %s: owner %s, time %s\n", out, ownerGUID, ts.Format(time.RFC3339))
			for _, f := range files {
				fmt.Fprintf(g.env.Stdout, "  %-9s %5d bytes\n", f.Name, len(f.Data))
			}
			if len(kekSubjects) > 1 {
				fmt.Fprintf(g.env.Stdout, "KEK: %d certificates: %s\n", len(kekSubjects), strings.Join(kekSubjects, "; "))
			}
			if len(dbSubjects) > 1 {
				fmt.Fprintf(g.env.Stdout, "db: %d certificates: %s\n", len(dbSubjects), strings.Join(dbSubjects, "; "))
			}
			return nil
		},
	}
	c.Flags().StringVar(&pkKey, "pk-key", "", "PK's RSA key (signs PK.auth and KEK.auth): PEM file, env://VAR, or KMS URI")
	c.Flags().StringVar(&pkCert, "pk-cert", "", "PK's certificate")
	c.Flags().StringVar(&kekKey, "kek-key", "", "KEK's RSA key (signs db.auth)")
	c.Flags().StringArrayVar(&kekCerts, "kek-cert", nil, "KEK's certificate; repeat to enroll more KEK certificates after it")
	c.Flags().StringArrayVar(&dbCerts, "db-cert", nil, "a db certificate (one binaries are signed with); repeat for several, in order")
	c.Flags().StringVar(&owner, "owner", "", "signature owner GUID (default: derived from the PK certificate)")
	c.Flags().StringVar(&at, "time", "", "the updates' timestamp, UTC (default: SOURCE_DATE_EPOCH)")
	c.Flags().StringVarP(&out, "output", "o", "", "write the six files into this directory (made if missing)")
	return c
}
