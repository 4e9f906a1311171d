package test

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-os/kiln/build/manifest"
)

// smallLayout is the coreos partition set at sizes that make tests fast.
const smallLayout = `name: small
alignment: 1MiB
partitions:
  - {number: 1, label: EFI-SYSTEM, type: esp, size: 40MiB, filesystem: vfat}
  - {number: 2, label: BIOS-BOOT, type: bios-boot, size: 1MiB}
  - {number: 3, label: USR-A, type: coreos-usr, size: 64MiB, filesystem: ext4, fs-size: 60MiB, verity: true, slot: {priority: 1, successful: true}}
  - {number: 4, label: USR-B, type: coreos-usr, size: 64MiB}
  - {number: 5, label: ROOT-C, type: blank}
  - {number: 6, label: OEM, type: linux-data, size: 16MiB, filesystem: ext4}
  - {number: 9, label: ROOT, type: coreos-resize, size: rest, min-size: 16MiB, filesystem: ext4}
`

// buildSmall builds a small signed image with the given key and returns
// the output directory.
func buildSmall(t *testing.T, dir, key string, extra ...string) string {
	t.Helper()
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	usr := filepath.Join(dir, "usr")
	os.MkdirAll(filepath.Join(usr, "bin"), 0o755)
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 31 / 7)
	}
	os.WriteFile(filepath.Join(usr, "bin", "big"), big, 0o755)
	os.WriteFile(filepath.Join(usr, "bin", "small"), []byte("small\n"), 0o644)
	recipe := filepath.Join(dir, "small-recipe.yaml")
	os.WriteFile(recipe, []byte(`name: small
version: 1.0.0
layout: small.yaml
partitions:
  EFI-SYSTEM:
    files: [{path: /EFI/BOOT/BOOTX64.EFI, content: "x"}]
  USR-A:
    source: dir:usr
  OEM: {}
  ROOT: {}
`), 0o644)
	out := filepath.Join(dir, "out")
	args := append([]string{"build", "-q", recipe, "-o", out, "--sign", key}, extra...)
	if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, args...); r.code != 0 {
		t.Fatalf("build: %s", r.stderr)
	}
	return out
}

func TestSignVerifyEachKeyType(t *testing.T) {
	for _, typ := range []string{"ecdsa-p256", "ed25519", "rsa-3072"} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			key := filepath.Join(dir, "release")
			mustRun(t, kiln, "keygen", "--type", typ, "-o", key)
			st, err := os.Stat(key + ".key")
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("key file mode %v %v", st.Mode(), err)
			}
			out := buildSmall(t, dir, key+".key")
			man := filepath.Join(out, "manifest.json")
			// openssl agrees with the signature kiln wrote.
			sig, _ := os.ReadFile(man + ".sig")
			raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sig)))
			if err != nil {
				t.Fatal(err)
			}
			bin := filepath.Join(dir, "sig.bin")
			os.WriteFile(bin, raw, 0o644)
			if typ == "ed25519" {
				mustRun(t, "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", key+".pub", "-rawin", "-in", man, "-sigfile", bin)
			} else {
				mustRun(t, "openssl", "dgst", "-sha256", "-verify", key+".pub", "-signature", bin, man)
			}
			r := run(t, kiln, "verify", filepath.Join(out, "disk.img"), "--key", key+".pub")
			if r.code != 0 || !strings.Contains(r.stdout, "verifies") {
				t.Fatalf("verify: %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			for _, check := range []string{"signature", "gpt", "digest USR-A", "verity USR-A", "digest ROOT"} {
				if !strings.Contains(r.stdout, "ok   "+check) {
					t.Errorf("verify output lacks %q:\n%s", check, r.stdout)
				}
			}
		})
	}
}

// verifyFails runs kiln verify and expects exit 1 with a FAIL line for
// check containing want.
func verifyFails(t *testing.T, check, want string, args ...string) {
	t.Helper()
	r := run(t, kiln, append([]string{"verify"}, args...)...)
	if r.code != 1 {
		t.Errorf("%s: exit %d, want 1\n%s%s", check, r.code, r.stdout, r.stderr)
		return
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(line, "FAIL "+check) && strings.Contains(line, want) {
			return
		}
	}
	t.Errorf("%s: no FAIL line with %q:\n%s", check, want, r.stdout)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	mustRun(t, "cp", "--sparse=always", src, dst)
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x5a
	f.WriteAt(b, off)
}

