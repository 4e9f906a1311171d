package test

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBuildAsNonRoot: kiln needs no root. Run as the unprivileged user
// nobody, it builds an image from a tarball whose entries are owned by
// root and other users and include a device node and a setuid file; the
// USR filesystem keeps every owner, mode and device number, as debugfs
// shows.
func TestBuildAsNonRoot(t *testing.T) {
	dir, err := os.MkdirTemp("", "kiln-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	f, err := os.Create(filepath.Join(dir, "usr.tar"))
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	mtime := time.Unix(1700000000, 0)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 0, Gid: 0, Size: 3, ModTime: mtime},
		{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o750, Uid: 1234, Gid: 100000, Size: 3, ModTime: mtime},
		{Name: "lib/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 42, Gid: 42, ModTime: mtime},
		{Name: "lib/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("abc"))
		}
	}
	tw.Close()
	f.Close()
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	os.WriteFile(filepath.Join(dir, "r.yaml"), []byte("name: nr\nversion: 1.0.0\nlayout: small.yaml\npartitions:\n  USR-A:\n    source: tar:usr.tar\n"), 0o644)
	// The binary must be reachable by nobody.
	bin := filepath.Join(dir, "kiln")
	mustRun(t, "cp", kiln, bin)
	os.Chmod(bin, 0o755)
	out := filepath.Join(dir, "out")
	cmd := exec.Command("runuser", "-u", "nobody", "--", bin, "build", "-q", filepath.Join(dir, "r.yaml"), "-o", out)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000", "HOME="+dir)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build as nobody: %v\n%s", err, b)
	}
	st, err := os.Stat(filepath.Join(out, "usr.img"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := fileUID(st); uid != 65534 {
		t.Fatalf("usr.img owned by %d: the build did not run as nobody", uid)
	}
	img := filepath.Join(out, "usr.img")
	for path, want := range map[string][]string{
		"/bin/su":   {"Mode:  04755", "User:     0", "Group:     0"},
		"/bin/tool": {"Mode:  0750", "User:  1234", "Group: 100000"},
		"/lib":      {"Mode:  0700", "User:    42"},
		"/lib/null": {"character special", "Mode:  0666", "Device major/minor number: 01:03"},
	} {
		stat := mustRun(t, "debugfs", "-R", "stat "+path, img)
		for _, w := range want {
			if !strings.Contains(stat, w) {
				t.Errorf("%s: want %q in:\n%.300s", path, w, stat)
			}
		}
	}
	if r := run(t, "e2fsck", "-fn", img); r.code != 0 {
		t.Errorf("e2fsck: %s", r.stdout)
	}
}
