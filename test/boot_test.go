package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// bootTimeout bounds one QEMU run: firmware, the chooser's kernel, the
// slot's kernel and its init, twice when a failed trial reboots into the
// fallback. Measured here (TCG, 2 cores): 16-24 s for one boot, 50 s for
// a failed trial and its fallback, 68 s for a boot that applies a delta.
const bootTimeout = 150 * time.Second

// bootCache is where recipes/bootable/fetch.sh keeps Debian's packages.
func bootCache(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(cache, "kiln", "bootable")
}

// fetchBootable runs recipes/bootable/fetch.sh (Debian's cloud kernel,
// systemd's UEFI stub and busybox, cached; the release's /usr remade with
// this kiln) and returns its directory.
func fetchBootable(t *testing.T) string {
	t.Helper()
	cache := bootCache(t)
	fetch, _ := filepath.Abs("../recipes/bootable/fetch.sh")
	if r := run(t, "sh", fetch, cache, kiln); r.code != 0 {
		t.Fatalf("fetch.sh: %s%s", r.stdout, r.stderr)
	}
	return cache
}

// vm is a disk booted under QEMU with OVMF, as a user would: the firmware
// finds \EFI\BOOT\BOOTX64.EFI on the ESP; no -kernel shortcut.
type vm struct {
	t    *testing.T
	disk string
}

