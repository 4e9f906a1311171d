package test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/kiln-os/kiln/sign/authenticode"
	"github.com/kiln-os/kiln/sign/efivar"
)

// sbKeys are RSA keys and certificates made by kiln keygen and kiln
// secureboot cert, plus an ECDSA and an Ed25519 key.
type sbKeys struct {
	dir                     string
	pk, kek, db             string // private keys
	pkCert, kekCert, dbCert string
	ec, ed                  string
}

// sbEpoch is SOURCE_DATE_EPOCH for these tests: 2023-11-14 22:13:20 UTC.
const sbEpoch = "1700000000"

func newSBKeys(t *testing.T) *sbKeys {
	t.Helper()
	t.Setenv("SOURCE_DATE_EPOCH", sbEpoch)
	dir := t.TempDir()
	k := &sbKeys{dir: dir}
	for _, x := range []struct {
		key, cert *string
		name      string
	}{{&k.pk, &k.pkCert, "pk"}, {&k.kek, &k.kekCert, "kek"}, {&k.db, &k.dbCert, "db"}} {
		base := filepath.Join(dir, x.name)
		mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", base)
		*x.key, *x.cert = base+".key", base+".pem"
		mustRun(t, kiln, "secureboot", "cert", "--key", *x.key, "--subject", "CN=kiln test "+x.name+",O=kiln", "-o", *x.cert)
	}
	mustRun(t, kiln, "keygen", "--type", "ecdsa-p256", "-o", filepath.Join(dir, "ec"))
	mustRun(t, kiln, "keygen", "--type", "ed25519", "-o", filepath.Join(dir, "ed"))
	k.ec, k.ed = filepath.Join(dir, "ec.key"), filepath.Join(dir, "ed.key")
	return k
}

