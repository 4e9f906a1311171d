package ext4

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

var testOpts = Options{
	ReadOnly: true,
	UUID:     [16]byte{0x6b, 0x69, 0x6c, 0x6e, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
	HashSeed: [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
	Label:    "kiln-test",
	Mtime:    time.Unix(1700000000, 0),
}

// tool returns the path of a required e2fsprogs tool; a missing tool fails
// the test.
func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if p, err = exec.LookPath("/usr/sbin/" + name); err != nil {
			t.Fatalf("%s is required: %v", name, err)
		}
	}
	return p
}

// build writes t to a fresh file and returns its path and block map.
func build(t testing.TB, tr *tree.Tree, o Options) (string, *blockmap.Map) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Write(f, tr, o)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("block map: %v", err)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != m.ImageSize {
		t.Fatalf("image file is %d bytes, block map says %d", st.Size(), m.ImageSize)
	}
	return img, m
}

var fsckOK = regexp.MustCompile(`^(e2fsck \S+ \(.*\)|Pass [1-5]: .*|\S+: \d+/\d+ files \(.*\), \d+/\d+ blocks)$`)

// fsck runs e2fsck -fn and fails on a non-zero exit or any line beyond
// the pass headers and the summary.
func fsck(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command(tool(t, "e2fsck"), "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !fsckOK.MatchString(line) {
			t.Fatalf("e2fsck -fn warned: %q\n%s", line, out)
		}
	}
}

// debugfs runs commands (one per line) against img and returns the
// output of each command.
func debugfs(t testing.TB, img string, cmds []string) []string {
	t.Helper()
	script := filepath.Join(t.TempDir(), "cmds")
	if err := os.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool(t, "debugfs"), "-f", script, img)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = io.Discard
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	var res []string
	var cur *strings.Builder
	sc := bufio.NewScanner(&out)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "debugfs: ") {
			res = append(res, "")
			cur = &strings.Builder{}
			continue
		}
		if cur != nil {
			cur.WriteString(line)
			cur.WriteByte('\n')
			res[len(res)-1] = cur.String()
		}
	}
	if len(res) != len(cmds) {
		t.Fatalf("debugfs: %d outputs for %d commands", len(res), len(cmds))
	}
	return res
}

func quote(p string) string { return `"/` + p + `"` }

