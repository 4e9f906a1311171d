package test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// bootableRecipe writes a bootable recipe (Debian's packages from
// recipes/bootable/fetch.sh in cache) into dir, with the boot: section's
// lines replaced by boot when not "", and returns its path.
func bootableRecipe(t *testing.T, dir, cache, boot string) string {
	t.Helper()
	layoutFile, _ := filepath.Abs("../recipes/bootable/layout.yaml")
	if boot == "" {
		boot = fmt.Sprintf(`  kernel: %[1]s/root/boot/vmlinuz
  modules: %[1]s/root/lib/modules/current
  load: [virtio_pci, virtio_blk, virtio_scsi, sd_mod, nvme, xen_blkfront, hv_storvsc, dm_verity, efivarfs]
  stub: %[1]s/root/usr/lib/systemd/boot/efi/linuxx64.efi.stub
  cmdline: "console=ttyS0 panic=1 quiet"
  sign-kernel: true
`, cache)
	}
	recipe := filepath.Join(dir, "bootable.yaml")
	os.WriteFile(recipe, []byte(fmt.Sprintf(`name: bootable
version: 1.0.0
layout: %s
boot:
%spartitions:
  USR-A:
    source: dir:%s/usr
  OEM:
    files:
      - {path: /kiln.conf, content: "init=/usr/lib/bootable/init\n"}
  ROOT: {}
`, layoutFile, boot, cache)), 0o644)
	return recipe
}

