package source

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/tree"
)

// Hostile inputs to the tar and dir sources: what the archive or the
// directory holds reaches the tree exactly, or the source refuses it
// naming the entry and the field.

func mustTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required (make test installs it): %v", name, err)
	}
	return p
}

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(mustTool(t, name), args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func readContent(t *testing.T, n *tree.Inode) []byte {
	t.Helper()
	if n.Content == nil {
		return nil
	}
	rc, err := n.Content.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fromTarFile(t *testing.T, p string, b *Budget) (*tree.Tree, error) {
	t.Helper()
	sp, err := NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp.FromTar(p, epoch, b)
}

// TestHostileSparseTar: GNU tar's sparse members (old GNU format and PAX
// 0.0, 0.1, 1.0) hold only their data runs; their content was the raw
// stream (data, then the next header, then the next file). The file
// after a sparse one must be intact too.
func TestHostileSparseTar(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	f, err := os.Create(filepath.Join(src, "a-sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(10<<20 + 3)
	f.WriteAt(bytes.Repeat([]byte("A"), 5000), 0)
	f.WriteAt(bytes.Repeat([]byte("B"), 70000), 5<<20+17)
	f.WriteAt([]byte("end"), 10<<20)
	f.Close()
	os.WriteFile(filepath.Join(src, "b-after"), []byte("the next file\n"), 0o644)
	for _, format := range [][]string{
		{"--format=gnu"},
		{"--format=posix", "--sparse-version=0.0"},
		{"--format=posix", "--sparse-version=0.1"},
		{"--format=posix", "--sparse-version=1.0"},
	} {
		t.Run(strings.Join(format, " "), func(t *testing.T) {
			tarball := filepath.Join(t.TempDir(), "s.tar")
			sh(t, "tar", append(append([]string{"--sparse"}, format...), "-cf", tarball, "-C", src, "a-sparse", "b-after")...)
			tr, err := fromTarFile(t, tarball, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"a-sparse", "b-after"} {
				want, _ := os.ReadFile(filepath.Join(src, name))
				n, err := tr.Lookup(name)
				if err != nil {
					t.Fatal(err)
				}
				if got := readContent(t, n); n.Type != tree.Regular || n.Size != int64(len(want)) || !bytes.Equal(got, want) {
					t.Errorf("%s: %v of %d bytes, content equal: %v; want %d bytes", name, n.Type, n.Size, bytes.Equal(got, want), len(want))
				}
			}
		})
	}
	// A sparse record of a version archive/tar does not expand (written
	// by hand: archive/tar's writer drops GNU.sparse records).
	var raw bytes.Buffer
	raw.Write(rawHeader(t, "PaxHeaders/s", 'x', paxBody(map[string]string{"GNU.sparse.major": "2", "GNU.sparse.minor": "0"})))
	raw.Write(rawHeader(t, "s", '0', []byte("abc")))
	raw.Write(make([]byte, 1024))
	p := filepath.Join(t.TempDir(), "v2.tar")
	os.WriteFile(p, raw.Bytes(), 0o644)
	if _, err := fromTarFile(t, p, nil); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `"s"`) {
		t.Errorf("sparse format 2.0: err = %v", err)
	}
}

// paxBody encodes PAX records ("LEN key=value\n").
func paxBody(rec map[string]string) []byte {
	var b []byte
	for _, k := range sortedKeys(rec) {
		r := " " + k + "=" + rec[k] + "\n"
		n := len(r) + 1
		for len(fmt.Sprint(n))+len(r) != n {
			n++
		}
		b = append(b, fmt.Sprint(n)+r...)
	}
	return b
}

// rawHeader returns a ustar header block of the given type for data, the
// data and its padding.
func rawHeader(t *testing.T, name string, typ byte, data []byte) []byte {
	t.Helper()
	h := make([]byte, 512)
	copy(h, name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", len(data)))
	copy(h[136:], fmt.Sprintf("%011o\x00", epoch.Unix()))
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return append(append(h, data...), make([]byte, (512-len(data)%512)%512)...)
}

// TestHostileTarACLs: tar --acls records become the kernel's ACL xattrs
// (the bytes getxattr gives on the host), a minimal access ACL none (the
// kernel stores none either); ACLs naming users, disagreeing with the
// mode, or a default ACL on a file are refused.
func TestHostileTarACLs(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "f"), []byte("x"), 0o640)
	os.WriteFile(filepath.Join(src, "plain"), []byte("y"), 0o644)
	sh(t, "setfacl", "-m", "u:1234:rwx,g:5001:r-x,u:4000000000:r", filepath.Join(src, "d", "f"))
	sh(t, "setfacl", "-m", "u:1234:rx", "-d", "-m", "u:1234:rwx,g::r-x", filepath.Join(src, "d"))
	tarball := filepath.Join(dir, "acl.tar")
	sh(t, "tar", "--acls", "--format=posix", "--numeric-owner", "-cf", tarball, "-C", src, ".")
	tr, err := fromTarFile(t, tarball, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, xattr string }{{"d/f", tree.ACLAccess}, {"d", tree.ACLAccess}, {"d", tree.ACLDefault}} {
		want := make([]byte, 1024)
		k, err := unix.Lgetxattr(filepath.Join(src, c.path), c.xattr, want)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := tr.Lookup(c.path)
		var got []byte
		for _, x := range n.Xattrs {
			if x.Name == c.xattr {
				got = x.Value
			}
		}
		if !bytes.Equal(got, want[:k]) {
			t.Errorf("%s %s: % x, the host has % x", c.path, c.xattr, got, want[:k])
		}
	}
	if n, _ := tr.Lookup("plain"); len(n.Xattrs) != 0 {
		t.Errorf("plain: xattrs %v", n.Xattrs)
	}

	for name, c := range map[string]struct {
		typ    byte
		mode   int64
		access string
		def    string
		words  []string
	}{
		"named user":      {tar.TypeReg, 0o674, "user::rw-\nuser:nobody:rwx\ngroup::r--\nmask::rwx\nother::r--\n", "", []string{"names user \"nobody\""}},
		"named, with id":  {tar.TypeReg, 0o674, "user::rw-,user:nobody:rwx:65534,group::r--,mask::rwx,other::r--", "", nil},
		"mode disagrees":  {tar.TypeReg, 0o644, "user::rw-\nuser:1:rwx\ngroup::r--\nmask::rwx\nother::r--\n", "", []string{"mode 0644 disagrees"}},
		"default on file": {tar.TypeReg, 0o644, "", "user::rwx\ngroup::r-x\nother::r-x\n", []string{"default ACL"}},
		"no mask":         {tar.TypeReg, 0o644, "user::rw-\nuser:1:rwx\ngroup::r--\nother::r--\n", "", []string{"ACL"}},
		"bad perms":       {tar.TypeReg, 0o644, "user::rwz\ngroup::r--\nother::r--\n", "", []string{"permissions"}},
		"NFSv4":           {tar.TypeReg, 0o644, "", "", []string{"SCHILY.acl.ace"}},
	} {
		t.Run(name, func(t *testing.T) {
			rec := map[string]string{}
			if c.access != "" {
				rec["SCHILY.acl.access"] = c.access
			}
			if c.def != "" {
				rec["SCHILY.acl.default"] = c.def
			}
			if name == "NFSv4" {
				rec["SCHILY.acl.ace"] = "owner@:rwxp--aARWcCos:-------:allow"
			}
			_, err := tarOf(t, &tar.Header{Name: "f", Typeflag: c.typ, Mode: c.mode, PAXRecords: rec})
			if c.words == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("err = %v, want ErrUnsupported", err)
			}
			for _, w := range append(c.words, `"f"`) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// tarOf reads a one-entry PAX tarball.
func tarOf(t *testing.T, h *tar.Header) (*tree.Tree, error) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if h.Format == tar.FormatUnknown {
		h.Format = tar.FormatPAX
	}
	h.ModTime = epoch
	if err := tw.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
	tw.Write(make([]byte, h.Size))
	tw.Close()
	p := filepath.Join(t.TempDir(), "one.tar")
	os.WriteFile(p, buf.Bytes(), 0o644)
	return fromTarFile(t, p, nil)
}

// TestHostilePAXRecords: records that carry metadata are read (bsdtar's
// LIBARCHIVE.xattr, git archive's global comment) or refused (file flags,
// unknown records, global records, ids beyond 32 bits, an SELinux label
// without its bytes); none is dropped.
func TestHostilePAXRecords(t *testing.T) {
	tr, err := tarOf(t, &tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, PAXRecords: map[string]string{
		"LIBARCHIVE.xattr.user.b%20c": base64.RawStdEncoding.EncodeToString([]byte{0, 1, 2}),
		"SCHILY.xattr.user.b c":       "\x00\x01\x02",
		"LIBARCHIVE.xattr.user.x":     base64.StdEncoding.EncodeToString([]byte("padded")),
		"SCHILY.fflags":               "",
		"atime":                       "1.5",
	}})
	if err != nil {
		t.Fatal(err)
	}
	n, _ := tr.Lookup("f")
	if len(n.Xattrs) != 2 || n.Xattrs[0].Name != "user.b c" || !bytes.Equal(n.Xattrs[0].Value, []byte{0, 1, 2}) || string(n.Xattrs[1].Value) != "padded" {
		t.Errorf("xattrs %q", n.Xattrs)
	}
	for name, c := range map[string]struct {
		h    *tar.Header
		word string
	}{
		"file flags":   {&tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"SCHILY.fflags": "nodump"}}, "nodump"},
		"unknown":      {&tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"VENDOR.magic": "1"}}, "VENDOR.magic"},
		"xattrs clash": {&tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"SCHILY.xattr.user.a": "1", "LIBARCHIVE.xattr.user.a": "Mg"}}, "differ"},
		"selinux":      {&tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"RHT.security.selinux": "system_u:object_r:bin_t:s0"}}, "RHT.security.selinux"},
		"uid 2^32":     {&tar.Header{Typeflag: tar.TypeReg, Uid: 1 << 32}, "uid 4294967296"},
		"major 2^32":   {&tar.Header{Typeflag: tar.TypeChar, Devmajor: 1 << 32, Format: tar.FormatGNU}, "device major"},
		"GNU dumpdir":  {&tar.Header{Typeflag: 'D'}, "entry type"},
	} {
		t.Run(name, func(t *testing.T) {
			c.h.Name, c.h.Mode = "f", 0o644
			_, err := tarOf(t, c.h)
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.word) || !strings.Contains(err.Error(), `"f"`) {
				t.Errorf("err = %v, want ErrUnsupported naming \"f\" and %q", err, c.word)
			}
		})
	}
	// Global headers: a comment (git archive) is fine, anything else
	// would apply to later entries and is refused.
	for _, c := range []struct {
		rec map[string]string
		ok  bool
	}{{map[string]string{"comment": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"}, true}, {map[string]string{"uid": "0"}, false}} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: c.rec, Format: tar.FormatPAX})
		tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch})
		tw.Close()
		p := filepath.Join(t.TempDir(), "g.tar")
		os.WriteFile(p, buf.Bytes(), 0o644)
		_, err := fromTarFile(t, p, nil)
		if c.ok != (err == nil) || !c.ok && !errors.Is(err, ErrUnsupported) {
			t.Errorf("global %v: err = %v", c.rec, err)
		}
	}
}

