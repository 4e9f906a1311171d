package test

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/internal/treetest"
)

// Hostile sources, end to end: what a tar: or dir: source holds is in the
// image exactly as the kernel shows it through a loop mount, or the build
// fails (exit 1, nothing left behind) naming the file and the field.

// noClamp is a SOURCE_DATE_EPOCH later than every time these tests make,
// so times reach the image unclamped.
const noClamp = 4000000000

// TestHostileSparseTarBuild: a tar --sparse member (PAX format, as GNU
// tar and OCI layers write it) becomes the file it was, and the member
// after it stays intact; the raw stream bytes were taken before.
func TestHostileSparseTarBuild(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	f, err := os.Create(filepath.Join(src, "sparse.img"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(8 << 20)
	f.WriteAt(bytes.Repeat([]byte("head"), 1000), 0)
	f.WriteAt(bytes.Repeat([]byte("middle"), 20000), 3<<20+5)
	f.Close()
	os.WriteFile(filepath.Join(src, "z-after"), []byte("the member after the sparse one\n"), 0o644)
	mustRun(t, "tar", "--sparse", "--format=posix", "-cf", filepath.Join(dir, "usr.tar"), "-C", src, ".")
	out := filepath.Join(dir, "out")
	mustBuild(t, writeRecipe(t, dir, "  USR-A:\n    source: tar:usr.tar\n  OEM: {}\n  ROOT: {}\n"), out, noClamp)
	mnt := mountRO(t, filepath.Join(out, "usr.img"), "ext4", 0, 0)
	for _, name := range []string{"sparse.img", "z-after"} {
		mustRun(t, "cmp", filepath.Join(src, name), filepath.Join(mnt, name))
	}
}

// TestHostileTarACLsBuild: tar --acls keeps POSIX ACLs, and the kernel
// gives them back from the ext4 image as getfacl shows them on the host
// (a user entry with rwx used to become group::rwx, broader than the
// source). squashfs, which has no ACLs, refuses them; so does an ACL
// naming a user kiln cannot map to an id.
func TestHostileTarACLsBuild(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "shared"), 0o755)
	os.WriteFile(filepath.Join(src, "shared", "secret"), []byte("s"), 0o600)
	mustRun(t, "setfacl", "-m", "u:1234:rwx,g:5001:r--", filepath.Join(src, "shared", "secret"))
	mustRun(t, "setfacl", "-d", "-m", "u:1234:rwx", filepath.Join(src, "shared"))
	mustRun(t, "tar", "--acls", "--format=posix", "--numeric-owner", "-cf", filepath.Join(dir, "usr.tar"), "-C", src, ".")
	out := filepath.Join(dir, "out")
	mustBuild(t, writeRecipe(t, dir, "  USR-A:\n    source: tar:usr.tar\n  OEM: {}\n  ROOT: {}\n"), out, noClamp)
	mnt := mountRO(t, filepath.Join(out, "usr.img"), "ext4", 0, 0)
	for _, p := range []string{"shared", "shared/secret"} {
		want := mustRun(t, "getfacl", "-n", "--omit-header", filepath.Join(src, p))
		got := mustRun(t, "getfacl", "-n", "--omit-header", filepath.Join(mnt, p))
		if got != want || !strings.Contains(want, "user:1234:rwx") {
			t.Errorf("%s: the image's ACL\n%s\nthe source's\n%s", p, got, want)
		}
	}

	out = filepath.Join(dir, "out-squashfs")
	mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    filesystem: squashfs\n    source: tar:usr.tar\n  OEM: {}\n  ROOT: {}\n"), out, noClamp,
		"shared/secret", "system.posix_acl_access", "no POSIX ACLs")

	named := filepath.Join(dir, "named.tar")
	writeTar(t, named, &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o674, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.acl.access": "user::rw-\nuser:nobody:rwx\ngroup::r--\nmask::rwx\nother::r--\n"}})
	mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    source: tar:named.tar\n  OEM: {}\n  ROOT: {}\n"), filepath.Join(dir, "out-named"), noClamp,
		`"f"`, "SCHILY.acl.access", `names user "nobody"`)
}