// signedDigest is the image hash the image's (one) signature signs, read
// with openssl from the PKCS #7 in its certificate table.
func signedDigest(t *testing.T, path string) string {
	t.Helper()
	pe, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	im, err := authenticode.Parse(pe)
	if err != nil {
		t.Fatal(err)
	}
	p7 := filepath.Join(t.TempDir(), "sig.p7")
	entry := pe[im.CertTable.Offset:]
	os.WriteFile(p7, entry[8:binary.LittleEndian.Uint32(entry)], 0o644)
	// The SpcIndirectDataContent ends with its messageDigest: the last
	// OCTET STRING openssl prints before the certificates.
	out := mustRun(t, "openssl", "asn1parse", "-inform", "DER", "-in", p7)
	m := regexp.MustCompile(`OCTET STRING\s+\[HEX DUMP\]:([0-9A-F]{64})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no image hash in %s's signature:\n%s", path, out)
	}
	return strings.ToLower(m[1])
}

// pesignHash is the image hash pesign computes.
func pesignHash(t *testing.T, path string) string {
	t.Helper()
	out := mustRun(t, "pesign", "-h", "-i", path)
	h, ok := strings.CutPrefix(strings.TrimSpace(out), "hash: ")
	if !ok {
		t.Fatalf("pesign -h -i %s: %q", path, out)
	}
	return h
}

// checkSigned runs the three verifiers on a signed image.
func checkSigned(t *testing.T, k *sbKeys, path string) {
	t.Helper()
	if r := run(t, "sbverify", "--cert", k.dbCert, path); r.code != 0 || !strings.Contains(r.stdout+r.stderr, "Signature verification OK") {
		t.Errorf("sbverify --cert db.pem %s: exit %d\n%s%s", path, r.code, r.stdout, r.stderr)
	}
	r := run(t, "osslsigncode", "verify", "-CAfile", k.dbCert, "-in", path)
	if out := r.stdout + r.stderr; r.code != 0 || !strings.Contains(out, "Succeeded") || strings.Contains(out, "invalid PE checksum") {
		t.Errorf("osslsigncode verify -CAfile db.pem -in %s: exit %d\n%s", path, r.code, out)
	}
	if out := mustRun(t, "pesign", "-S", "-i", path); !strings.Contains(out, "The signer's common name is kiln test db") {
		t.Errorf("pesign -S -i %s lists no kiln signature:\n%s", path, out)
	}
	if h, s := pesignHash(t, path), signedDigest(t, path); h != s {
		t.Errorf("%s: pesign computes image hash %s, the signature signs %s", path, h, s)
	}
}

// checkRefused flips one byte at off and checks that the three tools
// refuse the image: sbverify and osslsigncode fail verification, pesign
// (which has no verify mode without an NSS database) computes an image
// hash that is not the signed one.
func checkRefused(t *testing.T, k *sbKeys, path string, off int64) {
	t.Helper()
	b, _ := os.ReadFile(path)
	b[off] ^= 0x20
	bad := path + ".flipped"
	os.WriteFile(bad, b, 0o644)
	if r := run(t, "sbverify", "--cert", k.dbCert, bad); r.code == 0 {
		t.Errorf("sbverify accepts %s with byte 0x%x changed", path, off)
	}
	if r := run(t, "osslsigncode", "verify", "-CAfile", k.dbCert, "-in", bad); r.code == 0 {
		t.Errorf("osslsigncode accepts %s with byte 0x%x changed", path, off)
	}
	if h, s := pesignHash(t, bad), signedDigest(t, bad); h == s {
		t.Errorf("pesign's image hash of %s with byte 0x%x changed is still the signed one", path, off)
	}
}

func checksumOf(t *testing.T, path string) (stored, computed uint32) {
	t.Helper()
	pe, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	im, err := authenticode.Parse(pe)
	if err != nil {
		t.Fatal(err)
	}
	computed, _ = authenticode.Checksum(pe)
	return binary.LittleEndian.Uint32(pe[im.CheckSumOffset:]), computed
}

// TestSecureBootSign signs Debian's systemd-boot stub and its (Debian
// signed) kernel with a kiln db key and checks the results with sbverify,
// osslsigncode and pesign, against sbsign's output, and for reproducibility.
func TestSecureBootSign(t *testing.T) {
	k := newSBKeys(t)
	cache := fetchBootable(t)
	dir := t.TempDir()
	inputs := map[string]string{
		"stub":   filepath.Join(cache, "root", "usr", "lib", "systemd", "boot", "efi", "linuxx64.efi.stub"),
		"kernel": filepath.Join(cache, "root", "boot", "vmlinuz"),
	}
	// Debian's kernel is signed: refused without --replace.
	r := run(t, kiln, "secureboot", "sign", inputs["kernel"], "--key", k.db, "--cert", k.dbCert, "-o", filepath.Join(dir, "x.efi"))
	if r.code != 2 || !strings.Contains(r.stderr, "already signed (by CN=Debian Secure Boot Signer") || !strings.Contains(r.stderr, "--replace") {
		t.Fatalf("signing Debian's signed kernel without --replace: exit %d, %s", r.code, r.stderr)
	}
	if fileExists(filepath.Join(dir, "x.efi")) {
		t.Fatal("a refused sign left its output")
	}

	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(dir, name+".signed")
			var res struct {
				Digest   string   `json:"digest"`
				Replaced []string `json:"replaced"`
			}
			js := mustRun(t, kiln, "--json", "secureboot", "sign", in, "--key", k.db, "--cert", k.dbCert, "-o", out, "--replace")
			if err := json.Unmarshal([]byte(js), &res); err != nil {
				t.Fatal(err)
			}
			checkSigned(t, k, out)
			if want := "sha256:" + signedDigest(t, out); res.Digest != want {
				t.Errorf("kiln reports %s, the signature signs %s", res.Digest, want)
			}
			// Only kiln's signature is left.
			list := mustRun(t, "sbverify", "--list", out)
			if n := len(regexp.MustCompile(`(?m)^signature \d+$`).FindAllString(list, -1)); n != 1 || strings.Contains(list, "Debian") {
				t.Errorf("sbverify --list %s:\n%s", out, list)
			}
			if name == "kernel" && (len(res.Replaced) != 1 || !strings.Contains(res.Replaced[0], "Debian Secure Boot Signer")) {
				t.Errorf("replaced %v, want Debian's signer", res.Replaced)
			}

			// The CheckSum is the file's, by kiln's algorithm and by
			// osslsigncode (checkSigned); kiln's algorithm gives sbsign's
			// CheckSum on sbsign's output of the same (unsigned) input.
			if stored, computed := checksumOf(t, out); stored != computed {
				t.Errorf("%s: CheckSum 0x%x, computed 0x%x", out, stored, computed)
			}
			unsigned := filepath.Join(dir, name+".unsigned")
			mustRun(t, "cp", in, unsigned)
			if name == "kernel" {
				mustRun(t, "sbattach", "--remove", unsigned)
			}
			ref := filepath.Join(dir, name+".sbsign")
			mustRun(t, "sbsign", "--key", k.db, "--cert", k.dbCert, "--output", ref, unsigned)
			if stored, computed := checksumOf(t, ref); stored != computed {
				t.Errorf("sbsign's CheckSum 0x%x, kiln computes 0x%x", stored, computed)
			}
			if h, s := pesignHash(t, ref), signedDigest(t, out); h != s {
				t.Errorf("sbsign signed image hash %s, kiln %s", h, s)
			}
			// Signing the unsigned input gives the same bytes as replacing
			// the signature, and signing twice the same bytes.
			again := filepath.Join(dir, name+".again")
			mustRun(t, kiln, "secureboot", "sign", unsigned, "--key", k.db, "--cert", k.dbCert, "-o", again)
			a, _ := os.ReadFile(out)
			b, _ := os.ReadFile(again)
			if !bytes.Equal(a, b) {
				t.Error("signing the same image twice gave different bytes")
			}

			// One byte changed in a section (the middle of the largest)
			// and the three tools refuse it.
			pe, _ := os.ReadFile(out)
			im, err := authenticode.Parse(pe)
			if err != nil {
				t.Fatal(err)
			}
			big := im.Sections[0]
			for _, s := range im.Sections {
				if s.Size > big.Size {
					big = s
				}
			}
			checkRefused(t, k, out, big.Offset+big.Size/2)
		})
	}
}

// TestSecureBootSignRefusals: a key that is not the certificate's, ECDSA
// and Ed25519 keys, a truncated image, bogus section offsets and a file
// that is no PE are refused (exit 2) with errors that say what is wrong,
// and leave no output.
func TestSecureBootSignRefusals(t *testing.T) {
	k := newSBKeys(t)
	cache := fetchBootable(t)
	stub, err := os.ReadFile(filepath.Join(cache, "root", "usr", "lib", "systemd", "boot", "efi", "linuxx64.efi.stub"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "stub.efi")
	os.WriteFile(in, stub, 0o644)
	im, err := authenticode.Parse(stub)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.efi")
	os.WriteFile(truncated, stub[:im.Sections[0].End()-100], 0o644)
	// The second section header's PointerToRawData, past the end.
	bogus := append([]byte(nil), stub...)
	lfanew := binary.LittleEndian.Uint32(bogus[0x3c:])
	optSize := binary.LittleEndian.Uint16(bogus[lfanew+4+16:])
	secTable := int(lfanew) + 24 + int(optSize)
	binary.LittleEndian.PutUint32(bogus[secTable+40+20:], 0x7ffffff0)
	bogusFile := filepath.Join(dir, "bogus.efi")
	os.WriteFile(bogusFile, bogus, 0o644)

	out := filepath.Join(dir, "out.efi")
	cases := []struct {
		name      string
		in        string
		key, cert string
		want      []string
	}{
		{"key of another certificate", in, k.kek, k.dbCert, []string{"key does not match certificate", k.kek, k.dbCert}},
		{"ECDSA key", in, k.ec, k.dbCert, []string{"UEFI firmware verifies RSA signatures only", k.ec, "ECDSA"}},
		{"Ed25519 key", in, k.ed, k.dbCert, []string{"UEFI firmware verifies RSA signatures only", k.ed, "Ed25519"}},
		{"truncated image", truncated, k.db, k.dbCert, []string{truncated, "malformed PE image", "SizeOfRawData"}},
		{"bogus section offset", bogusFile, k.db, k.dbCert, []string{bogusFile, "malformed PE image", "section 1 (.reloc) PointerToRawData", "0x7ffffff0"}},
		{"not a PE", k.dbCert, k.db, k.dbCert, []string{"not a PE/EFI image"}},
		{"a key as certificate", in, k.db, k.db, []string{"invalid certificate", k.db}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, kiln, "secureboot", "sign", c.in, "--key", c.key, "--cert", c.cert, "-o", out)
			if r.code != 2 {
				t.Errorf("exit %d, want 2: %s", r.code, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("%q does not say %q", strings.TrimSpace(r.stderr), w)
				}
			}
		})
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("refused signs left files: %v", names)
	}
	r := run(t, kiln, "--json", "secureboot", "sign", truncated, "--key", k.db, "--cert", k.dbCert, "-o", out)
	var e struct {
		Error    string `json:"error"`
		ExitCode int    `json:"exit_code"`
	}
	if json.Unmarshal([]byte(r.stderr), &e) != nil || e.ExitCode != 2 || !strings.Contains(e.Error, "malformed PE image") {
		t.Errorf("--json error: %s", r.stderr)
	}
}

// TestSecureBootCert: kiln's certificate is what openssl reads as a
// self-signed CA, and the same key, subject and SOURCE_DATE_EPOCH give the
// same bytes.
func TestSecureBootCert(t *testing.T) {
	k := newSBKeys(t)
	out := mustRun(t, "openssl", "x509", "-in", k.dbCert, "-noout", "-subject", "-issuer", "-startdate", "-enddate", "-ext", "basicConstraints")
	for _, want := range []string{"subject=O = kiln, CN = kiln test db", "issuer=O = kiln, CN = kiln test db", "notBefore=Nov 14 22:13:20 2023 GMT", "notAfter=Dec 31 23:59:59 9999 GMT", "CA:TRUE"} {
		if !strings.Contains(out, want) {
			t.Errorf("openssl x509 does not say %q:\n%s", want, out)
		}
	}
	mustRun(t, "openssl", "verify", "-CAfile", k.dbCert, k.dbCert)
	again := filepath.Join(k.dir, "again.pem")
	mustRun(t, kiln, "secureboot", "cert", "--key", k.db, "--subject", "/CN=kiln test db/O=kiln", "-o", again)
	a, _ := os.ReadFile(k.dbCert)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("the same key, subject and SOURCE_DATE_EPOCH gave two certificates")
	}
	days := filepath.Join(k.dir, "days.pem")
	mustRun(t, kiln, "secureboot", "cert", "--key", k.db, "--subject", "CN=x", "--days", "30", "-o", days)
	if out := mustRun(t, "openssl", "x509", "-in", days, "-noout", "-enddate"); !strings.Contains(out, "notAfter=Dec 14 22:13:20 2023 GMT") {
		t.Errorf("--days 30: %s", out)
	}
	for _, key := range []string{k.ec, k.ed} {
		if r := run(t, kiln, "secureboot", "cert", "--key", key, "--subject", "CN=x", "-o", filepath.Join(k.dir, "x.pem")); r.code != 2 || !strings.Contains(r.stderr, "RSA signatures only") {
			t.Errorf("cert for %s: exit %d %s", key, r.code, r.stderr)
		}
	}
	if r := run(t, kiln, "secureboot", "cert", "--key", k.db, "--subject", "kiln", "-o", filepath.Join(k.dir, "x.pem")); r.code != 2 || !strings.Contains(r.stderr, "malformed subject") {
		t.Errorf("--subject kiln: exit %d %s", r.code, r.stderr)
	}
}

// TestSecureBootEnrollFiles: kiln's .esl files are cert-to-efi-sig-list's
// bytes and sig-list-to-certs reads them back; its .auth files are
// sign-efi-sig-list's bytes for the same keys, owner and time, and their
// PKCS #7 verifies with openssl over sign-efi-sig-list -o's bytes.
func TestSecureBootEnrollFiles(t *testing.T) {
	k := newSBKeys(t)
	const owner = "5d4b7c0a-91e2-4f3b-8c6d-0e1f2a3b4c5d"
	const when = "2023-11-14 22:13:20"
	dir := filepath.Join(k.dir, "enroll")
	mustRun(t, kiln, "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek, "--kek-cert", k.kekCert,
		"--db-cert", k.dbCert, "--owner", owner, "--time", when, "-o", dir)
	ref := t.TempDir()
	for _, v := range []struct {
		name, cert, signKey, signCert string
	}{{"PK", k.pkCert, k.pk, k.pkCert}, {"KEK", k.kekCert, k.pk, k.pkCert}, {"db", k.dbCert, k.kek, k.kekCert}} {
		esl, auth := filepath.Join(dir, v.name+".esl"), filepath.Join(dir, v.name+".auth")
		refESL, refAuth, refTBS := filepath.Join(ref, v.name+".esl"), filepath.Join(ref, v.name+".auth"), filepath.Join(ref, v.name+".tbs")
		mustRun(t, "cert-to-efi-sig-list", "-g", owner, v.cert, refESL)
		sameBytes(t, esl, refESL)

		// sig-list-to-certs reads kiln's list back: the owner and the
		// certificate.
		prefix := filepath.Join(ref, v.name+"-cert")
		if out := mustRun(t, "sig-list-to-certs", esl, prefix); !strings.Contains(out, "Guid "+owner) {
			t.Errorf("sig-list-to-certs %s: %s", esl, out)
		}
		der := filepath.Join(ref, v.name+".der")
		mustRun(t, "openssl", "x509", "-in", v.cert, "-outform", "DER", "-out", der)
		sameBytes(t, prefix+"-0.der", der)

		mustRun(t, "sign-efi-sig-list", "-t", when, "-g", owner, "-k", v.signKey, "-c", v.signCert, v.name, esl, refAuth)
		sameBytes(t, auth, refAuth)

		// The to-be-signed bytes, and openssl's verdict on kiln's PKCS #7
		// over them.
		mustRun(t, "sign-efi-sig-list", "-o", "-t", when, "-g", owner, v.name, esl, refTBS)
		data, _ := os.ReadFile(auth)
		u, err := efivar.ParseUpdate(data)
		if err != nil {
			t.Fatal(err)
		}
		eslBytes, _ := os.ReadFile(esl)
		vars := map[string]efivar.Variable{"PK": efivar.PK, "KEK": efivar.KEK, "db": efivar.DB}
		tbs, _ := efivar.SignedPayload(vars[v.name], time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC), eslBytes)
		if refBytes, _ := os.ReadFile(refTBS); !bytes.Equal(tbs, refBytes) {
			t.Errorf("%s: the signed payload differs from sign-efi-sig-list -o's", v.name)
		}
		p7 := filepath.Join(ref, v.name+".p7")
		os.WriteFile(p7, contentInfo(u.Signature), 0o644)
		mustRun(t, "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", p7, "-content", refTBS, "-CAfile", v.signCert, "-purpose", "any", "-out", os.DevNull)
	}

	// SOURCE_DATE_EPOCH is the default time; the same inputs give the same
	// files.
	again := filepath.Join(k.dir, "again")
	mustRun(t, kiln, "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek, "--kek-cert", k.kekCert,
		"--db-cert", k.dbCert, "--owner", owner, "-o", again)
	for _, f := range []string{"PK.esl", "KEK.esl", "db.esl", "PK.auth", "KEK.auth", "db.auth"} {
		sameBytes(t, filepath.Join(dir, f), filepath.Join(again, f))
	}

	// A KEK key with the db certificate is refused, naming both.
	r := run(t, kiln, "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek, "--kek-cert", k.dbCert,
		"--db-cert", k.dbCert, "-o", filepath.Join(k.dir, "bad"))
	if r.code != 2 || !strings.Contains(r.stderr, k.kek) || !strings.Contains(r.stderr, k.dbCert) || fileExists(filepath.Join(k.dir, "bad")) {
		t.Errorf("KEK key with the db certificate: exit %d %s", r.code, r.stderr)
	}
	if r := run(t, kiln, "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek, "--kek-cert", k.kekCert,
		"--db-cert", k.dbCert, "--owner", "not-a-guid", "-o", filepath.Join(k.dir, "bad")); r.code != 2 || !strings.Contains(r.stderr, "--owner") {
		t.Errorf("--owner not-a-guid: exit %d %s", r.code, r.stderr)
	}
}

// TestSecureBootEnrollFilesSeveral: repeated --db-cert (and --kek-cert)
// give one signature list per certificate, in the order given: kiln's
// .esl is cert-to-efi-sig-list's output for each certificate,
// concatenated, and its .auth is sign-efi-sig-list's over that
// concatenation, byte for byte; sig-list-to-certs reads every certificate
// back. A certificate given twice and a PEM bundle are refused.
func TestSecureBootEnrollFilesSeveral(t *testing.T) {
	k := newSBKeys(t)
	const owner = "5d4b7c0a-91e2-4f3b-8c6d-0e1f2a3b4c5d"
	const when = "2023-11-14 22:13:20"
	ref := t.TempDir()
	// One certificate as DER: a file of either form is one certificate.
	snakeoilDER := filepath.Join(ref, "snakeoil.der")
	mustRun(t, "openssl", "x509", "-in", snakeoilCert, "-outform", "DER", "-out", snakeoilDER)
	kekCerts := []string{k.kekCert, k.dbCert}
	dbCerts := []string{k.dbCert, snakeoilDER, k.pkCert}
	args := []string{"--json", "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek}
	for _, c := range kekCerts {
		args = append(args, "--kek-cert", c)
	}
	for _, c := range dbCerts {
		args = append(args, "--db-cert", c)
	}
	dir := filepath.Join(k.dir, "enroll")
	var res struct {
		KEK []string `json:"kek"`
		DB  []string `json:"db"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, kiln, append(args, "--owner", owner, "--time", when, "-o", dir)...)), &res); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.DB, "; "); got != "CN=kiln test db,O=kiln; O=SnakeOil,L=Fort Collins,ST=Colorado,C=US; CN=kiln test pk,O=kiln" {
		t.Errorf("--json db: %s", got)
	}
	if got := strings.Join(res.KEK, "; "); got != "CN=kiln test kek,O=kiln; CN=kiln test db,O=kiln" {
		t.Errorf("--json kek: %s", got)
	}

	for _, v := range []struct {
		name          string
		certs         []string
		signKey, cert string
	}{{"PK", []string{k.pkCert}, k.pk, k.pkCert}, {"KEK", kekCerts, k.pk, k.pkCert}, {"db", dbCerts, k.kek, k.kekCert}} {
		var cat []byte
		for i, c := range v.certs {
			pemCert := c
			if strings.HasSuffix(c, ".der") {
				pemCert = filepath.Join(ref, v.name+"-in.pem")
				mustRun(t, "openssl", "x509", "-inform", "DER", "-in", c, "-out", pemCert)
			}
			one := filepath.Join(ref, fmt.Sprintf("%s-%d.esl", v.name, i))
			mustRun(t, "cert-to-efi-sig-list", "-g", owner, pemCert, one)
			b, _ := os.ReadFile(one)
			cat = append(cat, b...)
		}
		refESL, refAuth := filepath.Join(ref, v.name+".esl"), filepath.Join(ref, v.name+".auth")
		os.WriteFile(refESL, cat, 0o644)
		esl, auth := filepath.Join(dir, v.name+".esl"), filepath.Join(dir, v.name+".auth")
		sameBytes(t, esl, refESL)
		mustRun(t, "sign-efi-sig-list", "-t", when, "-g", owner, "-k", v.signKey, "-c", v.cert, v.name, refESL, refAuth)
		sameBytes(t, auth, refAuth)

		// sig-list-to-certs reads every certificate back, in order.
		prefix := filepath.Join(ref, v.name+"-back")
		mustRun(t, "sig-list-to-certs", esl, prefix)
		for i, c := range v.certs {
			der := filepath.Join(ref, fmt.Sprintf("%s-%d.der", v.name, i))
			form := "PEM"
			if strings.HasSuffix(c, ".der") {
				form = "DER"
			}
			mustRun(t, "openssl", "x509", "-inform", form, "-in", c, "-outform", "DER", "-out", der)
			sameBytes(t, fmt.Sprintf("%s-%d.der", prefix, i), der)
		}
		if fileExists(fmt.Sprintf("%s-%d.der", prefix, len(v.certs))) {
			t.Errorf("%s.esl holds more than its %d certificates", v.name, len(v.certs))
		}
	}

	// One --db-cert is what it was: db.esl is the certificate's one list.
	one := filepath.Join(k.dir, "one")
	mustRun(t, kiln, "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek, "--kek-cert", k.kekCert,
		"--db-cert", k.dbCert, "--owner", owner, "--time", when, "-o", one)
	sameBytes(t, filepath.Join(one, "db.esl"), filepath.Join(ref, "db-0.esl"))

	bundle := filepath.Join(ref, "bundle.pem")
	a, _ := os.ReadFile(k.dbCert)
	b, _ := os.ReadFile(snakeoilCert)
	os.WriteFile(bundle, append(a, b...), 0o644)
	bad := filepath.Join(k.dir, "bad")
	for _, c := range []struct {
		name  string
		extra []string
		want  []string
	}{
		{"db twice", []string{"--db-cert", k.dbCert, "--db-cert", snakeoilCert, "--db-cert", k.dbCert}, []string{"--db-cert " + k.dbCert + " is the certificate of " + k.dbCert}},
		{"db twice, PEM and DER", []string{"--db-cert", snakeoilCert, "--db-cert", snakeoilDER}, []string{snakeoilDER + " is the certificate of " + snakeoilCert}},
		{"KEK's own again", []string{"--kek-cert", k.kekCert, "--db-cert", k.dbCert}, []string{"--kek-cert " + k.kekCert + " is the certificate of " + k.kekCert}},
		{"a PEM bundle", []string{"--db-cert", bundle}, []string{bundle, "holds 2 certificates"}},
		{"no --db-cert", nil, []string{"--db-cert is required"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek, "--kek-cert", k.kekCert}, c.extra...)
			r := run(t, kiln, append(args, "-o", bad)...)
			if r.code != 2 {
				t.Errorf("exit %d, want 2: %s", r.code, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("%q does not say %q", strings.TrimSpace(r.stderr), w)
				}
			}
			if fileExists(bad) {
				t.Errorf("a refused enroll-files made %s", bad)
			}
		})
	}
}