var (
	statInode = regexp.MustCompile(`Inode: (\d+)\s+Type: .*Mode:\s+(\d+)`)
	statUser  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)`)
	statLinks = regexp.MustCompile(`Links: (\d+)`)
	statMtime = regexp.MustCompile(`(?m)^ mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?`)
	statDev   = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	eaName    = regexp.MustCompile(`^  (.+?)\s+\((\d+)\)`)
	hexName   = regexp.MustCompile(`^([0-9a-f]{2} )*[0-9a-f]{2}$`)
	eaValue   = regexp.MustCompile(`^\((\d+)\)(?: = ((?:[0-9a-f]{2} ?)*))?`)
)

// readBack builds a tree from the image with debugfs alone: rdump for
// file content and symlink targets, ls -p for names and inode numbers
// (so hard links come back as shared inodes), stat for modes, owners,
// nanosecond mtimes, link counts and device numbers, ea_get for xattrs.
func readBack(t testing.TB, img string) *tree.Tree {
	t.Helper()
	dump := filepath.Join(t.TempDir(), "rdump")
	if err := os.Mkdir(dump, 0o755); err != nil {
		t.Fatal(err)
	}
	debugfs(t, img, []string{"rdump / " + dump})

	// Names and inode numbers, directory by directory.
	type ent struct {
		path string
		ino  int
	}
	var ents []ent
	dirs := []string{""}
	for len(dirs) > 0 {
		cmds := make([]string, len(dirs))
		for i, d := range dirs {
			cmds[i] = "ls -p " + quote(d)
		}
		outs := debugfs(t, img, cmds)
		var next []string
		for i, out := range outs {
			for _, line := range strings.Split(out, "\n") {
				if line == "" {
					continue
				}
				f := strings.Split(line, "/")
				if len(f) != 8 {
					t.Fatalf("ls -p %q: unexpected line %q", dirs[i], line)
				}
				if f[5] == "." || f[5] == ".." || f[1] == "0" { // empty slots (index nodes)
					continue
				}
				ino, _ := strconv.Atoi(f[1])
				p := path.Join(dirs[i], f[5])
				ents = append(ents, ent{p, ino})
				if strings.HasPrefix(f[2], "04") {
					next = append(next, p)
				}
			}
		}
		dirs = next
	}

	// One stat per inode.
	inodes := map[int]*tree.Inode{}
	var order []int
	for _, e := range append([]ent{{"", rootIno}}, ents...) {
		if _, ok := inodes[e.ino]; !ok {
			inodes[e.ino] = &tree.Inode{}
			order = append(order, e.ino)
		}
	}
	cmds := make([]string, len(order))
	for i, ino := range order {
		cmds[i] = fmt.Sprintf("stat <%d>", ino)
	}
	links := map[int]int{}
	var eaCmds []string
	var eaInos []int
	for i, out := range debugfs(t, img, cmds) {
		n := inodes[order[i]]
		m := statInode.FindStringSubmatch(out)
		u := statUser.FindStringSubmatch(out)
		l := statLinks.FindStringSubmatch(out)
		mt := statMtime.FindStringSubmatch(out)
		if m == nil || u == nil || l == nil || mt == nil {
			t.Fatalf("stat <%d>: cannot parse\n%s", order[i], out)
		}
		perm, _ := strconv.ParseUint(m[2], 8, 16)
		n.Perm = uint16(perm)
		uid, _ := strconv.ParseUint(u[1], 10, 32)
		gid, _ := strconv.ParseUint(u[2], 10, 32)
		n.UID, n.GID = uint32(uid), uint32(gid)
		n.Size, _ = strconv.ParseInt(u[3], 10, 64)
		links[order[i]], _ = strconv.Atoi(l[1])
		lo, _ := strconv.ParseUint(mt[1], 16, 32)
		var extra uint64
		if mt[2] != "" {
			extra, _ = strconv.ParseUint(mt[2], 16, 32)
		}
		n.Mtime = time.Unix(int64(int32(uint32(lo)))+int64(extra&3)<<32, int64(extra>>2))
		if d := statDev.FindStringSubmatch(out); d != nil {
			major, _ := strconv.ParseUint(d[1], 10, 32)
			minor, _ := strconv.ParseUint(d[2], 10, 32)
			n.Major, n.Minor = uint32(major), uint32(minor)
		}
		if _, attrs, ok := strings.Cut(out, "Extended attributes:\n"); ok {
			for _, line := range strings.Split(attrs, "\n") {
				a := eaName.FindStringSubmatch(line)
				if a == nil {
					break
				}
				name := a[1]
				if hexName.MatchString(name) { // debugfs prints unprintable names in hex
					var raw []byte
					for _, h := range strings.Fields(name) {
						x, _ := strconv.ParseUint(h, 16, 8)
						raw = append(raw, byte(x))
					}
					name = string(raw)
				}
				eaCmds = append(eaCmds, fmt.Sprintf("ea_get -x <%d> %s", order[i], name))
				eaInos = append(eaInos, order[i])
			}
		}
	}
	if len(eaCmds) > 0 {
		for i, out := range debugfs(t, img, eaCmds) {
			name := strings.Fields(eaCmds[i])[3]
			k := strings.Index(out, " (")
			var v []string
			if k >= 0 {
				v = eaValue.FindStringSubmatch(strings.TrimSpace(out[k:]))
			}
			if v == nil {
				t.Fatalf("%s: cannot parse %q", eaCmds[i], out)
			}
			var val []byte
			for _, h := range strings.Fields(v[2]) {
				x, _ := strconv.ParseUint(h, 16, 8)
				val = append(val, byte(x))
			}
			if want, _ := strconv.Atoi(v[1]); want != len(val) {
				t.Fatalf("%s: %d bytes printed, size %d", eaCmds[i], len(val), want)
			}
			inodes[eaInos[i]].SetXattr(name, val)
		}
	}

	// Types come from the dump and ls; assemble the tree.
	got := &tree.Tree{Root: inodes[rootIno]}
	got.Root.Type = tree.Dir
	names := map[int]int{}
	subdirs := map[int]int{}
	inoOf := map[string]int{".": rootIno}
	for _, e := range ents {
		inoOf[e.path] = e.ino
	}
	for _, e := range ents {
		n := inodes[e.ino]
		names[e.ino]++
		host := filepath.Join(dump, filepath.FromSlash(e.path))
		if n.Type == 0 {
			st, err := os.Lstat(host)
			switch {
			case err != nil: // rdump skips devices, fifos and sockets: ask the image
				n.Type = specialType(t, img, e.path)
			case st.Mode().IsRegular():
				n.Type = tree.Regular
				n.Content = tree.HostFile(host)
			case st.IsDir():
				n.Type = tree.Dir
				n.Size = 0
			case st.Mode()&os.ModeSymlink != 0:
				n.Type = tree.Symlink
				n.Size = 0
				if n.Target, err = os.Readlink(host); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("%s: unexpected dump type %v", e.path, st.Mode())
			}
		}
		if n.Type == tree.Dir {
			subdirs[inoOf[path.Dir(e.path)]]++
		}
		if err := got.Put(e.path, n); err != nil {
			t.Fatal(err)
		}
	}
	// Link counts as stored must match the names found.
	for ino, n := range inodes {
		want := names[ino]
		if n.Type == tree.Dir {
			want = 2 + subdirs[ino]
		}
		if links[ino] != want {
			t.Fatalf("inode %d: link count %d, %d names", ino, links[ino], want)
		}
	}
	return got
}

func specialType(t testing.TB, img, p string) tree.Type {
	out := debugfs(t, img, []string{"stat " + quote(p)})[0]
	m := regexp.MustCompile(`Type: (\S+ ?\S*)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("stat %s: no type\n%s", p, out)
	}
	switch {
	case strings.HasPrefix(m[1], "character"):
		return tree.CharDevice
	case strings.HasPrefix(m[1], "block"):
		return tree.BlockDevice
	case strings.HasPrefix(m[1], "FIFO"):
		return tree.FIFO
	case strings.HasPrefix(m[1], "socket"):
		return tree.Socket
	}
	t.Fatalf("stat %s: type %q", p, m[1])
	return 0
}