// TestHostileGitArchive: a tarball from git archive (a global header with
// the commit) is read; the old code refused its type 'g' entry.
func TestHostileGitArchive(t *testing.T) {
	repo := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command(mustTool(t, "git"), append([]string{"-C", repo, "-c", "user.name=k", "-c", "user.email=k@k"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q")
	os.WriteFile(filepath.Join(repo, "file"), []byte("content\n"), 0o644)
	git("add", "file")
	git("commit", "-q", "-m", "c")
	p := filepath.Join(t.TempDir(), "a.tar")
	git("archive", "-o", p, "HEAD")
	tr, err := fromTarFile(t, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := tr.Lookup("file"); err != nil || string(readContent(t, n)) != "content\n" {
		t.Errorf("file: %v", err)
	}
}

// xzHeaderWithDict returns a real xz stream of data whose block header
// declares dictionary code code (40: 4 GiB - 1), its CRC32 fixed.
func xzHeaderWithDict(t *testing.T, data []byte, code byte) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "d")
	os.WriteFile(p, data, 0o644)
	sh(t, "xz", "-k", "-0", p)
	b, err := os.ReadFile(p + ".xz")
	if err != nil {
		t.Fatal(err)
	}
	// Block header right after the 12-byte stream header: size byte,
	// flags (no sizes with -0 single-threaded), filter id 0x21, props
	// size 1, the dictionary byte.
	h := b[12:]
	size := (int(h[0]) + 1) * 4
	if h[1] != 0 || h[2] != 0x21 || h[3] != 1 {
		t.Fatalf("unexpected block header % x", h[:size])
	}
	h[4] = code
	binary.LittleEndian.PutUint32(h[size-4:], crc32.ChecksumIEEE(h[:size-4]))
	return b
}

// TestHostileWindows: a 780-byte xz stream declaring a 4 GiB dictionary,
// or a zstd frame declaring a 2 GiB window, is refused before anything of
// that size is allocated; the tools' own outputs at their strongest
// settings (xz -9e with several blocks and each check type, zstd -19
// --long=27) decode exactly.
func TestHostileWindows(t *testing.T) {
	data := bytes.Repeat([]byte("kiln bounded windows "), 40000)
	check := func(name string, compressed []byte, maxAlloc uint64) error {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r, err := Decompress(bytes.NewReader(compressed))
		if err == nil {
			var got []byte
			got, err = io.ReadAll(r)
			if err == nil && !bytes.Equal(got, data) {
				t.Errorf("%s: decoded %d bytes differ from the %d written", name, len(got), len(data))
			}
		}
		runtime.ReadMemStats(&after)
		if grown := after.TotalAlloc - before.TotalAlloc; maxAlloc > 0 && grown > maxAlloc {
			t.Errorf("%s: %d MiB allocated", name, grown>>20)
		}
		return err
	}
	for _, code := range []byte{40, 39} { // 4 GiB - 1, 3 GiB
		if err := check("xz dict code "+fmt.Sprint(code), xzHeaderWithDict(t, data, code), 1<<20); !errors.Is(err, ErrWindow) || !strings.Contains(err.Error(), "dictionary") {
			t.Errorf("xz with dictionary code %d: err = %v, want ErrWindow", code, err)
		}
	}
	// zstd: a frame header with Window_Descriptor 2^31, one raw block.
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3}
	blk := uint32(len(data[:1000]))<<3 | 1 // last, raw
	frame = append(frame, byte(blk), byte(blk>>8), byte(blk>>16))
	frame = append(frame, data[:1000]...)
	if err := check("zstd 2 GiB window", frame, 16<<20); !errors.Is(err, ErrWindow) || !strings.Contains(err.Error(), "window") {
		t.Errorf("zstd 2 GiB window: err = %v, want ErrWindow", err)
	}

	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.WriteFile(in, data, 0o644)
	for _, args := range [][]string{
		{"xz", "-9e", "-T2", "--block-size=100000", "-c", in},
		{"xz", "-9", "--check=crc32", "-c", in},
		{"xz", "-1", "--check=none", "-c", in},
		{"xz", "-6", "--check=sha256", "-c", in},
		{"zstd", "-19", "--long=27", "-q", "-c", in},
	} {
		out, err := exec.Command(mustTool(t, args[0]), args[1:]...).Output()
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if err := check(strings.Join(args[:len(args)-2], " "), out, 0); err != nil {
			t.Errorf("%v: %v", args, err)
		}
		if args[0] == "xz" {
			// Two streams back to back, with stream padding between.
			two := append(append(append([]byte{}, out...), 0, 0, 0, 0), out...)
			r, err := Decompress(bytes.NewReader(two))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, append(append([]byte{}, data...), data...)) {
				t.Errorf("%v twice: %d bytes, %v", args, len(got), err)
			}
			// A flipped bit in the data is caught by the check (or LZMA2).
			bad := append([]byte{}, out...)
			bad[len(bad)/2] ^= 0x10
			if r, err := Decompress(bytes.NewReader(bad)); err == nil {
				if _, err := io.ReadAll(r); err == nil {
					t.Errorf("%v with a flipped bit: no error", args)
				}
			}
		}
	}
}

