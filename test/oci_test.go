package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/internal/treetest"
)

// TestBuildFromOCIImage builds USR from an OCI image made by umoci (a tool
// nobody here wrote): two layers, the second deleting a file and emptying
// a directory, so whiteouts and an opaque directory must be applied. The
// USR filesystem must equal the image's final /usr.
func TestBuildFromOCIImage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	umoci := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("umoci", args...).CombinedOutput(); err != nil {
			t.Fatalf("umoci %v: %v\n%s", args, err, out)
		}
	}
	umoci("init", "--layout", img)
	umoci("new", "--image", img+":base")
	b1 := filepath.Join(dir, "b1")
	umoci("unpack", "--image", img+":base", b1)
	rootfs := filepath.Join(b1, "rootfs")
	if err := treetest.WriteHost(filepath.Join(rootfs, "usr"), treetest.Random(21, treetest.Options{Files: 120, MaxSize: 128 << 10, HighIDs: true})); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(rootfs, "usr/lib/plugins"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "usr/lib/plugins/old.so"), []byte("old"), 0o644)
	os.WriteFile(filepath.Join(rootfs, "usr/bin-gone"), []byte("gone"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "etc-not-in-usr"), []byte("x"), 0o644)
	umoci("repack", "--image", img+":v1", b1)
	b2 := filepath.Join(dir, "b2")
	umoci("unpack", "--image", img+":v1", b2)
	rootfs = filepath.Join(b2, "rootfs")
	os.Remove(filepath.Join(rootfs, "usr/bin-gone"))
	os.RemoveAll(filepath.Join(rootfs, "usr/lib/plugins"))
	os.MkdirAll(filepath.Join(rootfs, "usr/lib/plugins"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "usr/lib/plugins/new.so"), []byte("new"), 0o644)
	// umoci stores whole seconds (rounded); give every file whole seconds
	// so the expected tree is exactly what the layers hold.
	filepath.Walk(filepath.Join(rootfs, "usr"), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode()&os.ModeSymlink == 0 {
			os.Chtimes(p, info.ModTime().Truncate(time.Second), info.ModTime().Truncate(time.Second))
		}
		return nil
	})
	umoci("repack", "--image", img+":v2", b2)

	want, err := source.FromDir(filepath.Join(rootfs, "usr"))
	if err != nil {
		t.Fatal(err)
	}
	recipe := filepath.Join(dir, "r.yaml")
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	os.WriteFile(recipe, []byte(`name: oci
version: 1.0.0
layout: small.yaml
partitions:
  USR-A:
    filesystem: squashfs
    source: oci:img:v2
    subdir: /usr
`), 0o644)
	out := filepath.Join(dir, "out")
	// The epoch lies after the files' times (written now), so none is
	// clamped; HOME is empty, as on a fresh machine.
	if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=4000000000", "HOME=" + t.TempDir()}, "build", "-q", recipe, "-o", out); r.code != 0 {
		t.Fatalf("build: %s", r.stderr)
	}
	m := readManifest(t, out)
	if len(m.Sources) != 1 || !strings.HasPrefix(m.Sources[0].Digest, "sha256:") || len(m.Sources[0].Layers) != 2 {
		t.Errorf("manifest sources %+v", m.Sources)
	}
	dump := filepath.Join(t.TempDir(), "dump")
	if r := run(t, "unsquashfs", "-d", dump, filepath.Join(out, "usr.img")); r.code != 0 {
		t.Fatalf("unsquashfs: %s", r.stderr)
	}
	got, err := source.FromDir(dump)
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(want, got, treetest.CompareOptions{IgnoreDirTime: true, TimeGranularity: 1e9}); err != nil {
		t.Errorf("USR differs from the image's /usr: %v", err)
	}
	for _, gone := range []string{"bin-gone", "lib/plugins/old.so"} {
		if _, err := got.Lookup(gone); err == nil {
			t.Errorf("%s survived its whiteout", gone)
		}
	}
}