// check runs e2fsck and compares the image read back with want.
func check(t *testing.T, want *tree.Tree, img string) {
	t.Helper()
	fsck(t, img)
	got := readBack(t, img)
	if want.Root.Child("lost+found") == nil {
		if err := got.Remove("lost+found"); err != nil {
			t.Fatal(err)
		}
	}
	if err := treetest.Equal(want, got, treetest.CompareOptions{}); err != nil {
		t.Fatalf("read back: %v", err)
	}
}

func TestRandomTrees(t *testing.T) {
	full := treetest.Options{Devices: true, Xattrs: true, HighIDs: true, LongName: true}
	big := full
	big.BigDir = 3000
	for _, c := range []struct {
		name string
		seed uint64
		tree treetest.Options
		opts func(*Options)
	}{
		{"all", 1, big, func(*Options) {}},
		{"writable", 2, full, func(o *Options) { o.ReadOnly = false }},
		{"sparse", 3, big, func(o *Options) { o.Sparse = true }},
		{"sized", 4, full, func(o *Options) { o.Size = 300 << 20; o.ZeroFill = true }},
		{"zero-seed", 5, treetest.Options{BigDir: 1000}, func(o *Options) { o.HashSeed = [16]byte{} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tr := treetest.Random(c.seed, c.tree)
			o := testOpts
			c.opts(&o)
			img, m := build(t, tr, o)
			check(t, tr, img)
			if !o.Sparse {
				checkBlockMap(t, tr, img, m)
			}
		})
	}
}

