package squashfs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

var testMtime = time.Unix(1700000000, 0)

// build writes t to a new image file and returns its path and block map.
func build(t testing.TB, tr *tree.Tree, o Options) (string, *blockmap.Map) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "img.squashfs")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := Write(f, tr, o)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != m.ImageSize || m.ImageSize%4096 != 0 {
		t.Fatalf("image file is %d bytes, block map says %d (want a multiple of 4096)", st.Size(), m.ImageSize)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("block map: %v", err)
	}
	return img, m
}

// run runs a command and fails the test on a non-zero exit or on output to
// stderr.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("%s %s: %v\nstderr:\n%s\nstdout:\n%s", name, strings.Join(args, " "), err, stderr.String(), tail(stdout.String()))
	}
	return stdout.String()
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

// checkImage runs unsquashfs -s, -lln and -d on the image and compares the
// extracted tree with want.
func checkImage(t testing.TB, img string, want *tree.Tree) {
	t.Helper()
	run(t, "unsquashfs", "-s", img)
	run(t, "unsquashfs", "-lln", img)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "unsquashfs", "-q", "-n", "-d", out, img)
	got, err := source.FromDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(want, got, treetest.CompareOptions{TimeGranularity: time.Second}); err != nil {
		t.Fatalf("extracted tree differs: %v", err)
	}
}

func TestRoundTripRandom(t *testing.T) {
	cases := []struct {
		name string
		seed uint64
		o    treetest.Options
		opts Options
	}{
		{"default", 1, treetest.Options{}, Options{}},
		{"devices-xattrs-highids-longname", 2, treetest.Options{Devices: true, Xattrs: true, HighIDs: true, LongName: true}, Options{}},
		{"bigdir", 3, treetest.Options{Files: 100, BigDir: 3000, Xattrs: true}, Options{}},
		{"gzip", 4, treetest.Options{Devices: true, Xattrs: true, HighIDs: true, LongName: true}, Options{Compression: Gzip}},
		{"small-blocks", 5, treetest.Options{Files: 300, Xattrs: true}, Options{BlockSize: 4096, Workers: 3}},
		{"big-blocks-zstd19", 6, treetest.Options{Files: 50, MaxSize: 3 << 20}, Options{BlockSize: 1 << 20, Level: 19}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tr := treetest.Random(c.seed, c.o)
			c.opts.Mtime = testMtime
			img, _ := build(t, tr, c.opts)
			checkImage(t, img, tr)
		})
	}
}

func TestEmptyTree(t *testing.T) {
	tr := tree.New(testMtime)
	img, m := build(t, tr, Options{Mtime: testMtime})
	checkImage(t, img, tr)
	if len(m.Files) != 0 {
		t.Errorf("block map lists %d files, want 0", len(m.Files))
	}
}

// patterned returns n bytes that compress but are not all zero.
func patterned(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/7) ^ seed ^ byte(i*i>>9)
	}
	return b
}

func TestLargeAndAlignedFiles(t *testing.T) {
	tr := tree.New(testMtime)
	bs := DefaultBlockSize
	put := func(p string, data []byte) {
		t.Helper()
		if err := tr.Put(p, &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: testMtime, Size: int64(len(data)), Content: tree.Bytes(data)}); err != nil {
			t.Fatal(err)
		}
	}
	big := patterned(20<<20, 1)
	copy(big[3*bs:], make([]byte, 2*bs)) // two sparse blocks
	put("big/twenty-mib", big)
	for _, k := range []int{1, 2, 3, 8} {
		put(fmt.Sprintf("aligned/%d-blocks", k), patterned(k*bs, byte(k)))
	}
	put("aligned/one-more", patterned(bs+1, 9))
	put("aligned/one-less", patterned(bs-1, 10))
	put("zeros/all", make([]byte, 3*bs))
	put("zeros/tail", make([]byte, bs+100))
	put("dup/a", patterned(2*bs+5, 7))
	put("dup/b", patterned(2*bs+5, 7))
	prefix := patterned(2*bs, 11)
	put("dup/prefix-a", append(append([]byte(nil), prefix...), "tail one"...))
	put("dup/prefix-b", append(append([]byte(nil), prefix...), "tail two!"...))
	put("dup/small-a", []byte("same small content"))
	put("dup/small-b", []byte("same small content"))
	put("random/incompressible", randomBytes(3*bs+77))
	img, m := build(t, tr, Options{Mtime: testMtime})
	checkImage(t, img, tr)

	files := map[string]blockmap.File{}
	for _, f := range m.Files {
		files[f.Path] = f
	}
	if a, b := files["dup/a"], files["dup/b"]; fmt.Sprint(a.Extents) != fmt.Sprint(b.Extents) {
		t.Errorf("duplicate files not shared: %v vs %v", a.Extents, b.Extents)
	}
	if a, b := files["dup/prefix-a"].Extents, files["dup/prefix-b"].Extents; len(a) != 2 || len(b) != 2 || a[0] != b[0] {
		t.Errorf("equal full blocks not shared: %v vs %v", a, b)
	}
	if a, b := files["dup/small-a"].Extents, files["dup/small-b"].Extents; len(a) != 1 || fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("equal small files not sharing a fragment: %v vs %v", a, b)
	}
	if f := files["zeros/all"]; len(f.Extents) != 0 {
		t.Errorf("all-zero file has extents %v, want none (sparse)", f.Extents)
	}
	// The extents cover the file's compressed bytes: the 20 MiB file's
	// extents must hold less than its size (compressible, two sparse blocks).
	var n int64
	for _, e := range files["big/twenty-mib"].Extents {
		n += e.Length
	}
	if n == 0 || n >= 20<<20 {
		t.Errorf("20 MiB file extents hold %d bytes", n)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, 0, n+32)
	h := sha256.Sum256([]byte("seed"))
	for len(b) < n {
		h = sha256.Sum256(h[:])
		b = append(b, h[:]...)
	}
	return b[:n]
}

