package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// bootTimeout bounds one QEMU run: firmware, the chooser's kernel, the
// slot's kernel and its init, twice when a failed boot restarts into the
// fallback. Measured here (TCG, 2 cores, Secure Boot firmware): 15-25 s
// for one boot, 70 s for a failed trial and its fallback, 60 s for a boot
// that applies a delta; up to twice that with other boots beside it.
const bootTimeout = 300 * time.Second

// Debian's OVMF with Secure Boot enforced, and the variable store with
// its snakeoil key enrolled as PK, KEK and db; the key (password
// "snakeoil") and certificate.
const (
	ovmfCode     = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	ovmfVars     = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"
	snakeoilKey  = "/usr/share/ovmf/PkKek-1-snakeoil.key"
	snakeoilCert = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
)

// snakeoilEnv lets kiln read the snakeoil key.
var snakeoilEnv = []string{"KILN_KEY_PASSWORD=snakeoil", "SOURCE_DATE_EPOCH=1700000000"}

// bootCache is where recipes/bootable/fetch.sh keeps Debian's packages.
func bootCache(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(cache, "kiln", "bootable")
}

// fetched is recipes/bootable/fetch.sh's run for this test binary: once,
// since it remakes the /usr that parallel boot tests copy.
var fetched struct {
	once sync.Once
	err  string
}

// fetchBootable runs recipes/bootable/fetch.sh (Debian's cloud kernel,
// systemd's UEFI stub and busybox, cached; the release's /usr remade with
// this kiln) once and returns its directory.
func fetchBootable(t *testing.T) string {
	t.Helper()
	cache := bootCache(t)
	fetched.once.Do(func() {
		fetch, _ := filepath.Abs("../recipes/bootable/fetch.sh")
		if out, err := exec.Command("sh", fetch, cache, kiln).CombinedOutput(); err != nil {
			fetched.err = fmt.Sprintf("fetch.sh: %v\n%s", err, out)
		}
	})
	if fetched.err != "" {
		t.Fatal(fetched.err)
	}
	return cache
}

// needQEMU fails the test when QEMU, Debian's OVMF or swtpm is missing.
func needQEMU(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-system-x86_64", ovmfCode, ovmfVars, snakeoilKey, "swtpm", "apt-get", "dpkg-deb", "cgpt", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil && !fileExists(tool) {
			t.Fatalf("%s is missing (make test installs qemu-system-x86, ovmf, swtpm, cgpt, e2fsprogs)", tool)
		}
	}
}

// goodInit is the guest's init in the test releases: it reports the
// booted slot and release and the Secure Boot state, marks the slot good
// (with no disk named: kiln finds the booted disk), applies a payload
// found on a second disk, and powers off. When that disk holds script.sh,
// it runs that instead of marking good and applying.
const goodInit = `#!/bin/sh
export PATH=/usr/bin:/usr/sbin
pd=$(busybox findfs LABEL=KILNPAYLOAD 2>/dev/null)
[ -n "$pd" ] && mkdir -p /mnt && mount -o ro "$pd" /mnt
if [ -f /mnt/script.sh ]; then
	sh /mnt/script.sh
	busybox sync
	busybox poweroff -f
fi
st=$(kiln slot status)
echo "$st"
b=$(echo "$st" | grep '^booted:' | cut -d: -f2 | tr -d ' ')
v=$(echo "$st" | awk -v s="$b" '$1 == s {print $6}')
echo "KILN-TEST booted=$b version=$v"
mkdir -p /sys/firmware/efi/efivars && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
echo "KILN-TEST securebootvar=$(head -c 5 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | tail -c 1 | od -An -tu1 | tr -d ' ') lockdown=$(cat /sys/kernel/security/lockdown)"
kiln slot mark-good
if [ -f /mnt/update.payload ]; then
	kiln payload apply -q /mnt/update.payload --key /usr/share/kiln/release.pub && echo "KILN-TEST applied"
fi
sync
poweroff -f
`

// relOpts are what a test release differs in.
type relOpts struct {
	init         string // the guest's init (default goodInit)
	floor        string // rollback-floor
	debianKernel bool   // the slot keeps Debian's kernel signature (no boot.sign-kernel)
	noSecureBoot bool   // the chooser is not signed for Secure Boot
}

// bootReleases builds signed bootable releases of one test's own: Debian's
// kernel, kiln's initrd, busybox and a test init in /usr, the chooser and
// (unless asked otherwise) the slot's kernel signed with OVMF's snakeoil
// key, the release records with the test's release key.
type bootReleases struct {
	t               *testing.T
	dir, cache, key string
	recipe          string
	out             map[string]string
}

func newReleases(t *testing.T) *bootReleases {
	t.Helper()
	needQEMU(t)
	dir := t.TempDir()
	r := &bootReleases{t: t, dir: dir, cache: fetchBootable(t), key: filepath.Join(dir, "release"), out: map[string]string{}}
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", r.key)
	r.recipe = bootableRecipe(t, dir, r.cache, "")
	return r
}