func TestVerifyNamesEachTampering(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "other"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"))
	pub := filepath.Join(dir, "k.pub")
	disk := filepath.Join(out, "disk.img")
	var m manifest.Manifest
	b, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	json.Unmarshal(b, &m)
	usr := m.Partition("USR-A")

	// tampered returns a copy of the output directory to damage.
	tampered := func(name string) string {
		d := filepath.Join(dir, name)
		os.MkdirAll(d, 0o755)
		for _, f := range []string{"disk.img", "usr.img", "manifest.json", "manifest.json.sig"} {
			copyFile(t, filepath.Join(out, f), filepath.Join(d, f))
		}
		return d
	}

	verifyFails(t, "signature", "does not verify", disk, "--key", filepath.Join(dir, "other.pub"))

	d := tampered("sig")
	sig, _ := os.ReadFile(filepath.Join(d, "manifest.json.sig"))
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sig)))
	raw[len(raw)/2] ^= 1
	os.WriteFile(filepath.Join(d, "manifest.json.sig"), []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o644)
	verifyFails(t, "signature", "does not verify", filepath.Join(d, "disk.img"), "--key", pub)

	d = tampered("truncated-sig")
	os.WriteFile(filepath.Join(d, "manifest.json.sig"), sig[:10], 0o644)
	verifyFails(t, "signature", "malformed", filepath.Join(d, "disk.img"), "--key", pub)

	d = tampered("no-sig")
	os.Remove(filepath.Join(d, "manifest.json.sig"))
	verifyFails(t, "signature", "missing", filepath.Join(d, "disk.img"), "--key", pub)

	d = tampered("manifest")
	mb, _ := os.ReadFile(filepath.Join(d, "manifest.json"))
	os.WriteFile(filepath.Join(d, "manifest.json"), []byte(strings.Replace(string(mb), `"version": "1.0.0"`, `"version": "9.0.0"`, 1)), 0o644)
	verifyFails(t, "signature", "does not verify", filepath.Join(d, "disk.img"), "--key", pub)

	// The GPT: resize USR-B with sgdisk (a valid GPT that differs).
	d = tampered("gpt")
	mustRun(t, "sgdisk", "-d", "4", "-n", "4:0:+32M", "-t", "4:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "-c", "4:USR-B", "-u", "4:"+m.Partition("USR-B").GUID.String(), filepath.Join(d, "disk.img"))
	verifyFails(t, "gpt", "partition 4 (USR-B): [size", filepath.Join(d, "disk.img"), "--key", pub)

	// A manifest for another image: same key, another build.
	other := t.TempDir()
	otherOut := buildSmall(t, other, filepath.Join(dir, "k.key"), "--set", "version=1.0.1")
	verifyFails(t, "gpt", "a manifest for another image", disk, "--key", pub, "--manifest", filepath.Join(otherOut, "manifest.json"))

	// A data block of USR-A: named with the first bad 4 KiB block.
	d = tampered("data")
	flip(t, filepath.Join(d, "disk.img"), usr.Offset+3*4096+100)
	verifyFails(t, "digest USR-A", "USR-A: digest", filepath.Join(d, "disk.img"), "--key", pub)
	verifyFails(t, "verity USR-A", "data block 3 ", filepath.Join(d, "disk.img"), "--key", pub)

	// A hash-tree block (level 1 starts one block after the superblock).
	d = tampered("hash")
	flip(t, filepath.Join(d, "disk.img"), usr.Offset+usr.Verity.HashOffset+4096+8)
	verifyFails(t, "verity USR-A", "verity", filepath.Join(d, "disk.img"), "--key", pub)

	// The verity superblock's data block count.
	d = tampered("superblock")
	f, _ := os.OpenFile(filepath.Join(d, "disk.img"), os.O_RDWR, 0)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], usr.Verity.DataBlocks-1)
	f.WriteAt(n[:], usr.Offset+usr.Verity.HashOffset+72)
	f.Close()
	verifyFails(t, "verity USR-A", "verity", filepath.Join(d, "disk.img"), "--key", pub)

	// Another partition's byte: its sha256 line fails, the rest pass.
	d = tampered("root")
	flip(t, filepath.Join(d, "disk.img"), m.Partition("ROOT").Offset+5000)
	verifyFails(t, "digest ROOT", "ROOT: digest", filepath.Join(d, "disk.img"), "--key", pub)

	// A lone partition image.
	if r := run(t, kiln, "verify", "--partition", "USR-A", filepath.Join(out, "usr.img"), "--key", pub); r.code != 0 {
		t.Errorf("verify usr.img: %s%s", r.stdout, r.stderr)
	}
	d = tampered("usr")
	flip(t, filepath.Join(d, "usr.img"), 7*4096)
	verifyFails(t, "verity USR-A", "data block 7 ", "--partition", "USR-A", filepath.Join(d, "usr.img"), "--key", pub)

	// JSON gives the same verdicts.
	r := run(t, kiln, "verify", "--json", filepath.Join(d, "usr.img"), "--partition", "USR-A", "--key", pub)
	var rep struct {
		OK     bool `json:"ok"`
		Checks []struct {
			Name string `json:"name"`
			OK   bool   `json:"ok"`
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.OK || r.code != 1 {
		t.Errorf("json: %v %+v", err, rep)
	}
}

func TestEncryptedKeyNeedsPassphrase(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "enc")
	if r := kilnEnv(t, []string{"KILN_KEY_PASSWORD=correct horse"}, "keygen", "-o", key); r.code != 0 {
		t.Fatal(r.stderr)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("payload"), 0o644)
	r := kilnEnv(t, nil, "sign", file, "--key", key+".key")
	if r.code != 2 || !strings.Contains(r.stderr, "KILN_KEY_PASSWORD") || strings.Contains(r.stderr, "PRIVATE KEY") {
		t.Errorf("sign without passphrase: %+v", r)
	}
	if r := kilnEnv(t, []string{"KILN_KEY_PASSWORD=correct horse"}, "sign", file, "--key", key+".key"); r.code != 0 {
		t.Errorf("sign with passphrase: %+v", r)
	}
	sig, _ := os.ReadFile(file + ".sig")
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sig)))
	os.WriteFile(file+".bin", raw, 0o644)
	mustRun(t, "openssl", "dgst", "-sha256", "-verify", key+".pub", "-signature", file+".bin", file)
}