func sameBytes(t *testing.T, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%s (%d bytes) differs from %s (%d bytes)\n%s\n%s", got, len(a), want, len(b), hexHead(a), hexHead(b))
	}
}

func hexHead(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return hex.EncodeToString(b)
}

// contentInfo wraps a bare SignedData (as EFI_VARIABLE_AUTHENTICATION_2
// holds it) in the ContentInfo openssl cms reads.
func contentInfo(signedData []byte) []byte {
	oid := []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02}
	return der(0x30, append(oid, der(0xa0, signedData)...))
}

func der(tag byte, content []byte) []byte {
	n := len(content)
	switch {
	case n < 0x80:
		return append([]byte{tag, byte(n)}, content...)
	case n < 0x100:
		return append([]byte{tag, 0x81, byte(n)}, content...)
	default:
		return append([]byte{tag, 0x82, byte(n >> 8), byte(n)}, content...)
	}
}

// TestSecureBootFirmware enrolls kiln's PK, KEK and db files in OVMF with
// Secure Boot (from setup mode, PK first, so the firmware checks KEK.auth
// with PK and db.auth with KEK), then boots Debian's kernel signed by kiln
// with the db key (its EFI stub reports Secure Boot on) and the same
// kernel signed with a key that is not in db (refused).
func TestSecureBootFirmware(t *testing.T) {
	k := newSBKeys(t)
	cache := fetchBootable(t)
	dir := t.TempDir()
	kernel := filepath.Join(cache, "root", "boot", "vmlinuz")
	good, other := filepath.Join(dir, "good.efi"), filepath.Join(dir, "other.efi")
	mustRun(t, kiln, "secureboot", "sign", kernel, "--replace", "--key", k.db, "--cert", k.dbCert, "-o", good)
	mustRun(t, kiln, "secureboot", "sign", kernel, "--replace", "--key", k.kek, "--cert", k.kekCert, "-o", other)
	enroll := filepath.Join(dir, "enroll")
	mustRun(t, kiln, "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.kek, "--kek-cert", k.kekCert, "--db-cert", k.dbCert, "-o", enroll)
	// A later db update signed by the db key instead of KEK's.
	wrong := filepath.Join(dir, "wrong")
	mustRun(t, kiln, "secureboot", "enroll-files", "--pk-key", k.pk, "--pk-cert", k.pkCert, "--kek-key", k.db, "--kek-cert", k.dbCert, "--db-cert", k.dbCert,
		"--time", "2024-01-01T00:00:00Z", "-o", wrong)

	// (1) Setup mode, the UEFI shell: dmpstore -l sets each variable from
	// its .auth file, as SetVariable with the attributes kiln signed.
	files := map[string]string{}
	for _, v := range []string{"PK", "KEK", "db"} {
		files[v+".dmp"] = dmpstoreFile(t, dir, v, filepath.Join(enroll, v+".auth"))
	}
	files["wrong.dmp"] = dmpstoreFile(t, dir, "db", filepath.Join(wrong, "db.auth"))
	nsh := filepath.Join(dir, "startup.nsh")
	os.WriteFile(nsh, []byte(strings.ReplaceAll("fs0:\ndmpstore -all -l PK.dmp\ndmpstore -all -l KEK.dmp\ndmpstore -all -l db.dmp\n"+
		"echo kiln: enrolled\ndmpstore -all -l wrong.dmp\necho kiln: done\n", "\n", "\r\n")), 0o644)
	files["startup.nsh"] = nsh
	vars := filepath.Join(dir, "vars.fd")
	mustRun(t, "cp", "/usr/share/OVMF/OVMF_VARS_4M.fd", vars)
	console := runOVMF(t, vars, espImage(t, filepath.Join(dir, "shell.img"), files), "\nkiln: done")
	before, after, ok := strings.Cut(console, "\nkiln: enrolled")
	if !ok || strings.Contains(before, "Failed to set variable") || !strings.Contains(before, "D719B2CB-3D3A-4596-A3BC-DAD00E67656F:db") {
		t.Fatalf("enrolling kiln's PK, KEK and db:\n%s", console)
	}
	if !strings.Contains(after, "Failed to set variable db: Security Violation") {
		t.Fatalf("a db update not signed by KEK was not refused:\n%s", after)
	}

	// (2) User mode: the kiln-signed kernel runs, the other is refused.
	for name, img := range map[string]string{"db": good, "not db": other} {
		v := filepath.Join(dir, "vars-"+name+".fd")
		mustRun(t, "cp", vars, v)
		disk := espImage(t, filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".img"), map[string]string{"EFI/BOOT/BOOTX64.EFI": img})
		console := runOVMF(t, v, disk, "EFI stub: UEFI Secure Boot is enabled.", "Access Denied")
		switch {
		case name == "db" && !strings.Contains(console, "EFI stub: UEFI Secure Boot is enabled."):
			t.Errorf("the kernel signed with the db key did not start under Secure Boot:\n%s", console)
		case name == "not db" && (!strings.Contains(console, "Access Denied") || strings.Contains(console, "EFI stub")):
			t.Errorf("the kernel signed with a key not in db was not refused:\n%s", console)
		}
	}
}

