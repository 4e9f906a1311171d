package test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The boot tests boot kiln images under UEFI firmware with Secure Boot
// enforced (QEMU, Debian's OVMF secboot build with its snakeoil key
// enrolled, TCG, -nic none), from the disk alone: the firmware finds
// \EFI\BOOT\BOOTX64.EFI on the ESP; no -kernel shortcut. They run in
// parallel (two at a time on two cores); each says what it waits for.

// TestBootLifecycle is kiln's cl.update.payload, under Secure Boot:
// release 1 boots from USR-A; a delta applied offline boots release 2
// from USR-B, which the guest marks good; from inside the guest a delta to
// release 3 goes onto its own passive slot; release 3's init fails, its
// tries run out and the boot path falls back to release 2 by itself; a
// release whose slot data was tampered with is refused by the boot path,
// which falls back again.
func TestBootLifecycle(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	broken := "#!/bin/sh\necho 'KILN-TEST release 3 fails to start'\nexit 1\n"
	r1 := r.build("1.0.0", relOpts{})
	r2 := r.build("2.0.0", relOpts{})
	r3 := r.build("3.0.0", relOpts{init: broken})
	r4 := r.build("4.0.0", relOpts{})
	node := newNode(t, filepath.Join(r1, "disk.img"), "virtio")
	disk := node.disk

	// (1) Release 1 from USR-A, Secure Boot on and the kernel locked down.
	console := node.boot("release-1", bootOpts{})
	expectBooted(t, console, "USR-A 1.0.0")
	expectConsole(t, console, `kiln: Secure Boot: enabled; kernel lockdown: integrity`,
		`KILN-TEST securebootvar=1 lockdown=.*\[integrity\]`)
	// The Xen and Hyper-V disk drivers the recipe loads for other clouds
	// refuse this machine in silence; nothing else failed to load.
	if strings.Contains(console, "kiln: loading module") {
		t.Errorf("a module failed to load:\n%s", tail(console, 60))
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{2, 0, 1} {
		t.Errorf("after release 1's boot USR-A %v, want [2 0 1]", got)
	}
	// (2) The delta 1 → 2, applied offline: release 2 boots from USR-B,
	// its tries lowered by the chooser, and the guest marks it good.
	r.apply(r.payload(r1, r2), disk)
	console = node.boot("release-2", bootOpts{})
	expectBooted(t, console, "USR-B 2.0.0")
	expectConsole(t, console, `kiln: gptprio chose USR-B \(priority=3 tries=0 successful=0\): on trial`, `kiln: reading USR-B's whole dm-verity tree`)
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 0, 1} {
		t.Errorf("after release 2's good boot USR-B %v, want [2 0 1]", got)
	}
	// (3) From inside the guest, the delta 2 → 3 onto its own passive
	// slot (USR-A), read from a second disk.
	console = node.boot("release-2-applies-3", bootOpts{extra: r.payloadDisk(r.payload(r2, r3))})
	expectBooted(t, console, "USR-B 2.0.0")
	if !strings.Contains(console, "KILN-TEST applied") {
		t.Fatalf("the guest did not apply the payload:\n%s", tail(console, 60))
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{3, 1, 0} {
		t.Errorf("after the guest's apply USR-A %v, want on trial [3 1 0]", got)
	}
	// (4) Release 3's init fails before mark-good: the kernel panics and
	// reboots; USR-A's tries are used up, so the chooser falls back to
	// release 2 with no manual step; slot status shows USR-A's failed trial.
	console = node.boot("release-3-fails", bootOpts{})
	if !strings.Contains(console, "KILN-TEST release 3 fails to start") {
		t.Fatalf("release 3 did not start:\n%s", tail(console, 60))
	}
	expectBooted(t, console, "USR-B 2.0.0")
	expectConsole(t, console, `USR-A +3 +3 +0 +false +3\.0\.0 .*on trial, trial failed`)
	if st := statusOf(t, disk); st.Next != "USR-B" || cgptSlot(t, disk, 3) != [3]int{3, 0, 0} {
		t.Errorf("after the failed trial: %+v, USR-A %v", st, cgptSlot(t, disk, 3))
	}
	// (5) Release 4 into USR-A, one byte of its data area changed: the
	// boot path refuses the slot (its verity tree does not match the
	// signed root) and falls back to release 2.
	mustRun(t, kiln, "slot", "rollback", disk) // abandon the failed trial
	r.apply(r.payload("", r4), disk)
	m := readManifest(t, r4)
	usrA := m.Partition("USR-A")
	flip(t, disk, usrA.Offset+usrA.FilesystemSize/2)
	console = node.boot("release-4-tampered", bootOpts{})
	expectConsole(t, console, `kiln: refusing USR-A: .*verity.*out of the boot order`)
	expectBooted(t, console, "USR-B 2.0.0")
	if got := cgptSlot(t, disk, 3); got[0] != 0 {
		t.Errorf("the refused slot is still in the boot order: %v", got)
	}
}

// accessDenied is what OVMF prints when Secure Boot refuses a boot image.
var accessDenied = regexp.MustCompile(`failed to load Boot\d+ .*: Access Denied`)

// TestBootSecureBootRefusesUnsigned: the firmware refuses a chooser that
// is not signed, and one whose signed bytes changed (one byte of its
// kernel section); no kiln code runs.
func TestBootSecureBootRefusesUnsigned(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	unsigned := r.build("1.0.0", relOpts{noSecureBoot: true})
	signed := r.build("1.0.0", relOpts{})
	for _, c := range []struct {
		name, image string
		alter       bool
	}{{"unsigned", unsigned, false}, {"altered", signed, true}} {
		n := newNode(t, filepath.Join(c.image, "disk.img"), "virtio")
		if c.alter {
			editPartition(t, n.disk, "EFI-SYSTEM", func(img string) {
				uki := filepath.Join(t.TempDir(), "BOOTX64.EFI")
				mustRun(t, "mcopy", "-i", img, "::/EFI/BOOT/BOOTX64.EFI", uki)
				if r := run(t, "sbverify", "--cert", snakeoilCert, uki); r.code != 0 {
					t.Fatalf("the built chooser does not verify: %s", r.stderr)
				}
				b, _ := os.ReadFile(uki)
				// A byte of the .linux section: the Debian kernel's own
				// banner string, far from any header.
				i := bytes.Index(b, []byte("Linux version"))
				if i < 0 {
					t.Fatal("no kernel banner in the chooser")
				}
				b[i] ^= 0x20
				os.WriteFile(uki, b, 0o644)
				mustRun(t, "mcopy", "-o", "-i", img, uki, "::/EFI/BOOT/BOOTX64.EFI")
			})
		}
		console := n.boot("secure-boot-"+c.name, bootOpts{until: accessDenied})
		if strings.Contains(console, "kiln:") {
			t.Errorf("%s: kiln's chooser ran under Secure Boot:\n%s", c.name, tail(console, 40))
		}
	}
}

// TestBootDisks boots the lifecycle's first steps from a virtio-scsi and
// an NVMe disk: release 1, marked good with no disk named, applies the
// delta to release 2 from inside the guest; release 2 boots on trial and
// is marked good. On the NVMe machine the OEM partition names an init
// of its own (/oem/evil.sh): refused, the default init on /usr runs. On
// the SCSI machine ROOT holds a /sbin of its own with an init in it and
// OEM names /sbin/init: ROOT's /sbin is moved aside, /sbin is the link
// into /usr, and the init that runs is /usr's.
func TestBootDisks(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	r1 := r.build("1.0.0", relOpts{})
	r2 := r.build("2.0.0", relOpts{})
	pd := r.payloadDisk(r.payload(r1, r2))
	evil := "#!/bin/sh\necho KILN-TEST evil init ran\npoweroff -f\n"
	for _, iface := range []string{"scsi", "nvme"} {
		n := newNode(t, filepath.Join(r1, "disk.img"), iface)
		src := filepath.Join(t.TempDir(), "evil.sh")
		conf := filepath.Join(t.TempDir(), "kiln.conf")
		os.WriteFile(src, []byte(evil), 0o755)
		switch iface {
		case "nvme":
			os.WriteFile(conf, []byte("init=/oem/evil.sh\n"), 0o644)
			editPartition(t, n.disk, "OEM", func(img string) {
				mustRun(t, "debugfs", "-w", "-R", "rm /kiln.conf", img)
				mustRun(t, "debugfs", "-w", "-R", "write "+conf+" /kiln.conf", img)
				mustRun(t, "debugfs", "-w", "-R", "write "+src+" /evil.sh", img)
				mustRun(t, "debugfs", "-w", "-R", "sif /evil.sh mode 0100755", img)
			})
		case "scsi":
			os.WriteFile(conf, []byte("init=/sbin/init\n"), 0o644)
			editPartition(t, n.disk, "OEM", func(img string) {
				mustRun(t, "debugfs", "-w", "-R", "rm /kiln.conf", img)
				mustRun(t, "debugfs", "-w", "-R", "write "+conf+" /kiln.conf", img)
			})
			editPartition(t, n.disk, "ROOT", func(img string) {
				mustRun(t, "debugfs", "-w", "-R", "mkdir /sbin", img)
				mustRun(t, "debugfs", "-w", "-R", "write "+src+" /sbin/init", img)
				mustRun(t, "debugfs", "-w", "-R", "sif /sbin/init mode 0100755", img)
			})
		}
		console := n.boot(iface+"-release-1", bootOpts{extra: pd})
		expectBooted(t, console, "USR-A 1.0.0")
		if strings.Contains(console, "KILN-TEST evil init ran") {
			t.Fatalf("%s: an init from a writable partition ran:\n%s", iface, tail(console, 40))
		}
		switch iface {
		case "nvme":
			expectConsole(t, console, `kiln: disk /dev/nvme0n1`, `kiln: refusing init=/oem/evil.sh from OEM's kiln.conf: /oem/evil.sh is not under /usr; starting /usr/sbin/init`)
		case "scsi":
			expectConsole(t, console, `kiln: disk /dev/sda`, `kiln: ROOT's /sbin was not the link usr/sbin: moved to /sbin.kiln-refused`, `starting /sbin/init`)
		}
		if !strings.Contains(console, "KILN-TEST applied") {
			t.Fatalf("%s: the guest did not apply the payload:\n%s", iface, tail(console, 60))
		}
		console = n.boot(iface+"-release-2", bootOpts{})
		expectBooted(t, console, "USR-B 2.0.0")
		if got := cgptSlot(t, n.disk, 4); got != [3]int{2, 0, 1} {
			t.Errorf("%s: after release 2's boot USR-B %v, want [2 0 1]", iface, got)
		}
	}
}

// goodPair returns a disk holding release 1 in USR-A and release 2 (with
// opts) in USR-B, both marked good, USR-B booting next: a node after a
// good update.
func goodPair(t *testing.T, r *bootReleases, v2 string, opts relOpts) (disk, r1, r2 string) {
	t.Helper()
	r1 = r.build("1.0.0", relOpts{})
	r2 = r.build(v2, opts)
	disk = filepath.Join(t.TempDir(), "pair.img")
	copyFile(t, filepath.Join(r1, "disk.img"), disk)
	r.apply(r.payload("", r2), disk)
	mustRun(t, kiln, "slot", "mark-good", disk, "USR-B")
	return disk, r1, r2
}

// TestBootCorruptGoodSlot: a slot marked good whose data goes bad later
// falls back to the other slot within two boots, and one whose kernel
// went bad falls back at once. (1) A block of busybox, which the init
// runs, flipped on USR-B: dm-verity restarts the machine at the first
// read; on the next boot the chooser sees the boot was not confirmed,
// reads the whole tree, refuses USR-B and boots USR-A. (2) A block of
// USR-B's kernel flipped: kexec_file_load reads it through dm-verity,
// fails, and the chooser boots USR-A in the same boot. (3) Both kernels
// bad: no slot can boot; the chooser says why and powers off.
func TestBootCorruptGoodSlot(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	pair, r1, r2 := goodPair(t, r, "2.0.0", relOpts{})
	slotB := sfdisk(t, pair).PartitionTable.Partitions[3]
	if slotB.Name != "USR-B" {
		t.Fatalf("partition 4 is %s", slotB.Name)
	}
	base := int64(slotB.Start) * 512

	// (1) Data that the running system reads.
	n := newNode(t, pair, "virtio")
	flip(t, n.disk, base+blockOf(t, r2, "/bin/busybox")+100)
	console := n.boot("good-slot-goes-bad", bootOpts{})
	expectBooted(t, console, "USR-A 1.0.0")
	if k := strings.Count(console, "kiln: Secure Boot:"); k != 2 {
		t.Errorf("the chooser ran %d times, want 2 (the bad boot, then the fallback)", k)
	}
	expectConsole(t, console, `device-mapper: verity: .*data block .* is corrupted`,
		`kiln: gptprio chose USR-B \(priority=2 tries=2 successful=1\): good, but its last 1 boot\(s\) were not confirmed`,
		`kiln: refusing USR-B: .*out of the boot order`)
	if got := cgptSlot(t, n.disk, 4); got[0] != 0 {
		t.Errorf("USR-B is still in the boot order: %v", got)
	}

	// (2) The slot's kernel.
	n = newNode(t, pair, "virtio")
	flip(t, n.disk, base+blockOf(t, r2, "/lib/kiln/boot/vmlinuz")+4096*8)
	console = n.boot("good-slot-kernel-goes-bad", bootOpts{})
	expectBooted(t, console, "USR-A 1.0.0")
	if k := strings.Count(console, "kiln: Secure Boot:"); k != 1 {
		t.Errorf("the chooser ran %d times, want 1", k)
	}
	expectConsole(t, console, `kiln: refusing USR-B: kexec_file_load \(dm-verity found a bad block in the kernel or initrd\): input/output error; out of the boot order`)

	// (3) Both slots' kernels bad: nothing verifies, the chooser says why
	// for each slot and powers the machine off.
	n = newNode(t, pair, "virtio")
	slotA := sfdisk(t, pair).PartitionTable.Partitions[2]
	flip(t, n.disk, base+blockOf(t, r2, "/lib/kiln/boot/vmlinuz")+4096*8)
	flip(t, n.disk, int64(slotA.Start)*512+blockOf(t, r1, "/lib/kiln/boot/vmlinuz")+4096*8)
	console = n.boot("both-slots-bad", bootOpts{})
	expectBooted(t, console)
	expectConsole(t, console, `kiln: boot failed: /dev/vda: no slot can boot .*USR-A: kexec_file_load .*input/output error; USR-B: kexec_file_load .*input/output error`,
		`kiln: powering off`)
}

// TestBootVersionFloor: a release that declares a rollback floor, once
// marked good, keeps older releases from booting, and a TPM keeps the
// floor where an offline edit of the disk cannot lower it. Release 2.1.0
// (rollback-floor 2.1.0) is good in USR-B, 1.0.0 good in USR-A. (1) A
// boot with a TPM: the chooser raises the TPM's floor to 2.1.0. (2) An
// attacker with the disk but no key raises USR-A with cgpt and makes
// USR-B look failed, so the disk itself declares no floor: the chooser
// refuses 1.0.0 by the TPM's floor and, with nothing else in the boot
// order, boots 2.1.0 as its last resort. (3) The same disk on a machine
// without a TPM boots 1.0.0: what docs/boot.md says an offline attacker
// can still do there. (4) Without a TPM but with USR-B still good, the
// floor USR-B declares refuses USR-A raised by cgpt.
func TestBootVersionFloor(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	pair, _, _ := goodPair(t, r, "2.1.0", relOpts{floor: "2.1.0"})
	n := newNode(t, pair, "virtio")
	n.tpm = filepath.Join(t.TempDir(), "tpm")
	console := n.boot("floor-raised", bootOpts{})
	expectBooted(t, console, "USR-B 2.1.0")
	expectConsole(t, console, `kiln: version floor raised to 2\.1\.0 \(declared by USR-B's release 2\.1\.0, marked good\) in the TPM`)

	attack := func(disk string) {
		mustRun(t, "cgpt", "add", "-i", "3", "-P", "5", "-S", "1", "-T", "0", disk)
		mustRun(t, "cgpt", "add", "-i", "4", "-P", "1", "-S", "0", "-T", "0", disk)
	}
	clean := filepath.Join(t.TempDir(), "after-boot.img")
	copyFile(t, n.disk, clean)
	// slot status shows the floor the disk declares and the slot below it.
	st := mustRun(t, kiln, "slot", "status", clean, "--key", r.key+".pub")
	for _, want := range []string{"version floor: 2.1.0, declared by USR-B's release 2.1.0, marked good", "below the version floor"} {
		if !strings.Contains(st, want) {
			t.Errorf("slot status does not say %q:\n%s", want, st)
		}
	}
	attack(n.disk)
	console = n.boot("floor-in-tpm", bootOpts{})
	expectConsole(t, console, `kiln: refusing USR-A: .*release 1\.0\.0 is below the version floor 2\.1\.0 \(kept in the TPM`,
		`kiln: no slot is bootable by the boot order; last resort: checking USR-B \(2\.1\.0\) whole`)
	expectBooted(t, console, "USR-B 2.1.0")

	noTPM := newNode(t, clean, "virtio")
	attack(noTPM.disk)
	console = noTPM.boot("floor-without-tpm", bootOpts{})
	expectConsole(t, console, `kiln: no TPM`)
	expectBooted(t, console, "USR-A 1.0.0")

	noTPM = newNode(t, clean, "virtio")
	mustRun(t, "cgpt", "add", "-i", "3", "-P", "5", noTPM.disk)
	console = noTPM.boot("floor-on-disk", bootOpts{})
	expectConsole(t, console, `kiln: refusing USR-A: .*release 1\.0\.0 is below the version floor 2\.1\.0 \(declared by USR-B's release 2\.1\.0`)
	expectBooted(t, console, "USR-B 2.1.0")
}

// TestBootKernelKeys: under lockdown kexec_file_load takes only kernels
// the kernel's keyrings trust, the firmware's db among them. The test
// releases' slot kernels are signed with the db key (snakeoil) and boot
// (every other boot test shows it); a slot that keeps Debian's own
// signature is refused with a console line, for this boot only, and the
// next slot boots.
func TestBootKernelKeys(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	r1 := r.build("1.0.0", relOpts{})
	deb := r.build("2.0.0", relOpts{debianKernel: true})
	n := newNode(t, filepath.Join(r1, "disk.img"), "virtio")
	r.apply(r.payload(r1, deb), n.disk)
	console := n.boot("debian-signed-kernel", bootOpts{})
	expectConsole(t, console, `kiln: refusing USR-B: kexec_file_load \(under lockdown .*\): required key not available; skipped for this boot`)
	expectBooted(t, console, "USR-A 1.0.0")
}

// TestBootOnlyGoodSlot runs the commands of a node that abandons a trial
// in the middle of its boot, on the node itself (where the booted slot is
// proven by /usr): booted from USR-B on trial, `slot rollback` takes
// USR-B out of the boot order; `payload apply` in the same boot would now
// write USR-A, the only good slot: refused, USR-A untouched; rollback run
// again changes nothing; mark-bootable of USR-A would clear its successful
// bit: refused too. Then /usr is hidden under a tmpfs (as an overlay
// would): mark-good cannot prove which slot booted and refuses.
func TestBootOnlyGoodSlot(t *testing.T) {
	t.Parallel()
	r := newReleases(t)
	r1 := r.build("1.0.0", relOpts{})
	r2 := r.build("2.0.0", relOpts{})
	r3 := r.build("3.0.0", relOpts{})
	n := newNode(t, filepath.Join(r1, "disk.img"), "virtio")
	r.apply(r.payload(r1, r2), n.disk)
	script := `export PATH=/usr/bin:/usr/sbin
kiln slot rollback; echo "KILN-TEST rollback exit $?"
kiln slot rollback; echo "KILN-TEST rollback again exit $?"
kiln payload apply -q /mnt/update.payload --key /usr/share/kiln/release.pub; echo "KILN-TEST apply exit $?"
kiln slot mark-bootable /dev/vda USR-A --manifest /mnt/manifest.json --key /usr/share/kiln/release.pub; echo "KILN-TEST mark-bootable exit $?"
mkdir -p /run/k && mount -t tmpfs tmpfs /run/k && cp /usr/bin/kiln /usr/bin/busybox /run/k/
mount -t tmpfs tmpfs /usr
/run/k/kiln slot mark-good /dev/vda; echo "KILN-TEST mark-good exit $?"
/run/k/busybox sync
/run/k/busybox poweroff -f
`
	pd := r.scriptDisk(r.payload("", r3), script, filepath.Join(r1, "manifest.json"), filepath.Join(r1, "manifest.json.sig"))
	console := n.boot("rollback-then-apply", bootOpts{extra: pd})
	expectConsole(t, console,
		`/dev/vda: USR-A boots next`, `KILN-TEST rollback exit 0`,
		`nothing changed: USR-A boots next already`, `KILN-TEST rollback again exit 0`,
		`USR-A is the only slot in the boot order that has booted successfully .*writing it would leave no slot known to boot`, `KILN-TEST apply exit 1`,
		`USR-A is the only slot in the boot order that has booted successfully .*putting it on trial`, `KILN-TEST mark-bootable exit 1`,
		`which slot booted cannot be proven; name the slot`, `KILN-TEST mark-good exit 2`)
	if got := cgptSlot(t, n.disk, 3); got != [3]int{1, 0, 1} {
		t.Errorf("USR-A, the only good slot, changed: %v", got)
	}
	if got := cgptSlot(t, n.disk, 4); got != [3]int{0, 0, 0} {
		t.Errorf("USR-B after the rollback: %v", got)
	}
	// USR-A's data is release 1's, whole.
	mustRun(t, kiln, "slot", "verify", n.disk, "USR-A", "--manifest", filepath.Join(r1, "manifest.json"), "--key", r.key+".pub")
}