// TestVerifyCoversEveryByte: each byte outside the partitions that the
// last round found unchecked now fails the built-image check, naming its
// region; sgdisk still calls the GPT valid in most of these cases, so only
// a byte-for-byte check catches them.
func TestVerifyCoversEveryByte(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"))
	pub := filepath.Join(dir, "k.pub")
	m := readManifest(t, out)
	if r := run(t, kiln, "verify", filepath.Join(out, "disk.img"), "--key", pub); r.code != 0 {
		t.Fatalf("the built image does not verify: %s%s", r.stdout, r.stderr)
	}
	n := 0
	tampered := func(edit func(disk string)) string {
		n++
		d := filepath.Join(dir, fmt.Sprintf("t%d", n))
		os.MkdirAll(d, 0o755)
		for _, f := range []string{"disk.img", "manifest.json", "manifest.json.sig"} {
			copyFile(t, filepath.Join(out, f), filepath.Join(d, f))
		}
		edit(filepath.Join(d, "disk.img"))
		return filepath.Join(d, "disk.img")
	}
	size := m.DiskSize
	cases := []struct {
		check, want string
		edit        func(disk string)
	}{
		{"mbr", "sector 0", func(d string) { flip(t, d, 100) }},                 // boot code
		{"primary gpt", "sectors 1-33", func(d string) { flip(t, d, 512+200) }}, // reserved header bytes, outside the CRC
		{"backup gpt", "last 33 sectors", func(d string) {
			f, _ := os.OpenFile(d, os.O_RDWR, 0)
			f.WriteAt(make([]byte, 33*512), size-33*512)
			f.Close()
		}},
		{"gaps", "outside the partitions", func(d string) { flip(t, d, 34*512+4096) }},
		{"primary gpt", "initial slot attributes", func(d string) {
			mustRun(t, "cgpt", "add", "-i", "4", "-P", "1", "-T", "1", d)
		}},
	}
	for _, c := range cases {
		verifyFails(t, c.check, c.want, tampered(c.edit), "--key", pub)
	}
	// A foreign backup: another build's, same layout, other seed.
	other := t.TempDir()
	otherOut := buildSmall(t, other, filepath.Join(dir, "k.key"), "--set", "seed=other")
	verifyFails(t, "backup gpt", "changed", tampered(func(d string) {
		src, _ := os.Open(filepath.Join(otherOut, "disk.img"))
		b := make([]byte, 33*512)
		src.ReadAt(b, size-33*512)
		src.Close()
		f, _ := os.OpenFile(d, os.O_RDWR, 0)
		f.WriteAt(b, size-33*512)
		f.Close()
	}), "--key", pub)
}