func TestEmptyTree(t *testing.T) {
	for _, ro := range []bool{true, false} {
		tr := tree.New(treetest.Epoch)
		o := testOpts
		o.ReadOnly = ro
		img, m := build(t, tr, o)
		check(t, tr, img)
		if len(m.Files) != 0 {
			t.Errorf("block map lists %d files", len(m.Files))
		}
	}
}

func TestRealTree(t *testing.T) {
	tr, err := source.FromDir("/usr/share/doc")
	if err != nil {
		t.Fatal(err)
	}
	img, m := build(t, tr, testOpts)
	check(t, tr, img)
	checkBlockMap(t, tr, img, m)
}

// checkBlockMap reads every file back from the image through the block
// map.
func checkBlockMap(t *testing.T, tr *tree.Tree, img string, m *blockmap.Map) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string]blockmap.File{}
	for _, mf := range m.Files {
		files[mf.Path] = mf
	}
	err = tr.Walk(func(p string, n *tree.Inode) error {
		if n.Type != tree.Regular {
			return nil
		}
		mf, ok := files[p]
		if !ok {
			return fmt.Errorf("%s: not in block map", p)
		}
		var got []byte
		for _, e := range mf.Extents {
			buf := make([]byte, e.Length)
			if _, err := f.ReadAt(buf, e.Offset); err != nil {
				return err
			}
			got = append(got, buf...)
		}
		want := []byte{}
		if n.Content != nil {
			rc, err := n.Content.Open()
			if err != nil {
				return err
			}
			want, err = io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
		}
		if mf.Size != n.Size || !bytes.Equal(got, want) {
			return fmt.Errorf("%s: block map gives %d bytes that differ from the %d of the file", p, len(got), len(want))
		}
		delete(files, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 0 {
		t.Fatalf("block map lists %d paths that are not regular files", len(files))
	}
}

func TestReproducible(t *testing.T) {
	tr := treetest.Random(11, treetest.Options{Devices: true, Xattrs: true, HighIDs: true, LongName: true, BigDir: 600})
	for _, o := range []Options{testOpts, {Sparse: true, UUID: testOpts.UUID, Mtime: testOpts.Mtime}} {
		a, _ := build(t, tr, o)
		b, _ := build(t, tr, o)
		ab, err := os.ReadFile(a)
		if err != nil {
			t.Fatal(err)
		}
		bb, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ab, bb) {
			t.Fatalf("two builds differ (%d and %d bytes)", len(ab), len(bb))
		}
	}
}

func dumpe2fs(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command(tool(t, "dumpe2fs"), "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h: %v\n%s", err, out)
	}
	return string(out)
}

func field(t *testing.T, dump, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `:\s*(.*)$`).FindStringSubmatch(dump)
	if m == nil {
		t.Fatalf("dumpe2fs: no %q", name)
	}
	return m[1]
}