// dmpstoreFile writes the .auth file as a record of the UEFI shell's
// dmpstore -s/-l format: NameSize, DataSize, the name (UTF-16, with its
// NUL), the vendor GUID, the attributes, the data, and a CRC32 of all that.
func dmpstoreFile(t *testing.T, dir, name, auth string) string {
	t.Helper()
	data, err := os.ReadFile(auth)
	if err != nil {
		t.Fatal(err)
	}
	v := map[string]efivar.Variable{"PK": efivar.PK, "KEK": efivar.KEK, "db": efivar.DB}[name]
	var n []byte
	for _, u := range utf16.Encode([]rune(name + "\x00")) {
		n = binary.LittleEndian.AppendUint16(n, u)
	}
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(n)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, n...)
	b = append(b, v.Vendor[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(v.Attributes))
	b = append(b, data...)
	b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	out := filepath.Join(dir, filepath.Base(filepath.Dir(auth))+"-"+name+".dmp")
	os.WriteFile(out, b, 0o644)
	return out
}

// espImage makes a FAT file system image holding files (path in the
// image: path on the host).
func espImage(t *testing.T, img string, files map[string]string) string {
	t.Helper()
	mustRun(t, "mkfs.fat", "-C", img, "65536")
	made := map[string]bool{}
	for dst, src := range files {
		parts := strings.Split(dst, "/")
		for i := 1; i < len(parts); i++ {
			if d := strings.Join(parts[:i], "/"); !made[d] {
				mustRun(t, "mmd", "-i", img, "::/"+d)
				made[d] = true
			}
		}
		mustRun(t, "mcopy", "-i", img, src, "::/"+dst)
	}
	return img
}