// TestVerifyDeployedDisk: a disk in use passes the deployed-disk check
// after its writable parts and slot bits change, and fails it when a slot
// in the boot order is damaged; the built-image check fails it.
func TestVerifyDeployedDisk(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"))
	pub := filepath.Join(dir, "k.pub")
	m := readManifest(t, out)
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(out, "disk.img"), disk)
	// The node runs: ESP, OEM and ROOT are written, the slot bits change.
	for _, p := range []string{"EFI-SYSTEM", "OEM", "ROOT"} {
		flip(t, disk, m.Partition(p).Offset+8192)
	}
	mustRun(t, "cgpt", "add", "-i", "3", "-P", "2", disk)
	r := run(t, kiln, "verify", "--deployed", disk, "--key", pub, "--manifest", filepath.Join(out, "manifest.json"))
	if r.code != 0 || !strings.Contains(r.stdout, "ok   slot USR-A") || !strings.Contains(r.stdout, "ok   verity USR-A") {
		t.Fatalf("deployed check: %s%s", r.stdout, r.stderr)
	}
	verifyFails(t, "digest ROOT", "ROOT: digest", disk, "--key", pub, "--manifest", filepath.Join(out, "manifest.json"))
	// A data block of USR-A, the booted slot: the deployed check fails.
	flip(t, disk, m.Partition("USR-A").Offset+5*4096+1)
	verifyFails(t, "verity USR-A", "data block 5 ", "--deployed", disk, "--key", pub)
	// Another key: the record does not verify.
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "other"))
	verifyFails(t, "slot USR-A", "signature", "--deployed", disk, "--key", filepath.Join(dir, "other.pub"))
}

// TestVerifyDeployedInterruptedGPT: a write killed between kiln's two GPT
// copies leaves them different, or one torn. The deployed-disk check
// passes with a warning that names the damage (the copy readers use is
// whole), while `layout check` and the built-image check fail; with no
// valid copy left, the deployed check fails.
func TestVerifyDeployedInterruptedGPT(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"))
	pub := filepath.Join(dir, "k.pub")
	built := filepath.Join(out, "disk.img")
	disk := filepath.Join(dir, "disk.img")
	size := fileSize(t, built)
	backupAt := size - 33*512
	for _, c := range []struct {
		name, want string
		damage     func()
	}{
		{"differ", "the backup GPT differs from the primary", func() {
			// The primary gets USR-A's new bits, the backup keeps the old
			// ones: what a kill between the two copies leaves.
			old := readAt(t, disk, backupAt, 33*512)
			mustRun(t, "cgpt", "add", "-i", "3", "-P", "2", disk)
			writeAt(t, disk, backupAt, old)
		}},
		{"torn backup", "backup GPT damaged: GPT: partition array CRC mismatch", func() {
			flip(t, disk, backupAt+100)
		}},
		{"torn primary", "primary GPT damaged: GPT: header CRC mismatch", func() {
			flip(t, disk, 512+80)
		}},
	} {
		copyFile(t, built, disk)
		c.damage()
		for _, args := range [][]string{
			{"verify", "--deployed", disk, "--key", pub},
			{"verify", "--deployed", disk, "--key", pub, "--manifest", filepath.Join(out, "manifest.json")},
		} {
			r := run(t, kiln, args...)
			if r.code != 0 || !strings.Contains(r.stdout, "warn gpt") || !strings.Contains(r.stdout, c.want) || !strings.Contains(r.stdout, "ok   verity USR-A") {
				t.Errorf("%s: %v: exit %d\n%s%s", c.name, args[1:], r.code, r.stdout, r.stderr)
			}
		}
		if r := run(t, kiln, "layout", "check", "--layout", filepath.Join(dir, "small.yaml"), disk); r.code != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: layout check: exit %d\n%s%s", c.name, r.code, r.stdout, r.stderr)
		}
		verifyFails(t, "gpt", c.want, disk, "--key", pub, "--manifest", filepath.Join(out, "manifest.json"))
	}
	// Both copies torn: nothing to read, the deployed check fails.
	copyFile(t, built, disk)
	flip(t, disk, backupAt+100)
	flip(t, disk, 512+80)
	verifyFails(t, "gpt", "no valid GPT", "--deployed", disk, "--key", pub)
}

// fileSize returns the size of the file at path.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// readAt returns n bytes of the file at path from off.
func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeAt writes b into the file at path at off.
func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