// TestHostileBomb: a 1 GiB zstd tarball of zeros (a few hundred KiB) is
// stopped as soon as the spool passes its budget, with ErrTooLarge; the
// spool holds no more than the budget.
func TestHostileBomb(t *testing.T) {
	const size = 1 << 30
	p := filepath.Join(t.TempDir(), "bomb.tar.zst")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw, _ := zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedFastest))
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: epoch})
	zero := make([]byte, 1<<20)
	for i := 0; i < size>>20; i++ {
		tw.Write(zero)
	}
	tw.Close()
	zw.Close()
	f.Close()
	st, _ := os.Stat(p)
	spool := t.TempDir()
	sp, err := NewSpool(spool)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	b := &Budget{Limit: 64 << 20, For: "test partition"}
	start := time.Now()
	_, err = sp.FromTar(p, epoch, b)
	took := time.Since(start)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "test partition") || !strings.Contains(err.Error(), p) {
		t.Fatalf("a %d-byte bomb: err = %v", st.Size(), err)
	}
	var used int64
	filepath.Walk(spool, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			used += info.Size()
		}
		return nil
	})
	if used > b.Limit || b.Used() > b.Limit {
		t.Errorf("spool holds %d bytes, budget used %d, the bound is %d", used, b.Used(), b.Limit)
	}
	t.Logf("%d-byte bomb of %d bytes stopped after %v with %d bytes spooled", st.Size(), int64(size), took, used)
}