func TestRealTree(t *testing.T) {
	t.Parallel()
	const dir = "/usr/share/doc"
	tr, err := source.FromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := build(t, tr, Options{Mtime: testMtime})
	checkImage(t, img, tr)
}

// TestDeterministic builds the same tree with 1 and 4 workers and compares
// the images byte for byte.
func TestDeterministic(t *testing.T) {
	tr := treetest.Random(7, treetest.Options{Files: 400, Devices: true, Xattrs: true, HighIDs: true, LongName: true, BigDir: 500})
	for _, c := range []Compression{Zstd, Gzip} {
		a, _ := build(t, tr, Options{Compression: c, Mtime: testMtime, Workers: 1})
		b, _ := build(t, tr, Options{Compression: c, Mtime: testMtime, Workers: 4})
		ab, err := os.ReadFile(a)
		if err != nil {
			t.Fatal(err)
		}
		bb, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ab, bb) {
			t.Errorf("%v: images built with 1 and 4 workers differ", c)
		}
	}
}

func TestSuperblock(t *testing.T) {
	tr := treetest.Random(8, treetest.Options{Files: 50})
	img, _ := build(t, tr, Options{Mtime: testMtime})
	out := run(t, "unsquashfs", "-s", img)
	for _, want := range []string{
		"Compression zstd",
		"Block size 131072",
		"Duplicates are removed",
		"Filesystem is exportable via NFS",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("unsquashfs -s lacks %q:\n%s", want, out)
		}
	}
	got := strings.TrimSpace(run(t, "unsquashfs", "-mkfs-time", img))
	if got != fmt.Sprint(testMtime.Unix()) {
		t.Errorf("mkfs time %s, want %d", got, testMtime.Unix())
	}
}