// boot runs the VM until it powers off (or bootTimeout), with extra as a
// second virtio disk when not "", and returns the serial console.
func (v vm) boot(name, extra string) string {
	t := v.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	args := []string{"-machine", "q35", "-m", "512", "-bios", "/usr/share/ovmf/OVMF.fd", "-nic", "none",
		"-display", "none", "-serial", "stdio", "-monitor", "none",
		"-drive", "file=" + v.disk + ",format=raw,if=virtio"}
	if extra != "" {
		args = append(args, "-drive", "file="+extra+",format=raw,if=virtio,readonly=on")
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	console := string(out)
	os.WriteFile(filepath.Join(t.TempDir(), name+".console"), out, 0o644)
	if ctx.Err() != nil {
		t.Fatalf("%s: no power-off within %v; console:\n%s", name, bootTimeout, tail(console, 60))
	}
	if err != nil {
		t.Fatalf("%s: qemu: %v\n%s", name, err, tail(console, 60))
	}
	t.Logf("%s: powered off after %v", name, time.Since(start).Round(100*time.Millisecond))
	return console
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var bootedRE = regexp.MustCompile(`KILN-TEST booted=(\S+) version=(\S+)`)

// booted returns every "KILN-TEST booted=SLOT version=V" the guest printed,
// as "SLOT V".
func booted(console string) []string {
	var out []string
	for _, m := range bootedRE.FindAllStringSubmatch(console, -1) {
		out = append(out, m[1]+" "+m[2])
	}
	return out
}

// TestBootLifecycle boots kiln images under UEFI firmware (QEMU, OVMF,
// TCG) through the whole A/B life of a node, as Container Linux's
// cl.update.payload does: release 1 boots from USR-A; a delta applied
// offline boots release 2 from USR-B, which the guest marks good; from
// inside the guest a delta to release 3 goes onto its own passive slot;
// release 3's init fails, its tries run out and the firmware path falls
// back to release 2 by itself; a release whose slot data was tampered
// with is refused by the boot path, which falls back again.
func TestBootLifecycle(t *testing.T) {
	for _, tool := range []string{"qemu-system-x86_64", "/usr/share/ovmf/OVMF.fd", "apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil && !fileExists(tool) {
			t.Fatalf("%s is missing (make test installs qemu-system-x86 and ovmf)", tool)
		}
	}
	dir := t.TempDir()
	cache := fetchBootable(t)
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	recipe := bootableRecipe(t, dir, cache, "") // each release's /usr by --set below
	// The guest's init: report the booted slot and release, bless the
	// slot, apply a payload found on a second disk, power off. Release 3's
	// init fails at once.
	good := `#!/bin/sh
export PATH=/usr/bin:/usr/sbin
st=$(kiln slot status)
echo "$st"
b=$(echo "$st" | grep '^booted:' | cut -d: -f2 | tr -d ' ')
v=$(echo "$st" | awk -v s="$b" '$1 == s {print $6}')
echo "KILN-TEST booted=$b version=$v"
kiln slot mark-good
if [ -b /dev/vdb ]; then
	mkdir -p /mnt && mount -o ro /dev/vdb /mnt &&
	kiln payload apply -q /mnt/update.payload --key /usr/share/kiln/release.pub && echo "KILN-TEST applied"
fi
sync
poweroff -f
`
	broken := "#!/bin/sh\necho 'KILN-TEST release 3 fails to start'\nexit 1\n"
	releases := map[string]string{}
	for _, v := range []string{"1.0.0", "2.0.0", "3.0.0", "4.0.0"} {
		usr := filepath.Join(dir, "usr-"+v)
		mustRun(t, "cp", "-a", filepath.Join(cache, "usr"), usr)
		init := good
		if v == "3.0.0" {
			init = broken
		}
		os.WriteFile(filepath.Join(usr, "lib", "bootable", "init"), []byte(init), 0o755)
		os.MkdirAll(filepath.Join(usr, "share", "kiln"), 0o755)
		mustRun(t, "cp", key+".pub", filepath.Join(usr, "share", "kiln", "release.pub"))
		os.WriteFile(filepath.Join(usr, "lib", "os-release"), []byte("VERSION="+v+"\n"), 0o644)
		out := filepath.Join(dir, "out-"+v)
		r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", recipe, "-o", out, "--sign", key+".key",
			"--set", "version="+v, "--set", "partitions.USR-A.source=dir:usr-"+v)
		if r.code != 0 {
			t.Fatalf("build %s: %s", v, r.stderr)
		}
		releases[v] = out
	}
	payload := func(from, to string) string {
		p := filepath.Join(dir, from+"-"+to+".payload")
		args := []string{"payload", "generate", "-q", "--to", releases[to], "-o", p, "--key", key + ".key"}
		if from != "" {
			args = append(args, "--from", releases[from])
		}
		mustRun(t, kiln, args...)
		return p
	}
	disk := filepath.Join(dir, "node.img")
	copyFile(t, filepath.Join(releases["1.0.0"], "disk.img"), disk)
	node := vm{t, disk}
	expect := func(console string, want ...string) {
		t.Helper()
		got := booted(console)
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Fatalf("booted %q, want %q; console:\n%s", got, want, tail(console, 80))
		}
	}

	// (1) Release 1 from USR-A.
	expect(node.boot("release-1", ""), "USR-A 1.0.0")
	if got := cgptSlot(t, disk, 3); got != [3]int{2, 0, 1} {
		t.Errorf("after release 1's boot USR-A %v, want [2 0 1]", got)
	}
	// (2) The delta 1 → 2, applied offline: release 2 boots from USR-B,
	// its tries lowered by the chooser, and the guest marks it good.
	mustRun(t, kiln, "payload", "apply", "-q", payload("1.0.0", "2.0.0"), "--disk", disk, "--key", key+".pub")
	console := node.boot("release-2", "")
	expect(console, "USR-B 2.0.0")
	if !strings.Contains(console, "kiln: gptprio chose USR-B (priority=3 tries=0 successful=0)") {
		t.Errorf("the chooser did not lower USR-B's tries before booting it:\n%s", tail(console, 40))
	}
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 0, 1} {
		t.Errorf("after release 2's good boot USR-B %v, want [2 0 1]", got)
	}
	// (3) From inside the guest, the delta 2 → 3 onto its own passive
	// slot (USR-A), read from a second disk (an ext4 holding the payload).
	pdir := filepath.Join(dir, "payload-disk")
	os.MkdirAll(pdir, 0o755)
	mustRun(t, "cp", payload("2.0.0", "3.0.0"), filepath.Join(pdir, "update.payload"))
	pdisk := filepath.Join(dir, "payload.img")
	mustRun(t, "mkfs.ext4", "-q", "-d", pdir, pdisk, "64M")
	console = node.boot("release-2-applies-3", pdisk)
	expect(console, "USR-B 2.0.0")
	if !strings.Contains(console, "KILN-TEST applied") {
		t.Fatalf("the guest did not apply the payload:\n%s", tail(console, 60))
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{3, 1, 0} {
		t.Errorf("after the guest's apply USR-A %v, want on trial [3 1 0]", got)
	}
	// (4) Release 3's init fails before mark-good: the kernel panics and
	// reboots; USR-A's tries are used up, so the chooser falls back to
	// release 2 with no manual step; slot status shows USR-A's failed trial.
	console = node.boot("release-3-fails", "")
	if !strings.Contains(console, "KILN-TEST release 3 fails to start") {
		t.Fatalf("release 3 did not start:\n%s", tail(console, 60))
	}
	expect(console, "USR-B 2.0.0")
	// The booted system's status: USR-B booted, USR-A's trial failed.
	if !regexp.MustCompile(`USR-A +3 +3 +0 +false +3\.0\.0 .*on trial, trial failed`).MatchString(console) {
		t.Errorf("the fallback's slot status does not show USR-A's failed trial:\n%s", tail(console, 40))
	}
	if st := statusOf(t, disk); st.Next != "USR-B" || cgptSlot(t, disk, 3) != [3]int{3, 0, 0} {
		t.Errorf("after the failed trial: %+v, USR-A %v", st, cgptSlot(t, disk, 3))
	}
	// (5) Release 4 into USR-A, one byte of its data area changed: the
	// boot path refuses the slot (its verity tree does not match the
	// signed root) and falls back to release 2.
	mustRun(t, kiln, "slot", "rollback", disk) // abandon the failed trial
	mustRun(t, kiln, "payload", "apply", "-q", payload("", "4.0.0"), "--disk", disk, "--key", key+".pub")
	m := readManifest(t, releases["4.0.0"])
	usrA := m.Partition("USR-A")
	flip(t, disk, usrA.Offset+usrA.FilesystemSize/2)
	console = node.boot("release-4-tampered", "")
	if !regexp.MustCompile(`kiln: refusing USR-A: .*verity`).MatchString(console) {
		t.Errorf("the boot path did not refuse the tampered slot:\n%s", tail(console, 60))
	}
	expect(console, "USR-B 2.0.0")
	if got := cgptSlot(t, disk, 3); got[0] != 0 {
		t.Errorf("the refused slot is still in the boot order: %v", got)
	}
}