func TestModes(t *testing.T) {
	tr := treetest.Random(21, treetest.Options{Files: 50})
	ro, _ := build(t, tr, testOpts)
	o := testOpts
	o.ReadOnly = false
	rw, m := build(t, tr, o)
	fsck(t, ro)
	fsck(t, rw)

	d := dumpe2fs(t, ro)
	features := field(t, d, "Filesystem features")
	if strings.Contains(features, "has_journal") || !strings.Contains(features, "read-only") {
		t.Errorf("read-only image features: %s", features)
	}
	if s := field(t, d, "Filesystem state"); s != "clean" {
		t.Errorf("read-only image state %q", s)
	}
	if s := field(t, d, "Free inodes"); s != "0" && len(s) > 2 {
		t.Errorf("read-only image has %s free inodes", s)
	}
	for name, want := range map[string]string{
		"Filesystem UUID":        "6b696c6e-0102-0304-0506-0708090a0b0c",
		"Filesystem volume name": "kiln-test",
		"Block size":             "4096",
		"Inode size":             "256",
		"First inode":            "11",
		"Default directory hash": "half_md4",
		"Directory Hash Seed":    "deadbeef-0102-0304-0506-0708090a0b0c",
		"Filesystem created":     "Tue Nov 14 22:13:20 2023",
	} {
		if got := field(t, d, name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}

	d = dumpe2fs(t, rw)
	features = field(t, d, "Filesystem features")
	if !strings.Contains(features, "has_journal") || strings.Contains(features, "read-only") {
		t.Errorf("writable image features: %s", features)
	}
	free, _ := strconv.ParseInt(field(t, d, "Free blocks"), 10, 64)
	if free*BlockSize < m.ImageSize/5 {
		t.Errorf("writable image has %d free blocks of %d", free, m.ImageSize/BlockSize)
	}
	if s := field(t, d, "Total journal blocks"); s != "1024" {
		t.Errorf("journal of %s blocks, want 1024", s)
	}
}

func TestImageFull(t *testing.T) {
	tr := treetest.Random(31, treetest.Options{Files: 100})
	for _, ro := range []bool{true, false} {
		o := testOpts
		o.ReadOnly = ro
		o.Size = 1 << 20
		f, err := os.Create(filepath.Join(t.TempDir(), "img"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Write(f, tr, o)
		f.Close()
		if !errors.Is(err, ErrImageFull) || !strings.Contains(err.Error(), "bytes needed") {
			t.Fatalf("read-only %v: err = %v, want %v naming the bytes needed", ro, err, ErrImageFull)
		}
	}
}

// patterned is content of size bytes: a nonzero block every other block
// up to limit, zeros after it; it is generated, never held in memory.
type patterned struct {
	size, limit int64
}

func (p patterned) Open() (io.ReadCloser, error) {
	return io.NopCloser(&patternReader{p: p}), nil
}

type patternReader struct {
	p   patterned
	off int64
}

func (r *patternReader) Read(b []byte) (int, error) {
	if r.off >= r.p.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), r.p.size-r.off))
	for i := 0; i < n; {
		o := r.off + int64(i)
		blk := o / BlockSize
		k := int(min(int64(n-i), (blk+1)*BlockSize-o)) // up to the end of this block
		seg := b[i : i+k]
		if o < r.p.limit && blk%2 == 0 {
			for j := range seg {
				seg[j] = byte(blk) | 1
			}
		} else {
			clear(seg)
		}
		i += k
	}
	r.off += int64(n)
	return n, nil
}

// TestExtentTree checks files whose extents need index blocks: 2000
// extents (a two-level tree) and a 4 GiB file with data past 4 GiB.
func TestExtentTree(t *testing.T) {
	tr := tree.New(treetest.Epoch)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	holes := patterned{size: 4000 * BlockSize, limit: 4000 * BlockSize}
	must(tr.Put("holes", &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: treetest.Epoch, Size: holes.size, Content: holes}))
	few := patterned{size: 9*BlockSize + 100, limit: 9*BlockSize + 100}
	must(tr.Put("few", &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: treetest.Epoch, Size: few.size, Content: few}))
	o := testOpts
	o.Sparse = true
	img, m := build(t, tr, o)
	check(t, tr, img)
	out := debugfs(t, img, []string{"ex /holes", "ex /few"})
	if !strings.Contains(out[0], " 2/ 2 ") {
		t.Errorf("/holes: want a depth-2 extent tree, got\n%s", out[0][:min(len(out[0]), 600)])
	}
	if !strings.Contains(out[1], " 1/ 1 ") {
		t.Errorf("/few: want a depth-1 extent tree, got\n%s", out[1])
	}
	for _, f := range m.Files {
		var n int64
		for _, e := range f.Extents {
			n += e.Length
		}
		if f.Path == "holes" && n != 2000*BlockSize {
			t.Errorf("holes: block map covers %d bytes, want the 2000 data blocks", n)
		}
	}

	// Beyond 4 GiB: size high bits, large_file, logical blocks past 2^20.
	tr = tree.New(treetest.Epoch)
	huge := patterned{size: 4<<30 + 3*BlockSize + 5, limit: 64 * BlockSize}
	must(tr.Put("huge", &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: treetest.Epoch, Size: huge.size, Content: tailed{huge}}))
	img, m = build(t, tr, o)
	fsck(t, img)
	st := debugfs(t, img, []string{"stat /huge"})[0]
	if !strings.Contains(st, fmt.Sprintf("Size: %d", huge.size)) {
		t.Fatalf("stat /huge:\n%s", st)
	}
	f, err := os.Open(img)
	must(err)
	defer f.Close()
	last := m.Files[0].Extents[len(m.Files[0].Extents)-1]
	buf := make([]byte, BlockSize+5)
	_, err = f.ReadAt(buf, last.Offset+last.Length-int64(len(buf)))
	must(err)
	if !bytes.Equal(buf, tailBytes()) {
		t.Fatalf("tail of /huge: extent %+v, bytes differ", last)
	}
}