// TestBootBuildContents checks what a bootable build puts where, with
// tools nobody here wrote: the ESP's BOOTX64.EFI (mtools) is a PE image
// whose .osrel, .cmdline, .linux and .initrd sections objdump lists and
// objcopy extracts, signed for Secure Boot (sbverify with the key's
// certificate); the slot's kernel is Debian's, its signature replaced by
// one of the Secure Boot key (the same Authenticode hash, pesign); the initrd is a zstd newc cpio that GNU cpio reads,
// holding kiln as /init, the modules asked for with their dependencies in
// load order, and the release key; USR-A holds the same kernel, initrd
// and command line under /lib/kiln/boot (debugfs). The same inputs give
// the same image.
func TestBootBuildContents(t *testing.T) {
	dir := t.TempDir()
	cache := fetchBootable(t)
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	recipe := bootableRecipe(t, dir, cache, "")
	build := func(out string) {
		t.Helper()
		if r := kilnEnv(t, snakeoilEnv, "build", "-q", recipe, "-o", out, "--sign", key+".key", "--sb-key", snakeoilKey, "--sb-cert", snakeoilCert); r.code != 0 {
			t.Fatalf("build: %s", r.stderr)
		}
	}
	out := filepath.Join(dir, "out")
	build(out)
	m := readManifest(t, out)

	// The ESP holds the chooser, a unified kernel image.
	esp := extract(t, filepath.Join(out, "disk.img"), m.Partition("EFI-SYSTEM"))
	uki := filepath.Join(dir, "BOOTX64.EFI")
	mustRun(t, "mcopy", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", uki)
	mustRun(t, "sbverify", "--cert", snakeoilCert, uki)
	// Every byte of the chooser lies in its headers or sections, none in
	// a gap the signature would not cover (the stub's symbol table is left
	// out): sbsign, re-signing it, finds no gap.
	plain := filepath.Join(dir, "plain.key")
	mustRun(t, "openssl", "rsa", "-in", snakeoilKey, "-passin", "pass:snakeoil", "-out", plain)
	unsignedUKI := filepath.Join(dir, "unsigned.efi")
	copyFile(t, uki, unsignedUKI)
	mustRun(t, "sbattach", "--remove", unsignedUKI)
	if r := run(t, "sbsign", "--key", plain, "--cert", snakeoilCert, "--output", filepath.Join(dir, "resigned.efi"), unsignedUKI); r.code != 0 || strings.Contains(r.stderr+r.stdout, "gap") {
		t.Errorf("sbsign on the chooser: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	sections := mustRun(t, "objdump", "-h", uki)
	if !strings.Contains(sections, "pei-x86-64") {
		t.Errorf("objdump does not read BOOTX64.EFI as a PE32+ image:\n%s", sections)
	}
	section := func(name string) []byte {
		t.Helper()
		if !regexp.MustCompile(`\s` + regexp.QuoteMeta(name) + `\s`).MatchString(sections) {
			t.Fatalf("BOOTX64.EFI has no %s section:\n%s", name, sections)
		}
		p := filepath.Join(dir, strings.TrimPrefix(name, "."))
		mustRun(t, "objcopy", "-O", "binary", "--only-section="+name, uki, p)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The slot's kernel: Debian's, signed by the Secure Boot key instead
	// of Debian's; the chooser carries the same.
	usr := filepath.Join(out, "usr.img")
	slotKernel := filepath.Join(dir, "slot-vmlinuz")
	mustRun(t, "debugfs", "-R", "dump /lib/kiln/boot/vmlinuz "+slotKernel, usr)
	mustRun(t, "sbverify", "--cert", snakeoilCert, slotKernel)
	if r := run(t, "sbverify", "--list", slotKernel); strings.Contains(r.stdout, "Debian") || !strings.Contains(r.stdout, "SnakeOil") {
		t.Errorf("the slot's kernel is not signed by the Secure Boot key alone:\n%s", r.stdout)
	}
	debian := filepath.Join(cache, "root", "boot", "vmlinuz")
	if a, b := mustRun(t, "pesign", "-h", "-i", slotKernel), mustRun(t, "pesign", "-h", "-i", debian); a != b {
		t.Errorf("the slot's kernel is not Debian's (Authenticode hash %s, Debian's %s)", a, b)
	}
	kernel, err := os.ReadFile(slotKernel)
	if err != nil {
		t.Fatal(err)
	}
	if got := section(".linux"); !bytes.HasPrefix(got, kernel) || len(bytes.Trim(got[len(kernel):], "\x00")) != 0 {
		t.Errorf(".linux is not the slot's kernel (%d bytes, the kernel %d)", len(got), len(kernel))
	}
	if got := string(bytes.TrimRight(section(".cmdline"), "\x00")); got != "console=ttyS0 panic=1 quiet" {
		t.Errorf(".cmdline %q", got)
	}
	if got := string(section(".osrel")); !strings.Contains(got, `NAME="bootable"`) || !strings.Contains(got, `VERSION="1.0.0"`) {
		t.Errorf(".osrel %q", got)
	}
	initrd := bytes.TrimRight(section(".initrd"), "\x00")

	// The initrd, read by zstd and GNU cpio.
	unpacked := filepath.Join(dir, "initrd-unpacked")
	os.Mkdir(unpacked, 0o755)
	cmd := exec.Command("sh", "-c", "zstd -dc | cpio -idm --quiet --no-absolute-filenames && find . -type f | sort")
	cmd.Dir, cmd.Stdin = unpacked, bytes.NewReader(initrd)
	listing, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("zstd | cpio: %v\n%s", err, listing)
	}
	self, _ := os.ReadFile(kiln)
	if got, _ := os.ReadFile(filepath.Join(unpacked, "init")); !bytes.Equal(got, self) {
		t.Errorf("the initrd's /init is not the kiln that built it (%d bytes, kiln %d)", len(got), len(self))
	}
	if st, err := os.Stat(filepath.Join(unpacked, "init")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("/init: %v %v", st, err)
	}
	pub, _ := os.ReadFile(key + ".pub")
	if got, _ := os.ReadFile(filepath.Join(unpacked, "etc/kiln/release.pub")); !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(pub)) {
		t.Errorf("the initrd's release key is not the build's:\n%s", got)
	}
	order, _ := os.ReadFile(filepath.Join(unpacked, "etc/kiln/modules"))
	if strings.Contains(string(order), "nvme") {
		t.Errorf("nvme is built into Debian's cloud kernel (modules.builtin), yet the initrd carries it:\n%s", order)
	}
	var names []string
	for _, p := range strings.Fields(string(order)) {
		if _, err := os.Stat(filepath.Join(unpacked, p)); err != nil {
			t.Errorf("the load order names %s, which the initrd lacks", p)
		}
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".ko"))
	}
	// Each module asked for is there, after the modules it depends on (as
	// modinfo, a tool nobody here wrote, reads them).
	pos := map[string]int{}
	for i, n := range names {
		pos[strings.ReplaceAll(n, "-", "_")] = i
	}
	for _, want := range []string{"virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "xen_blkfront", "hv_storvsc", "hv_vmbus", "dm_verity", "efivarfs"} {
		if _, ok := pos[want]; !ok {
			t.Errorf("module %s is not in the load order %v", want, names)
		}
	}
	for _, p := range strings.Fields(string(order)) {
		deps := strings.TrimSpace(mustRun(t, "modinfo", "-F", "depends", filepath.Join(unpacked, p)))
		me := pos[strings.ReplaceAll(strings.TrimSuffix(filepath.Base(p), ".ko"), "-", "_")]
		for _, d := range strings.Split(deps, ",") {
			if d == "" {
				continue
			}
			if i, ok := pos[strings.ReplaceAll(d, "-", "_")]; !ok || i > me {
				t.Errorf("%s depends on %s, which is not loaded before it (order %v)", p, d, names)
			}
		}
	}

	// The slot carries the same kernel, initrd and command line.
	for _, c := range []struct {
		path string
		want []byte
	}{{"/lib/kiln/boot/vmlinuz", kernel}, {"/lib/kiln/boot/initrd.img", initrd}, {"/lib/kiln/boot/cmdline", []byte("console=ttyS0 panic=1 quiet\n")}} {
		got := filepath.Join(dir, "from-usr")
		mustRun(t, "debugfs", "-R", "dump "+c.path+" "+got, usr)
		if b, _ := os.ReadFile(got); !bytes.Equal(b, c.want) {
			t.Errorf("USR-A %s: %d bytes, want %d", c.path, len(b), len(c.want))
		}
	}

	// Reproducible.
	again := filepath.Join(dir, "again")
	build(again)
	mustRun(t, "cmp", filepath.Join(out, "disk.img"), filepath.Join(again, "disk.img"))
}