func TestErrors(t *testing.T) {
	dev := tree.New(testMtime)
	if err := dev.Put("dev/x", &tree.Inode{Type: tree.CharDevice, Major: 5000}); err != nil {
		t.Fatal(err)
	}
	acl := tree.New(testMtime)
	n := &tree.Inode{Type: tree.Regular, Perm: 0o644}
	// user::rw- user:1000:r-- group::r-- mask::r-- other::r--: an ACL
	// Linux accepts, which squashfs has no place for.
	n.SetXattr(tree.ACLAccess, tree.EncodeACL([]tree.ACLEntry{{Tag: tree.ACLUserObj, Perm: 6, ID: tree.NoID},
		{Tag: tree.ACLUser, Perm: 4, ID: 1000}, {Tag: tree.ACLGroupObj, Perm: 4, ID: tree.NoID},
		{Tag: tree.ACLMask, Perm: 4, ID: tree.NoID}, {Tag: tree.ACLOther, Perm: 4, ID: tree.NoID}}))
	if err := acl.Put("f", n); err != nil {
		t.Fatal(err)
	}
	short := tree.New(testMtime)
	if err := short.Put("f", &tree.Inode{Type: tree.Regular, Size: 10, Content: tree.Bytes("abc")}); err != nil {
		t.Fatal(err)
	}
	loop := tree.New(testMtime)
	sub := &tree.Inode{Type: tree.Dir, Perm: 0o755}
	loop.Root.Entries = []tree.Entry{{Name: "a", Inode: sub}, {Name: "b", Inode: sub}}
	for _, c := range []struct {
		name string
		t    *tree.Tree
		o    Options
		want error
	}{
		{"block size", tree.New(testMtime), Options{BlockSize: 3000}, ErrBlockSize},
		{"level", tree.New(testMtime), Options{Compression: Gzip, Level: 12}, ErrLevel},
		{"compression", tree.New(testMtime), Options{Compression: 9}, ErrCompression},
		{"nil tree", &tree.Tree{}, Options{}, ErrNilTree},
		{"device", dev, Options{}, tree.ErrLinux},
		{"xattr namespace", acl, Options{}, ErrXattrName},
		{"short content", short, Options{}, ErrShortContent},
		{"directory twice", loop, Options{}, ErrDirLink},
	} {
		_, err := Write(discard{}, c.t, c.o)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

// TestFailures checks that a failing image writer or file source stops the
// pipeline and surfaces the error instead of hanging.
func TestFailures(t *testing.T) {
	tr := treetest.Random(9, treetest.Options{Files: 300, MaxSize: 4 << 20})
	for _, limit := range []int64{0, 100, 1 << 20, 8 << 20} {
		_, err := Write(&failingWriter{limit: limit}, tr, Options{Workers: 2})
		if !errors.Is(err, errDiskFull) {
			t.Errorf("writer failing after %d bytes: got %v", limit, err)
		}
	}
	bad := tree.New(testMtime)
	if err := bad.Put("a/b", &tree.Inode{Type: tree.Regular, Size: 1 << 20, Content: failingContent{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(discard{}, bad, Options{}); !errors.Is(err, errUnreadable) {
		t.Errorf("unreadable content: got %v", err)
	}
}

var (
	errDiskFull   = errors.New("disk full")
	errUnreadable = errors.New("unreadable")
)

type failingWriter struct{ limit int64 }

func (w *failingWriter) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > w.limit {
		return 0, errDiskFull
	}
	return len(p), nil
}

type failingContent struct{}

func (failingContent) Open() (io.ReadCloser, error) { return nil, errUnreadable }

type discard struct{}

func (discard) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

func TestCompressionNames(t *testing.T) {
	for c := range Compression(2) {
		if s := c.String(); strings.HasPrefix(s, "compression(") {
			t.Errorf("%d has no name", c)
		}
	}
}

// TestTablesAndExtendedInodes covers what random trees do not: the
// extended inode of every type (xattrs on directories, symlinks, devices,
// fifos and sockets), hard-linked non-files, id and xattr id tables that
// span several metadata blocks, and directory headers split because inode
// numbers jump by more than 32767.
func TestTablesAndExtendedInodes(t *testing.T) {
	t.Parallel()
	tr := tree.New(testMtime)
	put := func(p string, n *tree.Inode) {
		t.Helper()
		if n.Mtime.IsZero() {
			n.Mtime = testMtime
		}
		if err := tr.Put(p, n); err != nil {
			t.Fatal(err)
		}
	}
	// 3000 distinct uids and gids (6000 ids: 3 id table blocks) and 2500
	// distinct xattr sets (5 xattr id blocks, many key/value blocks).
	for i := range 3000 {
		n := &tree.Inode{Type: tree.Regular, Perm: 0o640, UID: 1000 + uint32(i), GID: 200000 + uint32(i),
			Size: 2, Content: tree.Bytes("hi")}
		if i < 2500 {
			n.SetXattr("user.index", []byte(fmt.Sprint(i)))
			n.SetXattr("trusted.kiln", bytes.Repeat([]byte{byte(i)}, i%300))
		}
		put(fmt.Sprintf("owners/%04d", i), n)
	}
	// "a" and "z" sandwich 33000 inodes, so their inode numbers differ by
	// more than a directory header can reach (32767).
	put("jump/a", &tree.Inode{Type: tree.Regular, Perm: 0o644, Size: 1, Content: tree.Bytes("a")})
	for i := range 33000 {
		put(fmt.Sprintf("jump/m/%05d", i), &tree.Inode{Type: tree.FIFO, Perm: 0o600})
	}
	put("jump/z", &tree.Inode{Type: tree.Regular, Perm: 0o644, Size: 1, Content: tree.Bytes("z")})
	// extended inodes of every type
	xa := func(n *tree.Inode) *tree.Inode {
		n.SetXattr("trusted.overlay.opaque", []byte("y"))
		n.SetXattr("security.selinux", []byte("system_u:object_r:usr_t:s0\x00"))
		return n
	}
	put("ext/dir", xa(&tree.Inode{Type: tree.Dir, Perm: 0o750}))
	put("ext/symlink", xa(&tree.Inode{Type: tree.Symlink, Perm: 0o777, Target: "dir"}))
	put("ext/block", xa(&tree.Inode{Type: tree.BlockDevice, Perm: 0o600, Major: 259, Minor: 1}))
	put("ext/char", xa(&tree.Inode{Type: tree.CharDevice, Perm: 0o600, Major: 4095, Minor: 1<<20 - 1}))
	put("ext/fifo", xa(&tree.Inode{Type: tree.FIFO, Perm: 0o600}))
	put("ext/socket", xa(&tree.Inode{Type: tree.Socket, Perm: 0o600}))
	put("ext/file", xa(&tree.Inode{Type: tree.Regular, Perm: 0o600, Size: 5, Content: tree.Bytes("hello")}))
	// hard links of non-files
	for _, p := range []string{"ext/symlink", "ext/char", "ext/fifo", "ext/socket"} {
		if err := tr.Link(p+"-link", p); err != nil {
			t.Fatal(err)
		}
	}
	img, _ := build(t, tr, Options{Mtime: testMtime})
	checkImage(t, img, tr)
}
