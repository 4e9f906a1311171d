package fat_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/fs/fat"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

const mib = 1 << 20

// fatOnly copies the directories and regular files of src into a new
// tree, giving every hard-linked name its own inode: that is what a FAT
// volume can hold and what reading one back gives.
func fatOnly(src *tree.Tree) *tree.Tree {
	var cp func(n *tree.Inode) *tree.Inode
	cp = func(n *tree.Inode) *tree.Inode {
		c := *n
		c.Entries = nil
		for _, e := range n.Entries {
			if e.Inode.Type == tree.Dir || e.Inode.Type == tree.Regular {
				c.Entries = append(c.Entries, tree.Entry{Name: e.Name, Inode: cp(e.Inode)})
			}
		}
		return &c
	}
	return &tree.Tree{Root: cp(src.Root)}
}

// specialNames adds names that exercise short-name generation: 8.3 names
// in every case, names that collide in 8.3 form, unicode, characters a
// short name cannot hold, and long names of exactly 13 and 26 units.
func specialNames(t *tree.Tree) {
	mtime := time.Date(2024, 2, 29, 13, 37, 42, 500_000_000, time.UTC)
	names := []string{
		"Long Name One.txt", "Long Name Two.txt", "Long Name Three.txt",
		"résumé.pdf", "日本語のファイル名.txt", "snow ☃ man.txt", "a+b=c;d,e[f].txt",
		".hidden", "archive.tar.gz", "ReadMe.TXT", "lower.txt", "UPPER.TXT", "mixed.TXT",
		"abcdefghijklm", "abcdefghijklmnopqrstuvwxyz", "FOOBAR~1.TXT", "foo bar.txt",
		"x.jpeg", "no_ext", "NOEXT2", "a.b.c.d",
	}
	for i, name := range names {
		data := []byte(strings.Repeat(name+"\n", i+1))
		must(t.Put("special/"+name, &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: mtime, Size: int64(len(data)), Content: tree.Bytes(data)}))
	}
	for i := range 30 {
		data := []byte(fmt.Sprint(i))
		must(t.Put(fmt.Sprintf("special/many/Long Name %02d.txt", i), &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: mtime, Size: int64(len(data)), Content: tree.Bytes(data)}))
	}
	must(t.Put("special/Sub Directory With Long Name", &tree.Inode{Type: tree.Dir, Perm: 0o755, Mtime: mtime}))
	must(t.Put("special/Sub Directory With Long Name/deeper/deepest/file.txt", &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: mtime, Size: 2, Content: tree.Bytes("hi")}))
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// dropUnsupported removes every entry FAT cannot store (symlinks,
// devices, fifos, sockets) from t in place; hard links stay shared inodes.
func dropUnsupported(t *tree.Tree) *tree.Tree {
	_ = t.Walk(func(_ string, n *tree.Inode) error {
		var keep []tree.Entry
		for _, e := range n.Entries {
			if e.Inode.Type == tree.Dir || e.Inode.Type == tree.Regular {
				keep = append(keep, e)
			}
		}
		n.Entries = keep
		return nil
	})
	return t
}

// randomTree is a seeded random tree with long and colliding names and
// hard links, without what FAT cannot hold.
func randomTree(seed uint64, o treetest.Options) *tree.Tree {
	t := treetest.Random(seed, o)
	specialNames(t)
	return dropUnsupported(t)
}

// testTree is a random tree of several hundred files, a directory of 600
// long names and the special names, reduced to what FAT holds.
func testTree() *tree.Tree {
	return randomTree(7, treetest.Options{Files: 400, MaxSize: 256 << 10, BigDir: 600, LongName: true})
}

var testOpts = fat.Options{
	Size:     128 * mib,
	VolumeID: 0x1234abcd,
	Mtime:    time.Date(2024, 1, 2, 3, 4, 6, 0, time.UTC),
}