// TestBootRecipeRefusals: a bootable recipe kiln cannot build as asked is
// refused as bad input (exit 2), naming the key or file, with nothing
// left in OUTDIR.
func TestBootRecipeRefusals(t *testing.T) {
	dir := t.TempDir()
	cache := fetchBootable(t)
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	mustRun(t, kiln, "keygen", "--type", "ecdsa-p256", "-o", filepath.Join(dir, "ec"))
	good := fmt.Sprintf(`  kernel: %[1]s/root/boot/vmlinuz
  modules: %[1]s/root/lib/modules/current
  load: [virtio_pci, virtio_blk, dm_verity]
  stub: %[1]s/root/usr/lib/systemd/boot/efi/linuxx64.efi.stub
  cmdline: "console=ttyS0"
`, cache)
	for _, c := range []struct {
		name, boot string
		sign       bool
		words      []string
	}{
		{"unsigned", good, false, []string{"needs --sign"}},
		{"no kernel", strings.Replace(good, "  kernel:", "  #kernel:", 1), true, []string{"boot.kernel", "missing"}},
		{"kernel missing", strings.Replace(good, "boot/vmlinuz", "boot/no-such-kernel", 1), true, []string{"kernel", "no-such-kernel"}},
		{"unknown module", strings.Replace(good, "dm_verity]", "dm_verity, no_such_module]", 1), true, []string{"kernel module no_such_module"}},
		{"stub not PE", strings.Replace(good, "usr/lib/systemd/boot/efi/linuxx64.efi.stub", "boot/../lib/modules/current/modules.order", 1), true, []string{"stub"}},
		{"sign-kernel without a Secure Boot key", good + "  sign-kernel: true\n", true, []string{"boot.sign-kernel", "needs a Secure Boot key"}},
		{"sb-key without sb-cert", good + "  sb-key: " + snakeoilKey + "\n", true, []string{"boot.sb-cert", "missing"}},
		{"Secure Boot key not RSA", good + "  sb-key: " + filepath.Join(dir, "ec.key") + "\n  sb-cert: " + snakeoilCert + "\n", true, []string{"ec.key"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
			os.Mkdir(d, 0o755)
			recipe := bootableRecipe(t, d, cache, c.boot)
			out := filepath.Join(d, "out")
			args := []string{"build", "-q", recipe, "-o", out}
			if c.sign {
				args = append(args, "--sign", key+".key")
			}
			r := kilnEnv(t, nil, args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
			}
			for _, w := range c.words {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("the error does not say %q:\n%s", w, r.stderr)
				}
			}
			if names := dirNamesOrNil(out); len(names) != 0 {
				t.Errorf("%s holds %v after a refused build", out, names)
			}
		})
	}
}
