package secureboot

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/sign"
)

// writeKey writes a kiln key pair of type typ as dir/name.key and
// dir/name.pub and returns the private key's path.
func writeKey(t *testing.T, dir, name string, typ sign.KeyType) string {
	t.Helper()
	kp, err := sign.GenerateKey(typ, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sign.WriteKeyPair(filepath.Join(dir, name), kp); err != nil {
		t.Fatal(err)
	}
	priv, _ := sign.KeyPairPaths(filepath.Join(dir, name))
	return priv
}

func loadSigner(t *testing.T, ref string) sign.Signer {
	t.Helper()
	s, err := sign.LoadSigner(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewCertificate(t *testing.T) {
	dir := t.TempDir()
	key := writeKey(t, dir, "db", sign.RSA2048)
	s := loadSigner(t, key)
	subject, err := ParseSubject("CN=kiln db, O=Example\\, Inc.")
	if err != nil {
		t.Fatal(err)
	}
	opts := CertificateOptions{Subject: subject, NotBefore: time.Unix(1700000000, 5)}
	der, err := NewCertificate(s, opts)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := NewCertificate(s, opts)
	if !bytes.Equal(der, again) {
		t.Fatal("the same key and options gave two certificates")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("self-signature: %v", err)
	}
	if cert.Subject.String() != "CN=kiln db,O=Example\\, Inc." || cert.Issuer.String() != cert.Subject.String() {
		t.Fatalf("subject %s issuer %s", cert.Subject, cert.Issuer)
	}
	if !cert.NotBefore.Equal(time.Unix(1700000000, 0)) || !cert.NotAfter.Equal(NoExpiry) || !cert.IsCA || cert.SignatureAlgorithm != x509.SHA256WithRSA {
		t.Fatalf("validity %s..%s, CA %v, %v", cert.NotBefore, cert.NotAfter, cert.IsCA, cert.SignatureAlgorithm)
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() != 127 {
		t.Fatalf("serial %x", cert.SerialNumber)
	}
	if _, err := CheckKey(s, cert); err != nil {
		t.Fatal(err)
	}

	// Other options: another serial; days set notAfter.
	opts.Days = 30
	other, err := NewCertificate(s, opts)
	if err != nil {
		t.Fatal(err)
	}
	oc, _ := x509.ParseCertificate(other)
	if oc.SerialNumber.Cmp(cert.SerialNumber) == 0 || !oc.NotAfter.Equal(time.Unix(1700000000, 0).AddDate(0, 0, 30)) {
		t.Fatalf("days 30: serial %x notAfter %s", oc.SerialNumber, oc.NotAfter)
	}

	// openssl reads it.
	pemFile := filepath.Join(dir, "db.pem")
	os.WriteFile(pemFile, CertificatePEM(der), 0o644)
	out, err := exec.Command("openssl", "x509", "-in", pemFile, "-noout", "-subject", "-ext", "basicConstraints,keyUsage").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CA:TRUE") || !strings.Contains(string(out), "Digital Signature, Certificate Sign") {
		t.Fatalf("openssl x509: %v\n%s", err, out)
	}
	if c, err := LoadCertificate(pemFile); err != nil || !c.Equal(cert) {
		t.Fatalf("LoadCertificate: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "db.der"), der, 0o644)
	if c, err := LoadCertificate(filepath.Join(dir, "db.der")); err != nil || !c.Equal(cert) {
		t.Fatalf("LoadCertificate of DER: %v", err)
	}
}

func TestKeyRefusals(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	rsaA := writeKey(t, dir, "a", sign.RSA2048)
	rsaB := writeKey(t, dir, "b", sign.RSA2048)
	ec := writeKey(t, dir, "ec", sign.ECDSAP256)
	ed := writeKey(t, dir, "ed", sign.Ed25519)
	subject := mustSubject(t, "CN=a")
	der, err := NewCertificate(loadSigner(t, rsaA), CertificateOptions{Subject: subject})
	if err != nil {
		t.Fatal(err)
	}
	certA := filepath.Join(dir, "a.pem")
	os.WriteFile(certA, CertificatePEM(der), 0o644)

	if _, err := LoadKey(ctx, rsaA, certA, nil); err != nil {
		t.Fatal(err)
	}
	_, err = LoadKey(ctx, rsaB, certA, nil)
	if !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), rsaB) || !strings.Contains(err.Error(), certA) {
		t.Fatalf("key b with a's certificate: %v (want ErrKeyMismatch naming both files)", err)
	}
	for _, k := range []string{ec, ed} {
		_, err := LoadKey(ctx, k, certA, nil)
		if !errors.Is(err, ErrNotRSA) || !strings.Contains(err.Error(), k) || !strings.Contains(err.Error(), "UEFI firmware verifies RSA signatures only") {
			t.Fatalf("%s: %v (want ErrNotRSA naming it)", k, err)
		}
		if _, err := NewCertificate(loadSigner(t, k), CertificateOptions{Subject: subject}); !errors.Is(err, ErrNotRSA) {
			t.Fatalf("certificate for %s: %v", k, err)
		}
	}
	notCert := filepath.Join(dir, "a.pub")
	for path, want := range map[string]string{notCert: `PEM block "PUBLIC KEY" is not a certificate`, filepath.Join(dir, "none.pem"): "no such file", dir: "not a regular file"} {
		if _, err := LoadKey(ctx, rsaA, path, nil); !errors.Is(err, ErrCertificate) || !strings.Contains(err.Error(), want) {
			t.Fatalf("certificate %s: %v (want %q)", path, err, want)
		}
	}
}

func mustSubject(t *testing.T, s string) pkix.Name {
	t.Helper()
	n, err := ParseSubject(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestParseSubject(t *testing.T) {
	for in, want := range map[string]string{
		"CN=kiln db":                 "CN=kiln db",
		"/CN=kiln db/O=Example/C=DE": "CN=kiln db,O=Example,C=DE",
		"cn = x ,ou=y,ou=z":          "CN=x,OU=y+OU=z",
		"CN=a\\,b":                   "CN=a\\,b",
	} {
		n, err := ParseSubject(in)
		if err != nil || n.String() != want {
			t.Errorf("ParseSubject(%q) = %q, %v; want %q", in, n.String(), err, want)
		}
	}
	for _, bad := range []string{"", "kiln", "CN=", "XX=y", "CN=a,,O=b"} {
		if _, err := ParseSubject(bad); !errors.Is(err, ErrSubject) {
			t.Errorf("ParseSubject(%q): %v, want ErrSubject", bad, err)
		}
	}
}