// build builds release v (once) and returns its output directory.
func (r *bootReleases) build(v string, o relOpts) string {
	t := r.t
	t.Helper()
	name := v
	if o.debianKernel {
		name += "-debian-kernel"
	}
	if o.noSecureBoot {
		name += "-unsigned-chooser"
	}
	if out, ok := r.out[name]; ok {
		return out
	}
	usr := filepath.Join(r.dir, "usr-"+name)
	mustRun(t, "cp", "-a", filepath.Join(r.cache, "usr"), usr)
	init := o.init
	if init == "" {
		init = goodInit
	}
	os.WriteFile(filepath.Join(usr, "lib", "bootable", "init"), []byte(init), 0o755)
	os.MkdirAll(filepath.Join(usr, "share", "kiln"), 0o755)
	mustRun(t, "cp", r.key+".pub", filepath.Join(usr, "share", "kiln", "release.pub"))
	os.WriteFile(filepath.Join(usr, "lib", "os-release"), []byte("VERSION="+v+"\n"), 0o644)
	out := filepath.Join(r.dir, "out-"+name)
	args := []string{"build", "-q", r.recipe, "-o", out, "--sign", r.key + ".key",
		"--set", "version=" + v, "--set", "partitions.USR-A.source=dir:" + usr}
	if o.floor != "" {
		args = append(args, "--set", "rollback-floor="+o.floor)
	}
	if o.debianKernel {
		args = append(args, "--set", "boot.sign-kernel=false")
	}
	if !o.noSecureBoot {
		args = append(args, "--sb-key", snakeoilKey, "--sb-cert", snakeoilCert)
	} else if !o.debianKernel {
		args = append(args, "--set", "boot.sign-kernel=false")
	}
	if res := kilnEnv(t, snakeoilEnv, args...); res.code != 0 {
		t.Fatalf("build %s: %s", name, res.stderr)
	}
	r.out[name] = out
	return out
}

// payload generates the payload from → to (a full one when from is "").
func (r *bootReleases) payload(from, to string) string {
	t := r.t
	t.Helper()
	name := "full"
	if from != "" {
		name = filepath.Base(from)
	}
	p := filepath.Join(r.dir, name+"-"+filepath.Base(to)+".payload")
	args := []string{"payload", "generate", "-q", "--to", to, "-o", p, "--key", r.key + ".key"}
	if from != "" {
		args = append(args, "--from", from)
	}
	mustRun(t, kiln, args...)
	return p
}

// apply applies a payload to disk offline, as the release pipeline does.
func (r *bootReleases) apply(payload, disk string) {
	r.t.Helper()
	mustRun(r.t, kiln, "payload", "apply", "-q", payload, "--disk", disk, "--key", r.key+".pub")
}

// payloadDisk returns an ext4 image labelled KILNPAYLOAD holding payload
// as /update.payload, for the guest to apply from a second disk.
func (r *bootReleases) payloadDisk(payload string) string {
	return r.scriptDisk(payload, "")
}

// scriptDisk is payloadDisk with script (when not "") as /script.sh, for
// the guest to run instead, and the files extra (host paths) under their
// base names.
func (r *bootReleases) scriptDisk(payload, script string, extra ...string) string {
	t := r.t
	t.Helper()
	d, err := os.MkdirTemp(r.dir, "pd-")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, "cp", payload, filepath.Join(d, "update.payload"))
	if script != "" {
		os.WriteFile(filepath.Join(d, "script.sh"), []byte(script), 0o755)
	}
	for _, f := range extra {
		mustRun(t, "cp", f, filepath.Join(d, filepath.Base(f)))
	}
	img := d + ".img"
	var size int64
	filepath.Walk(d, func(_ string, fi os.FileInfo, _ error) error {
		if fi != nil {
			size += fi.Size()
		}
		return nil
	})
	mustRun(t, "mkfs.ext4", "-q", "-L", "KILNPAYLOAD", "-d", d, img, fmt.Sprintf("%dM", size>>20+32))
	return img
}

// node is one machine: a disk, its firmware variable store and, when
// tpm is set, a TPM 2.0 (swtpm) whose state persists across its boots.
type node struct {
	t     *testing.T
	disk  string
	vars  string
	iface string // "virtio" (default), "scsi" or "nvme"
	tpm   string // swtpm state directory; "" for no TPM
}

// newNode makes a machine booting a copy of image, with a copy of the
// snakeoil variable store.
func newNode(t *testing.T, image, iface string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, disk: filepath.Join(dir, "node.img"), vars: filepath.Join(dir, "OVMF_VARS.fd"), iface: iface}
	copyFile(t, image, n.disk)
	copyFile(t, ovmfVars, n.vars)
	return n
}

// bootOpts change one run.
type bootOpts struct {
	extra string         // a second (virtio, read-only) disk
	until *regexp.Regexp // stop QEMU when the console shows this (the firmware does not power off after a refusal)
}