// sbBootTimeout bounds one firmware run (measured here under TCG: 25 s for
// the shell's enrollment, 10-15 s to the kernel's EFI stub).
const sbBootTimeout = 150 * time.Second

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;=?]*[A-Za-z]`)

// runOVMF boots disk under QEMU with OVMF's Secure Boot firmware (SMM) and
// the variable store vars until the serial console shows one of until (or
// a timeout), and returns the console without terminal escapes.
func runOVMF(t *testing.T, vars, disk string, until ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sbBootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
		"-m", "512", "-nic", "none", "-display", "none", "-serial", "stdio", "-monitor", "none",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
		"-drive", "if=pflash,format=raw,unit=1,file="+vars,
		"-drive", "file="+disk+",format=raw,if=virtio")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu-system-x86_64 (make test installs it): %v", err)
	}
	var raw []byte
	buf := make([]byte, 4096)
	clean := func() string { return strings.ReplaceAll(ansiEscape.ReplaceAllString(string(raw), ""), "\r", "") }
read:
	for {
		n, err := stdout.Read(buf)
		raw = append(raw, buf[:n]...)
		for _, u := range until {
			if strings.Contains(clean(), u) {
				break read
			}
		}
		if err != nil {
			break
		}
	}
	cancel()
	cmd.Wait()
	return clean()
}