// tailed is patterned content whose last BlockSize+5 bytes are nonzero.
type tailed struct{ p patterned }

func tailBytes() []byte {
	return bytes.Repeat([]byte{0x5a}, BlockSize+5)
}

func (c tailed) Open() (io.ReadCloser, error) {
	head := io.LimitReader(&patternReader{p: c.p}, c.p.size-BlockSize-5)
	return io.NopCloser(io.MultiReader(head, bytes.NewReader(tailBytes()))), nil
}

func TestXattrBlocksShared(t *testing.T) {
	tr := tree.New(treetest.Epoch)
	big := bytes.Repeat([]byte("v"), 1000)
	for i := range 30 {
		n := &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: treetest.Epoch, Size: 1, Content: tree.Bytes("x")}
		n.SetXattr("user.big", append(big, byte(i%2)))
		n.SetXattr("trusted.small", []byte{byte(i % 3)})
		n.SetXattr("security.selinux", []byte("system_u:object_r:usr_t:s0\x00"))
		if err := tr.Put(fmt.Sprintf("f%02d", i), n); err != nil {
			t.Fatal(err)
		}
	}
	acl := &tree.Inode{Type: tree.Dir, Perm: 0o755, Mtime: treetest.Epoch}
	// user::rwx user:1000:r-x group::r-x mask::r-x other::r-x (VFS form)
	acl.SetXattr("system.posix_acl_access", []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff,
		2, 0, 5, 0, 0xe8, 3, 0, 0, 4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff,
		0x10, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 5, 0, 0xff, 0xff, 0xff, 0xff})
	if err := tr.Put("acl", acl); err != nil {
		t.Fatal(err)
	}
	// Attributes on a fast symlink, a slow one and a device.
	for i, n := range []*tree.Inode{
		{Type: tree.Symlink, Perm: 0o777, Mtime: treetest.Epoch, Target: "f00"},
		{Type: tree.Symlink, Perm: 0o777, Mtime: treetest.Epoch, Target: strings.Repeat("../", 40) + "f00"},
		{Type: tree.CharDevice, Perm: 0o600, Mtime: treetest.Epoch, Major: 4095, Minor: 1 << 19},
	} {
		// Not user.: Linux keeps those for files and directories only.
		n.SetXattr("trusted.big", big)
		n.SetXattr("trusted.ünïcode-name", []byte{0x80, 0xff}) // name bytes above 0x7f
		n.SetXattr("security.selinux", []byte("system_u:object_r:device_t:s0\x00"))
		if err := tr.Put(fmt.Sprintf("special%d", i), n); err != nil {
			t.Fatal(err)
		}
	}
	img, m := build(t, tr, testOpts)
	fsck(t, img)
	out := debugfs(t, img, []string{"stat /f00", "stat /f01", "stat /f02", "ea_list /acl"})
	acls := regexp.MustCompile(`File ACL: (\d+)`)
	a, b, c := acls.FindStringSubmatch(out[0]), acls.FindStringSubmatch(out[1]), acls.FindStringSubmatch(out[2])
	if a == nil || b == nil || c == nil || a[1] == "0" || a[1] == b[1] || a[1] != c[1] {
		t.Errorf("attribute blocks not shared by identical sets: %v %v %v", a, b, c)
	}
	if !strings.Contains(out[3], "system.posix_acl_access") {
		t.Errorf("ACL not stored: %s", out[3])
	}
	// 30 files, two distinct blocks: the image holds two attribute blocks.
	if len(m.Files) != 30 {
		t.Errorf("%d files in block map", len(m.Files))
	}
	got := readBack(t, img)
	if err := got.Remove("lost+found"); err != nil {
		t.Fatal(err)
	}
	// debugfs turns ACLs back into the VFS form, but with id 0 where the
	// kernel says ACL_UNDEFINED_ID.
	aclGot := got.Root.Child("acl")
	for i, x := range aclGot.Xattrs {
		v := append([]byte(nil), x.Value...)
		for e := 4; e+8 <= len(v); e += 8 {
			if tag := v[e]; tag != 2 && tag != 8 {
				copy(v[e+4:], []byte{0xff, 0xff, 0xff, 0xff})
			}
		}
		aclGot.Xattrs[i].Value = v
	}
	if err := treetest.Equal(tr, got, treetest.CompareOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestErrors(t *testing.T) {
	for name, c := range map[string]struct {
		tr   func() *tree.Tree
		opts func(*Options)
		want error
	}{
		"label": {func() *tree.Tree { return tree.New(treetest.Epoch) },
			func(o *Options) { o.Label = strings.Repeat("x", 17) }, ErrOptions},
		"short content": {func() *tree.Tree {
			tr := tree.New(treetest.Epoch)
			_ = tr.Put("f", &tree.Inode{Type: tree.Regular, Size: 10, Content: tree.Bytes("abc")})
			return tr
		}, func(*Options) {}, ErrContentSize},
		"long content": {func() *tree.Tree {
			tr := tree.New(treetest.Epoch)
			_ = tr.Put("f", &tree.Inode{Type: tree.Regular, Size: 2, Content: tree.Bytes("abc")})
			return tr
		}, func(*Options) {}, ErrContentSize},
		"lost+found file": {func() *tree.Tree {
			tr := tree.New(treetest.Epoch)
			_ = tr.Put("lost+found", &tree.Inode{Type: tree.Regular})
			return tr
		}, func(*Options) {}, ErrTree},
		"xattr namespace": {func() *tree.Tree {
			tr := tree.New(treetest.Epoch)
			n := &tree.Inode{Type: tree.Regular}
			n.SetXattr("os2.x", []byte("y"))
			_ = tr.Put("f", n)
			return tr
		}, func(*Options) {}, tree.ErrLinux},
		"xattr too big": {func() *tree.Tree {
			tr := tree.New(treetest.Epoch)
			n := &tree.Inode{Type: tree.Regular}
			n.SetXattr("user.x", make([]byte, 5000))
			_ = tr.Put("f", n)
			return tr
		}, func(*Options) {}, ErrXattr},
	} {
		t.Run(name, func(t *testing.T) {
			o := testOpts
			c.opts(&o)
			f, err := os.Create(filepath.Join(t.TempDir(), "img"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := Write(f, c.tr(), o); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

// TestHtreeTwoLevels writes a directory whose index needs interior
// blocks (more than 508 leaves): 12000 hard links with 200-byte names.
func TestHtreeTwoLevels(t *testing.T) {
	tr := tree.New(treetest.Epoch)
	f := &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: treetest.Epoch, Size: 2, Content: tree.Bytes("hi")}
	for i := range 12000 {
		if err := tr.Put(fmt.Sprintf("big/%0200d", i), f); err != nil {
			t.Fatal(err)
		}
	}
	img, _ := build(t, tr, testOpts)
	check(t, tr, img)
	out := debugfs(t, img, []string{"htree_dump /big"})[0]
	if !strings.Contains(out, "Indirect levels: 1") {
		t.Fatalf("htree_dump /big: want one indirect level\n%.400s", out)
	}
}

// TestDirHash compares the directory hash with debugfs's dx_hash
// (half_md4 with unsigned characters, hash version 4).
func TestDirHash(t *testing.T) {
	names := []string{"hello", "a", strings.Repeat("n", 255), strings.Repeat("é", 127),
		"a-much-longer-name-that-spans-more-than-thirty-two-bytes.txt", "exactly-thirty-two-bytes-long-xx"}
	img, _ := build(t, tree.New(treetest.Epoch), testOpts)
	for _, seed := range [][16]byte{testOpts.HashSeed, {}} {
		var cmds []string
		for _, n := range names {
			cmds = append(cmds, fmt.Sprintf("dx_hash -h 4 -s %x-%x-%x-%x-%x %s", seed[0:4], seed[4:6], seed[6:8], seed[8:10], seed[10:], n))
		}
		for i, out := range debugfs(t, img, cmds) {
			m := regexp.MustCompile(`is 0x([0-9a-f]+)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("%s: %q", cmds[i], out)
			}
			want, _ := strconv.ParseUint(m[1], 16, 32)
			if got := dirHash(names[i], hashSeed(seed)); got != uint32(want) {
				t.Errorf("dirHash(%q, %x) = %#x, debugfs says %#x", names[i], seed, got, want)
			}
		}
	}
}

func ExampleWrite() {
	t := tree.New(time.Unix(1700000000, 0))
	_ = t.Put("etc/os-release", &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: time.Unix(1700000000, 0),
		Size: 12, Content: tree.Bytes("ID=kiln-os\n\n")})
	_ = t.Put("bin", &tree.Inode{Type: tree.Symlink, Perm: 0o777, Target: "usr/bin"})

	f, err := os.CreateTemp("", "usr-*.img")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	m, err := Write(f, t, Options{ReadOnly: true, UUID: [16]byte{1}, Label: "USR-A", Mtime: time.Unix(1700000000, 0)})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("image bytes:", m.ImageSize)
	for _, file := range m.Files {
		fmt.Println(file.Path, file.Size, file.Extents)
	}
	// Output:
	// image bytes: 36864
	// etc/os-release 12 [{32768 12}]
}

// BenchmarkWriteDir writes a host directory ($KILN_BENCH_DIR, default
// /usr/share/doc); BenchmarkMkfsDir runs mkfs.ext4 -d on the same
// directory, for the ratio.
func BenchmarkWriteDir(b *testing.B) {
	dir := benchDir()
	tr, err := source.FromDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(tr.Stats().Bytes)
	img := filepath.Join(b.TempDir(), "bench.img")
	b.ResetTimer()
	for range b.N {
		f, err := os.Create(img)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Write(f, tr, testOpts); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMkfsDir(b *testing.B) {
	dir := benchDir()
	tr, err := source.FromDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	st := tr.Stats()
	b.SetBytes(st.Bytes)
	size := fmt.Sprintf("%dk", (st.Bytes+int64(st.Inodes)*8192)*3/2/1024+16384)
	mkfs := tool(b, "mkfs.ext4")
	img := filepath.Join(b.TempDir(), "bench.img")
	b.ResetTimer()
	for range b.N {
		os.Remove(img)
		out, err := exec.Command(mkfs, "-q", "-F", "-d", dir, "-b", "4096", "-O", "^has_journal",
			"-E", "root_owner=0:0", img, size).CombinedOutput()
		if err != nil {
			b.Fatalf("mkfs.ext4: %v\n%s", err, out)
		}
	}
}

func benchDir() string {
	if d := os.Getenv("KILN_BENCH_DIR"); d != "" {
		return d
	}
	return "/usr/share/doc"
}

func BenchmarkWrite(b *testing.B) {
	tr := treetest.Random(41, treetest.Options{Files: 1000, MaxSize: 4 << 20})
	b.SetBytes(tr.Stats().Bytes)
	img := filepath.Join(b.TempDir(), "bench.img")
	b.ResetTimer()
	for range b.N {
		f, err := os.Create(img)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Write(f, tr, testOpts); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
