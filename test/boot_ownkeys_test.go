package test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/sign/authenticode"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// TestBootOwnKeysDebianKernel: with one's own PK and KEK enrolled and a
// db holding OVMF's snakeoil certificate (the chooser's signer) and
// Debian's kernel signer certificate, a slot kernel that keeps Debian's
// own signature passes kexec_file_load under lockdown (the kernel trusts
// the firmware's db through its platform keyring) and boots. With a db of
// the snakeoil key alone the same kernel is refused (TestBootKernelKeys).
//
// The keys are fresh (kiln keygen --type rsa-2048, kiln secureboot cert);
// kiln secureboot enroll-files makes PK, KEK and a db of the two
// certificates (two --db-cert), which the UEFI shell's dmpstore sets in a
// blank variable store in setup mode, PK first, so the firmware checks
// KEK.auth against PK and db.auth against KEK, as in
// TestSecureBootFirmware. Debian's signer certificate is read from the
// signature on the cached kernel (kiln's authenticode.Signers, checked
// against sbattach --detach and openssl pkcs7 -print_certs).
func TestBootOwnKeysDebianKernel(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	dir := t.TempDir()
	env := []string{"SOURCE_DATE_EPOCH=" + sbEpoch}

	// Debian's signer certificate, from the kernel's signature.
	vmlinuz := filepath.Join(r.cache, "root", "boot", "vmlinuz")
	kernel, err := os.ReadFile(vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	debian := debianSigner(t, kernel)
	debianPEM := filepath.Join(dir, "debian-signer.pem")
	os.WriteFile(debianPEM, secureboot.CertificatePEM(debian.Raw), 0o644)
	sig := filepath.Join(dir, "vmlinuz.p7")
	mustRun(t, "sbattach", "--detach", sig, vmlinuz)
	if certs := mustRun(t, "openssl", "pkcs7", "-inform", "DER", "-in", sig, "-print_certs"); !strings.Contains(certs, strings.TrimSpace(string(secureboot.CertificatePEM(debian.Raw)))) {
		t.Fatalf("openssl pkcs7 -print_certs does not list kiln's signer %s:\n%s", debian.Subject, certs)
	}

	// Own PK and KEK; db: snakeoil (the chooser), Debian's signer (the
	// slot's kernel).
	keys := map[string]string{}
	for _, name := range []string{"pk", "kek"} {
		base := filepath.Join(dir, name)
		mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", base)
		if res := kilnEnv(t, env, "secureboot", "cert", "--key", base+".key", "--subject", "CN=kiln own "+name+",O=kiln", "-o", base+".pem"); res.code != 0 {
			t.Fatalf("secureboot cert %s: %s", name, res.stderr)
		}
		keys[name] = base
	}
	enroll := filepath.Join(dir, "enroll")
	if res := kilnEnv(t, env, "secureboot", "enroll-files", "--pk-key", keys["pk"]+".key", "--pk-cert", keys["pk"]+".pem",
		"--kek-key", keys["kek"]+".key", "--kek-cert", keys["kek"]+".pem", "--db-cert", snakeoilCert, "--db-cert", debianPEM, "-o", enroll); res.code != 0 {
		t.Fatalf("secureboot enroll-files: %s", res.stderr)
	}

	// Setup mode, the UEFI shell: PK, then KEK and db, checked.
	files := map[string]string{}
	for _, v := range []string{"PK", "KEK", "db"} {
		files[v+".dmp"] = dmpstoreFile(t, dir, v, filepath.Join(enroll, v+".auth"))
	}
	nsh := filepath.Join(dir, "startup.nsh")
	os.WriteFile(nsh, []byte(strings.ReplaceAll("fs0:\ndmpstore -all -l PK.dmp\ndmpstore -all -l KEK.dmp\ndmpstore -all -l db.dmp\n"+
		"echo kiln: enrolled\n", "\n", "\r\n")), 0o644)
	files["startup.nsh"] = nsh
	vars := filepath.Join(dir, "vars.fd")
	copyFile(t, "/usr/share/OVMF/OVMF_VARS_4M.fd", vars)
	start := time.Now()
	console := runOVMF(t, vars, espImage(t, filepath.Join(dir, "shell.img"), files), "\nkiln: enrolled")
	if !strings.Contains(console, "\nkiln: enrolled") || strings.Contains(console, "Failed to set variable") ||
		!strings.Contains(console, "D719B2CB-3D3A-4596-A3BC-DAD00E67656F:db") {
		t.Fatalf("enrolling own PK, KEK and a db of snakeoil and Debian's signer:\n%s", console)
	}
	t.Logf("enrollment in the UEFI shell: %v", time.Since(start).Round(100*time.Millisecond))

	// A release whose slot kernel keeps Debian's signature (its chooser is
	// signed with the snakeoil key).
	out := r.build("1.0.0", relOpts{debianKernel: true})
	slotKernel := filepath.Join(dir, "slot-vmlinuz")
	mustRun(t, "debugfs", "-R", "dump /lib/kiln/boot/vmlinuz "+slotKernel, filepath.Join(out, "usr.img"))
	if b, err := os.ReadFile(slotKernel); err != nil || !debianSigner(t, b).Equal(debian) {
		t.Fatalf("the release's slot kernel is not signed by %s (%v)", debian.Subject, err)
	}

	n := newNode(t, filepath.Join(out, "disk.img"), "virtio")
	copyFile(t, vars, n.vars)
	console = n.boot("own-keys-debian-kernel", bootOpts{})
	expectBooted(t, console, "USR-A 1.0.0")
	expectConsole(t, console, `kiln: Secure Boot: enabled; kernel lockdown: integrity`,
		`KILN-TEST securebootvar=1 lockdown=.*\[integrity\]`)
	if strings.Contains(console, "kiln: refusing") {
		t.Errorf("the chooser refused a slot:\n%s", tail(console, 60))
	}
}

// debianSigner returns the certificate of the "Debian Secure Boot Signer"
// that signed the PE image pe.
func debianSigner(t *testing.T, pe []byte) *x509.Certificate {
	t.Helper()
	signers, err := authenticode.Signers(pe)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range signers {
		if strings.HasPrefix(c.Subject.CommonName, "Debian Secure Boot Signer") {
			return c
		}
	}
	var names []string
	for _, c := range signers {
		names = append(names, c.Subject.String())
	}
	t.Fatalf("no Debian Secure Boot Signer among the signers %v", names)
	return nil
}
