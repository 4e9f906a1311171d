package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/manifest"
)

// sourceLayout is the coreos partition set, small, for the source and
// hostile-input tests (their own copy: other tests' layouts may change).
const sourceLayout = `name: source-tests
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

// sourceEpoch is the SOURCE_DATE_EPOCH of these tests.
const sourceEpoch = 1700000000

// writeRecipe writes layout.yaml and recipe.yaml (name, version and layout
// header, then partitions) into dir and returns the recipe's path.
func writeRecipe(t *testing.T, dir, partitions string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "layout.yaml"), []byte(sourceLayout), 0o644); err != nil {
		t.Fatal(err)
	}
	recipe := filepath.Join(dir, "recipe.yaml")
	body := "name: source-test\nversion: 1.0.0\nlayout: layout.yaml\npartitions:\n" + partitions
	if err := os.WriteFile(recipe, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return recipe
}

// kilnBuild builds recipe into out with SOURCE_DATE_EPOCH=epoch.
func kilnBuild(t *testing.T, recipe, out string, epoch int64) result {
	t.Helper()
	return kilnEnv(t, []string{fmt.Sprintf("SOURCE_DATE_EPOCH=%d", epoch)}, "build", "-q", recipe, "-o", out)
}

// mustBuild builds and fails the test on a non-zero exit.
func mustBuild(t *testing.T, recipe, out string, epoch int64) *manifest.Manifest {
	t.Helper()
	if r := kilnBuild(t, recipe, out, epoch); r.code != 0 {
		t.Fatalf("build %s: exit %d\n%s%s", recipe, r.code, r.stdout, r.stderr)
	}
	return readManifest(t, out)
}

// mustRefuse builds and wants exit 2 (the input cannot be stored as it
// is) with every one of want in stderr, and nothing left in out.
func mustRefuse(t *testing.T, recipe, out string, epoch int64, want ...string) string {
	t.Helper()
	r := kilnBuild(t, recipe, out, epoch)
	if r.code != 2 {
		t.Fatalf("build %s: exit %d, want 2 (refused)\nstdout: %s\nstderr: %s", recipe, r.code, r.stdout, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("error does not say %q:\n%.2000s", w, r.stderr)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a refused build left %s", out)
	}
	return r.stderr
}

// mountRO mounts a filesystem image (a whole file, or the byte range
// [off, off+size) of it when size > 0) read-only through a loop device,
// as the kernel will see it, and unmounts it when the test ends.
func mountRO(t *testing.T, img, fstype string, off, size int64) string {
	t.Helper()
	dir := t.TempDir()
	opts := "loop,ro"
	if size > 0 {
		opts += fmt.Sprintf(",offset=%d,sizelimit=%d", off, size)
	}
	mustRun(t, "mount", "-t", fstype, "-o", opts, img, dir)
	t.Cleanup(func() {
		if r := run(t, "umount", dir); r.code != 0 {
			t.Errorf("umount %s: %s", dir, r.stderr)
		}
	})
	return dir
}

// mountPartition mounts a partition of a built disk read-only.
func mountPartition(t *testing.T, out, label string) string {
	t.Helper()
	m := readManifest(t, out)
	p := m.Partition(label)
	if p == nil {
		t.Fatalf("no partition %s", label)
	}
	return mountRO(t, filepath.Join(out, "disk.img"), p.Filesystem, p.Offset, p.Size)
}

// mtime returns a file's mtime as the kernel reports it (lstat).
func mtime(t *testing.T, p string) time.Time {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
}

// setMtime sets a host file's mtime (not following symlinks).
func setMtime(t *testing.T, p string, tm time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(tm.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

// sameFiles fails the test unless every named file is byte-identical in
// both directories.
func sameFiles(t *testing.T, a, b string, names ...string) {
	t.Helper()
	for _, n := range names {
		if r := run(t, "cmp", filepath.Join(a, n), filepath.Join(b, n)); r.code != 0 {
			t.Errorf("%s differs between the two builds: %s%s", n, r.stdout, r.stderr)
		}
	}
}