// writeImage writes t into a new sparse file and returns its path.
func writeImage(tb testing.TB, t *tree.Tree, opts fat.Options) (string, *blockmap.Map) {
	tb.Helper()
	img := filepath.Join(tb.TempDir(), "esp.img")
	f, err := os.Create(img)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	m, err := fat.Write(f, t, opts)
	if err != nil {
		tb.Fatalf("Write: %v", err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	st, err := os.Stat(img)
	if err != nil {
		tb.Fatal(err)
	}
	if st.Size() != opts.Size/512*512 {
		tb.Fatalf("image is %d bytes, want %d", st.Size(), opts.Size/512*512)
	}
	return img, m
}

func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C.UTF-8")
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fsckInfo matches the lines fsck.fat -n -v prints about a healthy volume;
// anything else is a complaint.
var fsckInfo = regexp.MustCompile(`^(fsck\.fat \d.*|Checking we can access the last sector of the filesystem|Boot sector contents:|System ID ".*"|Media byte 0xf8 \(hard disk\)|\s*\d+ bytes per logical sector|\s*\d+ bytes per cluster|\s*\d+ reserved sectors|First FAT starts at byte \d+ \(sector \d+\)|\s*2 FATs, 32 bit entries|\s*\d+ bytes per FAT \(= \d+ sectors\)|Root directory start at cluster 2 \(arbitrary size\)|Data area starts at byte \d+ \(sector \d+\)|\s*\d+ data clusters \(\d+ bytes\)|\d+ sectors/track, \d+ heads|\s*\d+ hidden sectors|\s*\d+ sectors total|Checking for unused clusters\.|Checking free cluster summary\.|.*: \d+ files, \d+/\d+ clusters|)$`)

// fsck runs fsck.fat -n -v and fails on a non-zero exit or any line that
// is not one of its informational lines.
func fsck(tb testing.TB, img string) string {
	tb.Helper()
	out := run(tb, "fsck.fat", "-n", "-v", img)
	for _, line := range strings.Split(out, "\n") {
		if !fsckInfo.MatchString(line) {
			tb.Fatalf("fsck.fat complains: %q\n%s", line, out)
		}
	}
	return out
}

// extract copies the whole volume out with mcopy and reads it back.
func extract(tb testing.TB, img string) *tree.Tree {
	tb.Helper()
	out := filepath.Join(tb.TempDir(), "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		tb.Fatal(err)
	}
	run(tb, "mcopy", "-s", "-n", "-m", "-i", img, "::/", out+"/")
	return readDir(tb, out)
}

// readDir reads the directories and regular files under root into a tree
// (names, sizes, content, mtimes); anything else fails the test. It stands
// in for source.FromDir so this package's tests build on their own.
func readDir(tb testing.TB, root string) *tree.Tree {
	tb.Helper()
	st, err := os.Stat(root)
	if err != nil {
		tb.Fatal(err)
	}
	t := tree.New(st.ModTime())
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		n := &tree.Inode{Perm: uint16(info.Mode().Perm()), Mtime: info.ModTime()}
		switch {
		case info.IsDir():
			n.Type = tree.Dir
		case info.Mode().IsRegular():
			n.Type, n.Size, n.Content = tree.Regular, info.Size(), tree.HostFile(p)
		default:
			return fmt.Errorf("%s: unexpected file mode %v", p, info.Mode())
		}
		return t.Put(filepath.ToSlash(rel), n)
	})
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

var fatCompare = treetest.CompareOptions{
	IgnoreOwner: true, IgnoreMode: true, IgnoreXattrs: true,
	TimeGranularity: 2 * time.Second,
}

func TestRandomTree(t *testing.T) {
	src := testTree()
	img, m := writeImage(t, src, testOpts)
	want := fatOnly(src) // hard links come back as separate files
	out := fsck(t, img)
	st := want.Stats()
	// fsck.fat counts the volume label as a file.
	if !strings.Contains(out, fmt.Sprintf(" %d files,", st.Entries)) {
		t.Errorf("fsck.fat counts a different number of files than the tree's %d:\n%s", st.Entries-1, out)
	}

	// mdir lists every path.
	listing := run(t, "mdir", "-/", "-b", "-i", img, "::/")
	var gotPaths, wantPaths []string
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		gotPaths = append(gotPaths, strings.TrimSuffix(strings.TrimPrefix(line, "::/"), "/"))
	}
	_ = want.Walk(func(p string, n *tree.Inode) error {
		if p != "" {
			wantPaths = append(wantPaths, p)
		}
		return nil
	})
	sort.Strings(gotPaths)
	sort.Strings(wantPaths)
	if strings.Join(gotPaths, "\n") != strings.Join(wantPaths, "\n") {
		t.Errorf("mdir -/ -b lists %d paths, want %d", len(gotPaths), len(wantPaths))
	}
	vol := run(t, "mdir", "-i", img, "::/special")
	for _, s := range []string{"Volume in drive : is EFI-SYSTEM", "Volume Serial Number is 1234-ABCD", "LONGNA~1 TXT", "LONGNA~2 TXT", "Long Name One.txt", "FOOBAR~2 TXT"} {
		if !strings.Contains(vol, s) {
			t.Errorf("mdir ::/special lacks %q:\n%s", s, vol)
		}
	}

	// mcopy gives back the same tree.
	got := extract(t, img)
	got.Root.Mtime = want.Root.Mtime // FAT's root directory has no time
	if err := treetest.Equal(want, got, fatCompare); err != nil {
		t.Fatalf("mcopy extraction differs: %v", err)
	}

	// The block map points at every file's bytes.
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	checkBlockMap(t, img, want, m)
}