// boot runs the machine until it powers off, or until the console matches
// o.until, and returns the serial console.
func (n *node) boot(name string, o bootOpts) string {
	t := n.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	args := []string{"-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on", "-m", "512",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + n.vars,
		"-nic", "none", "-display", "none", "-serial", "stdio", "-monitor", "none"}
	switch n.iface {
	case "", "virtio":
		args = append(args, "-drive", "file="+n.disk+",format=raw,if=virtio")
	case "scsi":
		args = append(args, "-device", "virtio-scsi-pci,id=scsi0", "-drive", "file="+n.disk+",format=raw,if=none,id=d0", "-device", "scsi-hd,drive=d0,bus=scsi0.0")
	case "nvme":
		args = append(args, "-drive", "file="+n.disk+",format=raw,if=none,id=d0", "-device", "nvme,serial=kiln0,drive=d0")
	default:
		t.Fatalf("unknown disk interface %q", n.iface)
	}
	if o.extra != "" {
		args = append(args, "-drive", "file="+o.extra+",format=raw,if=virtio,readonly=on")
	}
	if n.tpm != "" {
		sock := n.startTPM(ctx)
		args = append(args, "-chardev", "socket,id=chrtpm,path="+sock, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: qemu: %v", name, err)
	}
	var console strings.Builder
	stopped := make(chan bool, 1)
	go func() {
		matched := false
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			console.WriteString(sc.Text() + "\n")
			if o.until != nil && !matched && o.until.MatchString(sc.Text()) {
				matched = true
				cmd.Process.Kill()
			}
		}
		io.Copy(io.Discard, pr)
		stopped <- matched
	}()
	err := cmd.Wait()
	pw.Close()
	matched := <-stopped
	out := console.String()
	os.WriteFile(filepath.Join(t.TempDir(), name+".console"), []byte(out), 0o644)
	switch {
	case matched:
		t.Logf("%s: stopped at %q after %v", name, o.until, time.Since(start).Round(100*time.Millisecond))
		return out
	case ctx.Err() != nil:
		t.Fatalf("%s: no power-off within %v; console:\n%s", name, bootTimeout, tail(out, 60))
	case o.until != nil:
		t.Fatalf("%s: powered off without showing %q; console:\n%s", name, o.until, tail(out, 60))
	case err != nil:
		t.Fatalf("%s: qemu: %v\n%s", name, err, tail(out, 60))
	}
	t.Logf("%s: powered off after %v", name, time.Since(start).Round(100*time.Millisecond))
	return out
}

// startTPM starts swtpm for one run of the machine (its state directory
// persists across runs) and returns its control socket; swtpm ends when
// QEMU lets go of it (--terminate), or with ctx.
func (n *node) startTPM(ctx context.Context) string {
	t := n.t
	t.Helper()
	os.MkdirAll(n.tpm, 0o700)
	sock := filepath.Join(n.tpm, "swtpm.sock")
	os.Remove(sock)
	cmd := exec.CommandContext(ctx, "swtpm", "socket", "--tpm2", "--tpmstate", "dir="+n.tpm,
		"--ctrl", "type=unixio,path="+sock, "--terminate")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("swtpm: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	for i := 0; i < 250; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("swtpm did not open %s", sock)
	return ""
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

// expectBooted fails unless the guest reported exactly want.
func expectBooted(t *testing.T, console string, want ...string) {
	t.Helper()
	got := booted(console)
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("booted %q, want %q; console:\n%s", got, want, tail(console, 80))
	}
}

// expectConsole fails unless the console matches each pattern.
func expectConsole(t *testing.T, console string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(console) {
			t.Errorf("the console does not show %q:\n%s", p, tail(console, 60))
		}
	}
}

// editPartition copies partition label of disk into a file, lets edit
// change it (debugfs -w on it, say) and writes it back.
func editPartition(t *testing.T, disk, label string, edit func(img string)) {
	t.Helper()
	var off, size int64
	for _, p := range sfdisk(t, disk).PartitionTable.Partitions {
		if p.Name == label {
			off, size = int64(p.Start)*512, int64(p.Size)*512
		}
	}
	if size == 0 {
		t.Fatalf("%s has no partition %s", disk, label)
	}
	img := filepath.Join(t.TempDir(), label+".img")
	mustRun(t, "dd", "if="+disk, "of="+img, "bs=512", fmt.Sprintf("skip=%d", off/512), fmt.Sprintf("count=%d", size/512), "status=none")
	edit(img)
	mustRun(t, "dd", "if="+img, "of="+disk, "bs=512", fmt.Sprintf("seek=%d", off/512), "conv=notrunc,sparse", "status=none")
}

// blockOf returns the byte offset, inside the USR slot of release out, of
// the first data block of file p (a path inside /usr), read by debugfs.
func blockOf(t *testing.T, out, p string) int64 {
	t.Helper()
	var blk int64
	s := strings.TrimSpace(mustRun(t, "debugfs", "-R", "bmap "+p+" 0", filepath.Join(out, "usr.img")))
	if _, err := fmt.Sscan(s, &blk); err != nil || blk == 0 {
		t.Fatalf("debugfs bmap %s: %q", p, s)
	}
	return blk * 4096
}
