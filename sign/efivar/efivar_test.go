package efivar

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/internal/pkcs7"
	"github.com/kiln-os/kiln/sign/secureboot"
)

var (
	keysOnce             sync.Once
	pkKey, kekKey, dbKey *secureboot.Key
)

func keys(t testing.TB) (pk, kek, db *secureboot.Key) {
	keysOnce.Do(func() {
		pkKey, kekKey, dbKey = newKey(t, "kiln test PK"), newKey(t, "kiln test KEK"), newKey(t, "kiln test db")
	})
	return pkKey, kekKey, dbKey
}

func newKey(t testing.TB, cn string) *secureboot.Key {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.NewSigner(priv, cn)
	if err != nil {
		t.Fatal(err)
	}
	subject, _ := secureboot.ParseSubject("CN=" + cn)
	der, err := secureboot.NewCertificate(s, secureboot.CertificateOptions{Subject: subject})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &secureboot.Key{Signer: s, Cert: cert}
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// TestGUID: the byte order of the UEFI specification (EFI_CERT_X509_GUID
// as firmware and efitools store it), and parse/format round trips.
func TestGUID(t *testing.T) {
	if want := unhex("a159c0a5 e494 a74a 87b5 ab155c2bf072"); !bytes.Equal(CertX509[:], want) {
		t.Fatalf("EFI_CERT_X509_GUID bytes %x, want %x", CertX509[:], want)
	}
	for _, s := range []string{"8be4df61-93ca-11d2-aa0d-00e098032b8c", "{D719B2CB-3D3A-4596-A3BC-DAD00E67656F}"} {
		g, err := ParseGUID(s)
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.ToLower(strings.Trim(s, "{}")); g.String() != want {
			t.Fatalf("%s formats as %s", s, g)
		}
	}
	for _, bad := range []string{"", "8be4df61-93ca-11d2-aa0d-00e098032b8", "8be4df61x93ca-11d2-aa0d-00e098032b8c", "8be4df61-93ca-11d2-aa0d-00e098032bxx"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) succeeded", bad)
		}
	}
	g := DerivedGUID([]byte("x"))
	if g != DerivedGUID([]byte("x")) || g == DerivedGUID([]byte("y")) || g.String()[14] != '8' {
		t.Fatalf("DerivedGUID: %s", g)
	}
}

func TestAttributesString(t *testing.T) {
	if got := SecureBootAttributes.String(); got != "NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS" {
		t.Fatal(got)
	}
	if got := Attributes(0x100 | 1).String(); got != "NV|0x100" {
		t.Fatal(got)
	}
}

// TestLayouts: the EFI_SIGNATURE_LIST, EFI_TIME and signed payload bytes,
// field by field.
func TestLayouts(t *testing.T) {
	owner := MustParseGUID("01234567-89ab-cdef-0123-456789abcdef")
	cert := []byte("DER certificate")
	want := unhex("a159c0a5e494a74a87b5ab155c2bf072" + // SignatureType
		"3b000000" + "00000000" + "1f000000" + // ListSize 28+16+15, HeaderSize, SignatureSize 16+15
		"67452301ab89efcd0123456789abcdef") // SignatureOwner
	want = append(want, cert...)
	esl := X509SignatureList(cert, owner)
	if !bytes.Equal(esl, want) {
		t.Fatalf("signature list\n%x\nwant\n%x", esl, want)
	}
	lists, err := ParseSignatureLists(append(esl, esl...))
	if err != nil || len(lists) != 2 || lists[1].Type != CertX509 || len(lists[1].Signatures) != 1 ||
		lists[1].Signatures[0].Owner != owner || !bytes.Equal(lists[1].Signatures[0].Data, cert) {
		t.Fatalf("ParseSignatureLists: %+v, %v", lists, err)
	}

	ts := time.Date(2023, 11, 14, 22, 13, 20, 999, time.FixedZone("X", 3600))
	got, err := EFITime(ts)
	if want := unhex("e7070b0e150d1400 00000000 0000 00 00"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("EFI_TIME %x (%v), want %x (UTC, no nanoseconds)", got, err, want)
	}
	if _, err := EFITime(time.Date(1899, 1, 1, 0, 0, 0, 0, time.UTC)); err == nil {
		t.Fatal("EFI_TIME of 1899")
	}

	payload, err := SignedPayload(DB, ts, []byte("LIST"))
	want = unhex("64006200" + "cbb219d73a3d9645a3bcdad00e67656f" + "27000000" + "e7070b0e150d140000000000000000 00")
	want = append(want, "LIST"...)
	if err != nil || !bytes.Equal(payload, want) {
		t.Fatalf("signed payload\n%x\nwant\n%x", payload, want)
	}
}