func checkBlockMap(t *testing.T, img string, want *tree.Tree, m *blockmap.Map) {
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, bf := range m.Files {
		node, err := want.Lookup(bf.Path)
		if err != nil {
			t.Fatalf("block map names %q: %v", bf.Path, err)
		}
		var data []byte
		for _, e := range bf.Extents {
			if e.Offset%m.BlockSize != 0 {
				t.Errorf("%s: extent at %d is not cluster aligned", bf.Path, e.Offset)
			}
			b := make([]byte, e.Length)
			if _, err := f.ReadAt(b, e.Offset); err != nil {
				t.Fatal(err)
			}
			data = append(data, b...)
		}
		var wantData []byte
		if node.Content != nil {
			rc, _ := node.Content.Open()
			wantData, _ = io.ReadAll(rc)
			rc.Close()
		}
		if !bytes.Equal(data, wantData) || bf.Size != node.Size {
			t.Errorf("%s: block map bytes differ from the file", bf.Path)
		}
		n++
	}
	if want.Stats().Entries-1-countDirs(want) != n {
		t.Errorf("block map has %d files, want %d", n, want.Stats().Entries-1-countDirs(want))
	}
}

func countDirs(t *tree.Tree) int {
	n := 0
	_ = t.Walk(func(p string, i *tree.Inode) error {
		if p != "" && i.Type == tree.Dir {
			n++
		}
		return nil
	})
	return n
}

func TestEmptyTree(t *testing.T) {
	img, m := writeImage(t, tree.New(time.Time{}), fat.Options{Size: 64 * mib, VolumeID: 1})
	out := fsck(t, img)
	if !strings.Contains(out, " 1 files, 1/") { // the volume label
		t.Errorf("empty volume should use one cluster:\n%s", out)
	}
	if len(m.Files) != 0 {
		t.Errorf("block map has files: %v", m.Files)
	}
	if s := run(t, "mdir", "-i", img, "::/"); !strings.Contains(s, "No files") {
		t.Errorf("mdir of an empty volume:\n%s", s)
	}
}

// TestSizes writes volumes at sizes where FAT sizing is easy to get wrong
// (go-diskfs gave 64, 129, 194, 259, 505–507, 762–763 and 1018–1020 MiB a
// FAT smaller than their cluster count) and checks them with fsck.fat.
func TestSizes(t *testing.T) {
	sizes := []int64{33 * mib, 64 * mib, 100 * mib, 129 * mib, 194 * mib, 259 * mib, 260 * mib, 261 * mib,
		505 * mib, 506 * mib, 507 * mib, 762 * mib, 763 * mib, 1018 * mib, 1019 * mib, 1020 * mib,
		2048 * mib, 33*mib + 7*512 + 100, fat.MinSize()}
	for i, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			src := randomTree(uint64(100+i), treetest.Options{Files: 60, MaxSize: 64 << 10, LongName: true})
			// A name outside the BMP takes a UTF-16 surrogate pair. mtools
			// 4.0.32 mangles such names when it copies them out, so only
			// fsck.fat and mdir see this one (names_test.go checks its
			// encoding).
			must(src.Put("special/emoji 😀 file.txt", &tree.Inode{Type: tree.Regular, Mtime: testOpts.Mtime}))
			opts := testOpts
			opts.Size = size
			img, _ := writeImage(t, src, opts)
			out := fsck(t, img)
			var clusters int
			for _, line := range strings.Split(out, "\n") {
				if _, err := fmt.Sscanf(strings.TrimSpace(line), "%d data clusters", &clusters); err == nil {
					break
				}
			}
			if clusters < 65525 {
				t.Errorf("%d clusters, FAT32 needs at least 65525", clusters)
			}
			run(t, "mdir", "-i", img, "::/special")
		})
	}
}