// TestHostileDeepDir: a dir: source with paths over PATH_MAX (8 KiB, as
// mkfs.ext4 -d and tar: sources read) is read whole, content included;
// an error deep inside names the path once.
func TestHostileDeepDir(t *testing.T) {
	root := t.TempDir()
	// Build the chain with *at calls: the full path is too long for the
	// path-based calls.
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("%03d-%s", i, strings.Repeat("d", 196))
		names = append(names, name)
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = next
	}
	ffd, err := unix.Openat(fd, "leaf", unix.O_WRONLY|unix.O_CREAT, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(ffd, []byte("at the bottom"))
	if err := unix.Fsetxattr(ffd, "user.x", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(ffd)
	if err := unix.Symlinkat(strings.Repeat("../", 40)+"top", fd, "up"); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)

	tr, err := FromDir(root)
	if err != nil {
		t.Fatalf("FromDir: %.300v", err)
	}
	leafPath := strings.Join(names, "/") + "/leaf"
	if len(root)+len(leafPath) <= 4096 {
		t.Fatalf("path of %d bytes is not over PATH_MAX", len(root)+len(leafPath))
	}
	leaf, err := tr.Lookup(leafPath)
	if err != nil || string(readContent(t, leaf)) != "at the bottom" || leaf.Perm != 0o600 ||
		len(leaf.Xattrs) != 1 || string(leaf.Xattrs[0].Value) != "y" {
		t.Fatalf("leaf: %v %+v", err, leaf)
	}
	if up, err := tr.Lookup(strings.Join(names, "/") + "/up"); err != nil || up.Target != strings.Repeat("../", 40)+"top" {
		t.Errorf("up: %v %+v", err, up)
	}
	// The leaf goes away: a writer reading it fails naming it once (its
	// tree path; the source names its directory).
	cmd := exec.Command("rm", "-rf", names[0])
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rm: %v %s", err, out)
	}
	_, err = leaf.Content.Open()
	if err == nil || !strings.Contains(err.Error(), root) || strings.Contains(err.Error(), names[0]) {
		t.Errorf("error after removal: %.300v", err)
	}
	// Reading a directory that is gone, deep down, names it once.
	_, err = FromDir(root + "/" + strings.Join(names[:3], "/"))
	if err == nil || strings.Count(err.Error(), names[2]) != 1 {
		t.Errorf("FromDir of a missing directory names it %d times: %.300v", strings.Count(fmt.Sprint(err), names[2]), err)
	}
}