// writeTar writes a tarball of entries without content.
func writeTar(t *testing.T, p string, hs ...*tar.Header) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, h := range hs {
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(sourceEpoch, 0)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(make([]byte, h.Size))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// TestHostileValuesBuild: device numbers, times, ids and xattrs a tar
// holds but a filesystem or Linux cannot are refused, naming the entry
// and the field, where they used to be bit-packed (5000:1 became
// 904:257), clamped (1900 became 1901, 1960 became 1970) or stored where
// the kernel never shows them.
func TestHostileValuesBuild(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, fs string
		h        *tar.Header
		words    []string
	}{
		{"device", "ext4", &tar.Header{Name: "dev/big", Typeflag: tar.TypeChar, Mode: 0o600, Devmajor: 5000, Devminor: 1}, []string{"dev/big", "device number 5000:1"}},
		{"device", "squashfs", &tar.Header{Name: "dev/big", Typeflag: tar.TypeBlock, Mode: 0o600, Devmajor: 1, Devminor: 1 << 20}, []string{"dev/big", "device number 1:1048576"}},
		{"mtime 1900", "ext4", &tar.Header{Name: "early", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), Format: tar.FormatPAX}, []string{"early", "mtime 1900-01-01"}},
		{"mtime 1960", "squashfs", &tar.Header{Name: "early", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC), Format: tar.FormatPAX}, []string{"early", "1960-01-01"}},
		{"uid -1", "ext4", &tar.Header{Name: "nobody", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1<<32 - 1, Format: tar.FormatPAX}, []string{"nobody", "owner"}},
		{"user xattr on a link", "squashfs", &tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "t", Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.x": "1"}}, []string{"user.x", "symlink"}},
		{"system xattr", "ext4", &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.system.foo": "1"}}, []string{"system.foo", "namespace"}},
		{"symlink of 4096", "squashfs", &tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: strings.Repeat("x", 4096), Format: tar.FormatPAX}, []string{": l: ", "symlink target of 4096 bytes"}},
		{"empty symlink", "squashfs", &tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Format: tar.FormatPAX}, []string{": l: ", "symlink target is empty"}},
		{"xattr value 65537", "squashfs", &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.v": strings.Repeat("v", 65537)}}, []string{"user.v", "value of 65537 bytes"}},
		{"xattr name 256", "squashfs", &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user." + strings.Repeat("n", 251): "1"}}, []string{"name of 256 bytes"}},
		{"xattr name 256", "ext4", &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user." + strings.Repeat("n", 251): "1"}}, []string{"name of 256 bytes"}},
	} {
		t.Run(c.name+" "+c.fs, func(t *testing.T) {
			writeTar(t, filepath.Join(dir, "v.tar"), c.h)
			mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    filesystem: "+c.fs+"\n    source: tar:v.tar\n  OEM: {}\n  ROOT: {}\n"),
				filepath.Join(dir, "out"), sourceEpoch, c.words...)
		})
	}
}

// TestHostileIDsBuild: a squashfs holds 65535 distinct uids and gids, and
// the kernel mounts it; with 65536 the id count (16 bits) was written as
// 0, which the kernel cannot mount: now the build is refused.
func TestHostileIDsBuild(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{65535, 65536} {
		var hs []*tar.Header
		for i := 1; i < n; i += 2 {
			gid := i + 1
			if gid >= n {
				gid = 0
			}
			hs = append(hs, &tar.Header{Name: fmt.Sprintf("d%02d/f%05d", i/4096, i), Typeflag: tar.TypeReg, Mode: 0o644, Uid: i, Gid: gid})
		}
		tarball := fmt.Sprintf("ids-%d.tar", n)
		writeTar(t, filepath.Join(dir, tarball), hs...)
		recipe := writeRecipe(t, dir, "  USR-A:\n    filesystem: squashfs\n    source: tar:"+tarball+"\n  OEM: {}\n  ROOT: {}\n")
		out := filepath.Join(dir, fmt.Sprintf("out-%d", n))
		if n == 65536 {
			mustRefuse(t, recipe, out, sourceEpoch, "USR-A", "more than 65535 distinct uids and gids")
			continue
		}
		mustBuild(t, recipe, out, sourceEpoch)
		var st unix.Stat_t
		mnt := mountRO(t, filepath.Join(out, "usr.img"), "squashfs", 0, 0)
		if err := unix.Lstat(filepath.Join(mnt, "d15/f65533"), &st); err != nil || st.Uid != 65533 || st.Gid != 65534 {
			t.Errorf("d15/f65533: owner %d:%d, %v", st.Uid, st.Gid, err)
		}
	}
}