func TestReproducible(t *testing.T) {
	a, ma := writeImage(t, testTree(), testOpts)
	b, mb := writeImage(t, testTree(), testOpts)
	fa, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fa, fb) {
		for i := range fa {
			if fa[i] != fb[i] {
				t.Fatalf("two builds differ at byte %d", i)
			}
		}
	}
	var ja, jb bytes.Buffer
	must(ma.Write(&ja))
	must(mb.Write(&jb))
	if !bytes.Equal(ja.Bytes(), jb.Bytes()) {
		t.Fatal("two builds give different block maps")
	}
	// A different volume ID changes only the two boot sectors.
	opts := testOpts
	opts.VolumeID++
	c, _ := writeImage(t, testTree(), opts)
	fc, err := os.ReadFile(c)
	if err != nil {
		t.Fatal(err)
	}
	var diff []int
	for i := range fa {
		if fa[i] != fc[i] {
			diff = append(diff, i/512)
		}
	}
	if len(diff) != 2 || diff[0] != 0 || diff[1] != 6 {
		t.Errorf("changing the volume ID changed sectors %v, want [0 6]", diff)
	}
}

func TestFull(t *testing.T) {
	src := tree.New(testOpts.Mtime)
	big := bytes.Repeat([]byte{1}, 20*mib)
	for i := range 2 {
		must(src.Put(fmt.Sprintf("big%d.bin", i), &tree.Inode{Type: tree.Regular, Mtime: testOpts.Mtime, Size: int64(len(big)), Content: tree.Bytes(big)}))
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = fat.Write(f, src, fat.Options{Size: 33 * mib})
	if !errors.Is(err, fat.ErrFull) {
		t.Fatalf("Write of 40 MiB into 33 MiB: %v, want %v", err, fat.ErrFull)
	}
	if st, _ := f.Stat(); st.Size() != 0 {
		t.Errorf("a full volume was detected after writing %d bytes", st.Size())
	}
	// Exactly full is fine.
	src = tree.New(testOpts.Mtime)
	free := 66504 - 1 // clusters of a 33 MiB volume, minus the root
	data := bytes.Repeat([]byte{2}, free*512)
	must(src.Put("FILL.BIN", &tree.Inode{Type: tree.Regular, Mtime: testOpts.Mtime, Size: int64(len(data)), Content: tree.Bytes(data)}))
	img, _ := writeImage(t, src, fat.Options{Size: 33 * mib})
	if out := fsck(t, img); !strings.Contains(out, "66504/66504 clusters") {
		t.Errorf("want a full volume:\n%s", out)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*tree.Tree)
		opts  fat.Options
		err   error
		msg   string
	}{
		{"symlink", func(tr *tree.Tree) {
			must(tr.Put("EFI/boot/link", &tree.Inode{Type: tree.Symlink, Target: "x"}))
		}, testOpts, fat.ErrUnsupportedType, "EFI/boot/link: fat: unsupported file type: symlink"},
		{"device", func(tr *tree.Tree) {
			must(tr.Put("null", &tree.Inode{Type: tree.CharDevice, Major: 1, Minor: 3}))
		}, testOpts, fat.ErrUnsupportedType, "null: fat: unsupported file type: char-device"},
		{"case", func(tr *tree.Tree) {
			must(tr.Put("EFI/a.txt", &tree.Inode{Type: tree.Regular}))
			must(tr.Put("EFI/A.TXT", &tree.Inode{Type: tree.Regular}))
		}, testOpts, fat.ErrDuplicateName, "EFI: fat: names differ only in case"},
		{"colon", func(tr *tree.Tree) {
			must(tr.Put("a:b", &tree.Inode{Type: tree.Regular}))
		}, testOpts, fat.ErrInvalidName, "/: fat: name not allowed in FAT"},
		{"trailing dot", func(tr *tree.Tree) {
			must(tr.Put("d/a.", &tree.Inode{Type: tree.Regular}))
		}, testOpts, fat.ErrInvalidName, "d: fat: name not allowed"},
		{"short content", func(tr *tree.Tree) {
			must(tr.Put("f", &tree.Inode{Type: tree.Regular, Size: 10, Content: tree.Bytes("abc")}))
		}, testOpts, fat.ErrContentSize, "writing f: fat: content length differs"},
		{"long content", func(tr *tree.Tree) {
			must(tr.Put("f", &tree.Inode{Type: tree.Regular, Size: 2, Content: tree.Bytes("abc")}))
		}, testOpts, fat.ErrContentSize, "writing f: fat: content length differs"},
		{"too small", func(*tree.Tree) {}, fat.Options{Size: 32 * mib}, fat.ErrTooSmall, "fat: partition too small for FAT32: 33554432 bytes"},
		{"too large", func(*tree.Tree) {}, fat.Options{Size: 4 << 40}, fat.ErrTooLarge, "fat: partition too large"},
		{"label", func(*tree.Tree) {}, fat.Options{Size: 64 * mib, Label: "EFI/SYSTEM"}, fat.ErrInvalidLabel, "fat: invalid volume label"},
		{"big directory", func(tr *tree.Tree) {
			for i := range 22000 { // a long name and a short entry each: 66000 entries
				must(tr.Put(fmt.Sprintf("EFI/dir/long-name-%05d", i), &tree.Inode{Type: tree.Regular}))
			}
		}, testOpts, fat.ErrDirFull, "EFI/dir: fat: too many entries in directory: 66002 entries, the most is 65536"},
		{"huge file", func(tr *tree.Tree) {
			must(tr.Put("big", &tree.Inode{Type: tree.Regular, Size: 1 << 32}))
		}, testOpts, fat.ErrFileTooLarge, "big: fat: file larger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := tree.New(testOpts.Mtime)
			tt.setup(tr)
			f, err := os.Create(filepath.Join(t.TempDir(), "img"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = fat.Write(f, tr, tt.opts)
			if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tt.err, tt.msg)
			}
		})
	}
}