func TestParseSignatureListsMalformed(t *testing.T) {
	esl := X509SignatureList([]byte("cert"), GUID{})
	for name, b := range map[string][]byte{
		"short header":        esl[:20],
		"list size too large": append(append([]byte(nil), esl[:16]...), append(unhex("ff000000"), esl[20:]...)...),
		"signature size 0":    append(append([]byte(nil), esl[:24]...), append(unhex("00000000"), esl[28:]...)...),
		"trailing bytes":      append(append([]byte(nil), esl...), 1, 2, 3),
	} {
		if _, err := ParseSignatureLists(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
}

// verifyUpdate checks an update's signature over its payload with cert.
func verifyUpdate(t *testing.T, v Variable, ts time.Time, auth []byte, cert *x509.Certificate) *Update {
	t.Helper()
	u, err := ParseUpdate(auth)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := SignedPayload(v, ts, u.Data)
	if err != nil {
		t.Fatal(err)
	}
	sd, err := pkcs7.Parse(u.Signature)
	if err != nil {
		t.Fatal(err)
	}
	if sd.Content != nil || !sd.ContentType.Equal(pkcs7.OIDData) {
		t.Fatalf("%s: content %v, %d bytes; want detached id-data", v.Name, sd.ContentType, len(sd.Content))
	}
	signers, err := sd.Verify(payload)
	if err != nil {
		t.Fatalf("%s: %v", v.Name, err)
	}
	if len(signers) != 1 || !signers[0].Equal(cert) {
		t.Fatalf("%s signed by %v, want %s", v.Name, signers, cert.Subject)
	}
	if _, err := sd.Verify(append(payload, 0)); !errors.Is(err, pkcs7.ErrVerify) {
		t.Fatalf("%s: a changed payload verifies: %v", v.Name, err)
	}
	return u
}

func TestEnrollment(t *testing.T) {
	pk, kek, db := keys(t)
	ts := time.Unix(1700000000, 0)
	e := &Enrollment{PK: pk, KEK: kek, DB: []*x509.Certificate{db.Cert}, Owner: MustParseGUID("01234567-89ab-cdef-0123-456789abcdef"), Time: ts}
	files, err := e.Files()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	byName := map[string][]byte{}
	for _, f := range files {
		names = append(names, f.Name)
		byName[f.Name] = f.Data
	}
	if got := strings.Join(names, " "); got != "PK.esl KEK.esl db.esl PK.auth KEK.auth db.auth" {
		t.Fatalf("files %s", got)
	}
	for _, c := range []struct {
		v            Variable
		cert, signer *x509.Certificate
	}{{PK, pk.Cert, pk.Cert}, {KEK, kek.Cert, pk.Cert}, {DB, db.Cert, kek.Cert}} {
		esl := byName[c.v.Name+".esl"]
		if !bytes.Equal(esl, X509SignatureList(c.cert.Raw, e.Owner)) {
			t.Fatalf("%s.esl is not the certificate's list", c.v.Name)
		}
		u := verifyUpdate(t, c.v, ts, byName[c.v.Name+".auth"], c.signer)
		if !bytes.Equal(u.Data, esl) {
			t.Fatalf("%s.auth's value is not %s.esl", c.v.Name, c.v.Name)
		}
	}
	again, err := e.Files()
	if err != nil {
		t.Fatal(err)
	}
	for i := range files {
		if !bytes.Equal(files[i].Data, again[i].Data) {
			t.Fatalf("%s differs between two runs", files[i].Name)
		}
	}

	// A signer whose certificate is another key's is refused.
	bad := *e
	bad.KEK = &secureboot.Key{Signer: kek.Signer, Cert: db.Cert}
	if _, err := bad.Files(); !errors.Is(err, secureboot.ErrKeyMismatch) {
		t.Fatalf("KEK key with the db certificate: %v", err)
	}

	dir := t.TempDir()
	if err := WriteFiles(dir, files); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 6 {
		t.Fatalf("%d files in %s", len(entries), dir)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "db.auth")); !bytes.Equal(got, byName["db.auth"]) {
		t.Fatal("db.auth on disk differs")
	}
	if err := WriteFiles(filepath.Join(dir, "nonexistent"), files); err == nil {
		t.Fatal("WriteFiles into a missing directory succeeded")
	}
}

// TestEnrollmentSeveral: several db certificates (and a second KEK
// certificate) give one signature list each, concatenated in the order
// given, signed as one value by the one signer; a certificate listed
// twice is refused.
func TestEnrollmentSeveral(t *testing.T) {
	pk, kek, db := keys(t)
	other := newKey(t, "kiln test other")
	ts := time.Unix(1700000000, 0)
	owner := MustParseGUID("01234567-89ab-cdef-0123-456789abcdef")
	e := &Enrollment{PK: pk, KEK: kek, MoreKEK: []*x509.Certificate{other.Cert}, DB: []*x509.Certificate{db.Cert, other.Cert, pk.Cert}, Owner: owner, Time: ts}
	files, err := e.Files()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string][]byte{}
	for _, f := range files {
		byName[f.Name] = f.Data
	}
	for _, c := range []struct {
		v      Variable
		certs  []*x509.Certificate
		signer *x509.Certificate
	}{{PK, []*x509.Certificate{pk.Cert}, pk.Cert}, {KEK, []*x509.Certificate{kek.Cert, other.Cert}, pk.Cert}, {DB, e.DB, kek.Cert}} {
		esl := byName[c.v.Name+".esl"]
		var want []byte
		for _, cert := range c.certs {
			want = append(want, X509SignatureList(cert.Raw, owner)...)
		}
		if !bytes.Equal(esl, want) || !bytes.Equal(esl, X509SignatureLists(owner, c.certs...)) {
			t.Fatalf("%s.esl is not its certificates' lists, concatenated", c.v.Name)
		}
		lists, err := ParseSignatureLists(esl)
		if err != nil || len(lists) != len(c.certs) {
			t.Fatalf("%s.esl: %d lists (%v), want %d", c.v.Name, len(lists), err, len(c.certs))
		}
		for i, l := range lists {
			if l.Type != CertX509 || len(l.Signatures) != 1 || l.Signatures[0].Owner != owner || !bytes.Equal(l.Signatures[0].Data, c.certs[i].Raw) {
				t.Fatalf("%s.esl list %d: %+v", c.v.Name, i, l)
			}
		}
		if u := verifyUpdate(t, c.v, ts, byName[c.v.Name+".auth"], c.signer); !bytes.Equal(u.Data, esl) {
			t.Fatalf("%s.auth's value is not %s.esl", c.v.Name, c.v.Name)
		}
	}

	for name, bad := range map[string]Enrollment{
		"db twice":        {PK: pk, KEK: kek, DB: []*x509.Certificate{db.Cert, other.Cert, db.Cert}, Owner: owner, Time: ts},
		"KEK's own again": {PK: pk, KEK: kek, MoreKEK: []*x509.Certificate{kek.Cert}, DB: []*x509.Certificate{db.Cert}, Owner: owner, Time: ts},
		"MoreKEK twice":   {PK: pk, KEK: kek, MoreKEK: []*x509.Certificate{other.Cert, other.Cert}, DB: []*x509.Certificate{db.Cert}, Owner: owner, Time: ts},
	} {
		if _, err := bad.Files(); !errors.Is(err, ErrDuplicate) {
			t.Errorf("%s: %v, want ErrDuplicate", name, err)
		}
	}
	for name, bad := range map[string]Enrollment{
		"no db":       {PK: pk, KEK: kek, Owner: owner, Time: ts},
		"nil db":      {PK: pk, KEK: kek, DB: []*x509.Certificate{db.Cert, nil}, Owner: owner, Time: ts},
		"nil MoreKEK": {PK: pk, KEK: kek, MoreKEK: []*x509.Certificate{nil}, DB: []*x509.Certificate{db.Cert}, Owner: owner, Time: ts},
	} {
		if _, err := bad.Files(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseUpdateMalformed(t *testing.T) {
	pk, _, _ := keys(t)
	auth, err := SignUpdate(PK, time.Unix(0, 0), []byte("v"), pk)
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(b []byte) []byte{
		"short":          func(b []byte) []byte { return b[:30] },
		"length too big": func(b []byte) []byte { b[16+3] = 0x7f; return b },
		"length 0":       func(b []byte) []byte { copy(b[16:], []byte{0, 0, 0, 0}); return b },
		"revision":       func(b []byte) []byte { b[16+5] = 1; return b },
		"cert type":      func(b []byte) []byte { b[16+8] ^= 1; return b },
	} {
		if _, err := ParseUpdate(edit(append([]byte(nil), auth...))); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
	if _, err := SignUpdate(Variable{"X", GlobalVariable, NonVolatile}, time.Unix(0, 0), nil, pk); err == nil {
		t.Fatal("signing an update of a variable without time-based authentication")
	}
}