// TestHostileDeepDirBuild: a dir: source with paths over 4096 bytes (as
// mkfs.ext4 -d and tar: sources take them) builds, and the kernel shows
// the image's tree equal to the source's.
func TestHostileDeepDirBuild(t *testing.T) {
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	os.Mkdir(rootfs, 0o755)
	fd, err := unix.Open(rootfs, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("%02d-%s", i, strings.Repeat("n", 200))
		if err := unix.Mkdirat(fd, name, 0o750); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			ffd, err := unix.Openat(fd, "file", unix.O_WRONLY|unix.O_CREAT, 0o640)
			if err != nil {
				t.Fatal(err)
			}
			unix.Write(ffd, []byte(fmt.Sprintf("depth %d\n", i)))
			unix.Close(ffd)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = next
	}
	unix.Symlinkat("../../up", fd, "link")
	unix.Close(fd)
	out := filepath.Join(dir, "out")
	mustBuild(t, writeRecipe(t, dir, "  USR-A:\n    source: dir:rootfs\n  OEM: {}\n  ROOT: {}\n"), out, noClamp)
	want, err := source.FromDir(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := source.FromDir(mountRO(t, filepath.Join(out, "usr.img"), "ext4", 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	got.Remove("lost+found")
	if err := treetest.Equal(want, got, treetest.CompareOptions{}); err != nil {
		t.Errorf("the image differs from its source: %.500v", err)
	}
	if s := got.Stats(); s.Entries < 45 {
		t.Errorf("only %d entries read back", s.Entries)
	}
}

// TestHostileBombBuild: a zstd tarball a few hundred KiB long that
// expands to 2 GiB fails the build as soon as the source has spooled
// twice what the 60 MiB USR-A can hold, naming the partition, instead of
// writing gigabytes into the output directory.
func TestHostileBombBuild(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bomb.tar.zst")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw, _ := zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedFastest))
	tw := tar.NewWriter(zw)
	const size = 2 << 30
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: time.Unix(sourceEpoch, 0)})
	zero := make([]byte, 1<<20)
	for i := 0; i < size>>20; i++ {
		tw.Write(zero)
	}
	tw.Close()
	zw.Close()
	f.Close()
	st, _ := os.Stat(p)
	start := time.Now()
	stderr := mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    source: tar:bomb.tar.zst\n  OEM: {}\n  ROOT: {}\n"), filepath.Join(dir, "out"), sourceEpoch,
		"USR-A", "more than 125829120 bytes uncompressed")
	took := time.Since(start)
	t.Logf("a %d-byte tarball of %d bytes: refused after %v: %s", st.Size(), int64(size), took, strings.TrimSpace(stderr))
	if took > 20*time.Second {
		t.Errorf("refusing the bomb took %v", took)
	}
}

// TestHostileXZDictBuild: a tar.xz whose block header declares a 4 GiB
// dictionary is refused before the dictionary is allocated.
func TestHostileXZDictBuild(t *testing.T) {
	dir := t.TempDir()
	writeTar(t, filepath.Join(dir, "usr.tar"), &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 100000})
	mustRun(t, "xz", "-0", filepath.Join(dir, "usr.tar"))
	b, err := os.ReadFile(filepath.Join(dir, "usr.tar.xz"))
	if err != nil {
		t.Fatal(err)
	}
	h := b[12:]
	size := (int(h[0]) + 1) * 4
	if h[2] != 0x21 {
		t.Fatalf("block header % x", h[:size])
	}
	h[4] = 40 // 4 GiB - 1
	binary.LittleEndian.PutUint32(h[size-4:], crc32.ChecksumIEEE(h[:size-4]))
	os.WriteFile(filepath.Join(dir, "usr.tar.xz"), b, 0o644)
	if out, err := exec.Command("xz", "-t", filepath.Join(dir, "usr.tar.xz")).CombinedOutput(); err != nil {
		t.Logf("xz -t on the crafted file: %v %s", err, out)
	}
	mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    source: tar:usr.tar.xz\n  OEM: {}\n  ROOT: {}\n"), filepath.Join(dir, "out"), sourceEpoch,
		"USR-A", "xz dictionary of 4294967295 bytes", "128 MiB")
}