func ExampleWrite() {
	t := tree.New(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	loader := []byte("not really a boot loader")
	_ = t.Put("EFI/BOOT/BOOTX64.EFI", &tree.Inode{Type: tree.Regular, Mtime: t.Root.Mtime, Size: int64(len(loader)), Content: tree.Bytes(loader)})

	f, err := os.CreateTemp("", "esp-*.img")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()

	m, err := fat.Write(f, t, fat.Options{Size: 128 << 20, VolumeID: 0x4b494c4e, Mtime: t.Root.Mtime})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, file := range m.Files {
		fmt.Printf("%s: %d bytes at offset %d\n", file.Path, file.Size, file.Extents[0].Offset)
	}
	// Output:
	// EFI/BOOT/BOOTX64.EFI: 24 bytes at offset 2098688
}

// BenchmarkWrite measures Write on the test tree into a 256 MiB volume.
func BenchmarkWrite(b *testing.B) {
	src := testTree()
	img := filepath.Join(b.TempDir(), "esp.img")
	b.SetBytes(src.Stats().Bytes)
	for b.Loop() {
		f, err := os.Create(img)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := fat.Write(f, src, fat.Options{Size: 256 * mib}); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// BenchmarkMkfsMcopy measures mkfs.vfat -F 32 -C plus mcopy -s of the same
// tree (from a host directory), the tools kiln's writer replaces.
func BenchmarkMkfsMcopy(b *testing.B) {
	src := testTree()
	dir := filepath.Join(b.TempDir(), "src")
	materialize(b, src, dir)
	img := filepath.Join(b.TempDir(), "esp.img")
	b.SetBytes(src.Stats().Bytes)
	for b.Loop() {
		os.Remove(img)
		run(b, "mkfs.vfat", "-F", "32", "-C", img, fmt.Sprint(256*1024))
		entries, err := os.ReadDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		args := []string{"-s", "-m", "-i", img}
		for _, e := range entries {
			args = append(args, filepath.Join(dir, e.Name()))
		}
		run(b, "mcopy", append(args, "::/")...)
	}
}

// materialize writes a tree of directories and regular files to dir.
func materialize(tb testing.TB, t *tree.Tree, dir string) {
	err := t.Walk(func(p string, n *tree.Inode) error {
		full := filepath.Join(dir, p)
		if n.Type == tree.Dir {
			return os.MkdirAll(full, 0o755)
		}
		var data []byte
		if n.Content != nil {
			rc, err := n.Content.Open()
			if err != nil {
				return err
			}
			data, err = io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			return err
		}
		return os.Chtimes(full, n.Mtime, n.Mtime)
	})
	if err != nil {
		tb.Fatal(err)
	}
}
