package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// TestLayoutInitRefusesToOverwrite: an existing image is kept unless
// --force; with --force it is replaced.
func TestLayoutInitRefusesToOverwrite(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(disk, []byte("precious"), 0o644)
	r := run(t, kiln, "layout", "init", disk)
	if r.code != 2 || !strings.Contains(r.stderr, "exists; pass --force") {
		t.Fatalf("init over a file: %+v", r)
	}
	if b, _ := os.ReadFile(disk); string(b) != "precious" {
		t.Fatal("the file was changed")
	}
	mustRun(t, kiln, "layout", "init", "--force", disk)
	sgdiskClean(t, disk)
	for _, size := range []string{"0", ""} {
		if r := run(t, kiln, "layout", "init", "--size", size, filepath.Join(t.TempDir(), "d.img")); r.code != 2 {
			t.Errorf("--size %q: %+v", size, r)
		}
	}
	// A block device: refused without --force; with it, the table is
	// written onto the device (its size), in place.
	img := filepath.Join(t.TempDir(), "dev.img")
	mustRun(t, "truncate", "-s", "5GiB", img)
	dev := strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", img))
	defer run(t, "losetup", "--detach", dev)
	if r := run(t, kiln, "layout", "init", dev); r.code != 2 || !strings.Contains(r.stderr, "exists; pass --force") {
		t.Fatalf("init over a block device: %+v", r)
	}
	mustRun(t, kiln, "layout", "init", "--force", dev)
	if st, err := os.Stat(dev); err != nil || st.Mode()&os.ModeDevice == 0 {
		t.Fatalf("%s is no longer a device: %v %v", dev, st, err)
	}
	sgdiskClean(t, img)
}

// TestBuildOutputDirectory: a directory holding anything but an earlier
// build is refused; an earlier build is replaced whole, so nothing stale
// (an old signature) survives.
func TestBuildOutputDirectory(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"))
	if names := dirNames(t, out); strings.Join(names, " ") != "disk.img manifest.json manifest.json.sig provenance.intoto.json sbom.cdx.json sbom.spdx.json usr.blockmap.json usr.img" {
		t.Fatalf("signed build wrote %v", names)
	}
	// The same recipe unsigned, into the same directory: the signature of
	// the earlier build is gone, so verify cannot pass on a stale one.
	r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", filepath.Join(dir, "small-recipe.yaml"), "-o", out)
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	if names := dirNames(t, out); strings.Join(names, " ") != "disk.img manifest.json sbom.cdx.json sbom.spdx.json usr.blockmap.json usr.img" {
		t.Fatalf("unsigned build over a signed one left %v", names)
	}
	// A directory with other files is refused, untouched.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644)
	r = kilnEnv(t, nil, "build", "-q", filepath.Join(dir, "small-recipe.yaml"), "-o", other)
	if r.code != 2 || !strings.Contains(r.stderr, "holds files kiln did not write (notes.txt)") {
		t.Fatalf("build into a foreign directory: %+v", r)
	}
	if names := dirNames(t, other); strings.Join(names, " ") != "notes.txt" {
		t.Fatalf("the foreign directory now holds %v", names)
	}
}

// TestBuildInterrupted: SIGINT or SIGTERM stops a build within about a
// second, with exit 130 or 143 and "interrupted"; the output directory is
// as it was. A SIGKILLed build's staging directory is removed by the next
// build.
func TestBuildInterrupted(t *testing.T) {
	dir := t.TempDir()
	usr := filepath.Join(dir, "usr")
	os.MkdirAll(usr, 0o755)
	f, _ := os.Open("/dev/urandom")
	buf := make([]byte, 8<<20)
	for i := range 24 {
		f.Read(buf)
		os.WriteFile(filepath.Join(usr, "blob"+string(rune('a'+i))), buf, 0o644)
	}
	f.Close()
	os.WriteFile(filepath.Join(dir, "l.yaml"), []byte(`name: big
alignment: 1MiB
partitions:
  - {number: 3, label: USR-A, type: coreos-usr, size: 1GiB, filesystem: squashfs, verity: true, slot: {priority: 1, successful: true}}
  - {number: 4, label: USR-B, type: coreos-usr, size: 1GiB}
  - {number: 9, label: ROOT, type: coreos-resize, size: 3GiB, filesystem: ext4}
`), 0o644)
	recipe := filepath.Join(dir, "r.yaml")
	os.WriteFile(recipe, []byte("name: big\nversion: 1.0.0\nlayout: l.yaml\npartitions:\n  USR-A: {source: \"dir:usr\", level: 19}\n  ROOT: {}\n"), 0o644)
	out := filepath.Join(dir, "out")
	start := time.Now()
	mustRun(t, kiln, "build", "-q", recipe, "-o", out)
	took := time.Since(start)
	before := dirNames(t, out)
	sum := sha256File(t, filepath.Join(out, "disk.img"), 0, 1<<20)
	t.Logf("the build takes %v", took)
	for i, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGINT, syscall.SIGTERM} {
		cmd := exec.Command(kiln, "build", "-q", recipe, "-o", out)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		cmd.Start()
		time.Sleep(took * time.Duration(i+1) / 6)
		sent := time.Now()
		cmd.Process.Signal(sig)
		err := cmd.Wait()
		stopped := time.Since(sent)
		code := cmd.ProcessState.ExitCode()
		if code == 0 {
			t.Logf("%v after %v: the build had finished", sig, took*time.Duration(i+1)/6)
			continue
		}
		if want := 128 + int(sig); code != want || !strings.Contains(stderr.String(), "interrupted by") {
			t.Errorf("%v: exit %d (%v), stderr %q; want %d and \"interrupted\"", sig, code, err, stderr.String(), want)
		}
		if stopped > 1500*time.Millisecond {
			t.Errorf("%v: stopped %v after the signal", sig, stopped)
		}
		if names := dirNames(t, out); strings.Join(names, " ") != strings.Join(before, " ") {
			t.Errorf("%v: the output directory now holds %v", sig, names)
		}
		if got := sha256File(t, filepath.Join(out, "disk.img"), 0, 1<<20); got != sum {
			t.Errorf("%v: the earlier disk.img changed", sig)
		}
	}
	// SIGKILL leaves the staging directory; the next build removes it.
	cmd := exec.Command(kiln, "build", "-q", recipe, "-o", out)
	cmd.Start()
	time.Sleep(took / 3)
	cmd.Process.Kill()
	cmd.Wait()
	var stale []string
	for _, n := range dirNames(t, out) {
		if strings.HasPrefix(n, ".kiln-build-") {
			stale = append(stale, n)
		}
	}
	if len(stale) == 0 {
		t.Fatal("a killed build left no staging directory: the test cannot tell")
	}
	mustRun(t, kiln, "build", "-q", recipe, "-o", out)
	if names := dirNames(t, out); strings.Join(names, " ") != strings.Join(before, " ") {
		t.Fatalf("after the next build the output directory holds %v", names)
	}
}
