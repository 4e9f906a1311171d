// Package treetest builds seeded random trees for filesystem writer tests
// and compares trees, so a writer's output read back by a real tool (or a
// host directory it was extracted to) can be checked against its input.
package treetest

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// Options shape a random tree. Zero values pick modest defaults.
type Options struct {
	Files    int   // regular files (default 200)
	MaxSize  int64 // largest regular file in bytes (default 1 MiB)
	BigDir   int   // entries in one extra-large directory (default 0)
	Devices  bool  // add char/block devices, a fifo and a socket
	Xattrs   bool  // add user.* and security.capability xattrs
	HighIDs  bool  // use uid/gid above 65535 on some files
	LongName bool  // add 255-byte names
}

// Epoch is the mtime of Random's root; its other times lie in the year
// before it, so a build with SOURCE_DATE_EPOCH=Epoch (1700000000) keeps
// every one of them (later times would be clamped to the epoch).
var Epoch = time.Unix(1700000000, 0)

// Random returns a deterministic tree for the seed: nested directories,
// files of varied sizes (empty, tiny, block-sized, multi-block, with zero
// runs), short and long symlinks, hard links and, as asked, devices,
// xattrs, high ids and long names.
func Random(seed uint64, o Options) *tree.Tree {
	if o.Files == 0 {
		o.Files = 200
	}
	if o.MaxSize == 0 {
		o.MaxSize = 1 << 20
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	t := tree.New(Epoch)
	dirs := []string{""}
	mtime := func() time.Time {
		return Epoch.Add(-time.Duration(r.Int64N(1e9*3600*24*365)) - time.Duration(r.IntN(1e9)))
	}
	for i := 0; i < o.Files/8+1; i++ {
		parent := dirs[r.IntN(len(dirs))]
		p := join(parent, fmt.Sprintf("d%03d", i))
		n := &tree.Inode{Type: tree.Dir, Perm: 0o755, Mtime: mtime()}
		if r.IntN(5) == 0 {
			n.Perm = 0o1777
		}
		must(t.Put(p, n))
		dirs = append(dirs, p)
	}
	var files []string
	for i := 0; i < o.Files; i++ {
		p := join(dirs[r.IntN(len(dirs))], fmt.Sprintf("f%04d.%s", i, []string{"txt", "so", "bin", "conf"}[r.IntN(4)]))
		var size int64
		switch r.IntN(6) {
		case 0:
			size = 0
		case 1:
			size = r.Int64N(100)
		case 2:
			size = 4096 * (1 + r.Int64N(4))
		case 3:
			size = r.Int64N(o.MaxSize + 1)
		default:
			size = r.Int64N(16 << 10)
		}
		data := content(r, size)
		n := &tree.Inode{Type: tree.Regular, Perm: []uint16{0o644, 0o755, 0o600, 0o4755, 0o2755}[r.IntN(5)],
			Mtime: mtime(), Size: size, Content: tree.Bytes(data)}
		if r.IntN(10) == 0 {
			n.UID, n.GID = uint32(r.IntN(1000)), uint32(r.IntN(1000))
		}
		if o.HighIDs && r.IntN(10) == 0 {
			n.UID, n.GID = 100000+uint32(r.IntN(1<<20)), 70000+uint32(r.IntN(1000))
		}
		if o.Xattrs && r.IntN(8) == 0 {
			n.SetXattr("user.kiln.test", []byte(fmt.Sprintf("value-%d", i)))
			if r.IntN(3) == 0 {
				n.SetXattr("user.kiln.big", bytes.Repeat([]byte{'x'}, 200+r.IntN(1500)))
			}
		}
		if o.Xattrs && r.IntN(20) == 0 {
			n.SetXattr("security.capability", []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
		}
		must(t.Put(p, n))
		files = append(files, p)
	}
	for i := 0; i < o.Files/10+1; i++ {
		target := "../" + strings.Repeat("x", r.IntN(40))
		if r.IntN(3) == 0 {
			target = "/usr/lib/" + strings.Repeat("long-target/", 1+r.IntN(30)) // > 59 bytes sometimes
		}
		if r.IntN(4) == 0 && len(files) > 0 {
			target = "/" + files[r.IntN(len(files))]
		}
		must(t.Put(join(dirs[r.IntN(len(dirs))], fmt.Sprintf("l%03d", i)),
			&tree.Inode{Type: tree.Symlink, Perm: 0o777, Mtime: mtime(), Target: target}))
	}
	for i := 0; i < o.Files/20+1 && len(files) > 0; i++ {
		must(t.Link(join(dirs[r.IntN(len(dirs))], fmt.Sprintf("h%03d", i)), files[r.IntN(len(files))]))
	}
	if o.Devices {
		must(t.Put("dev/null", &tree.Inode{Type: tree.CharDevice, Perm: 0o666, Mtime: mtime(), Major: 1, Minor: 3}))
		must(t.Put("dev/sda", &tree.Inode{Type: tree.BlockDevice, Perm: 0o660, GID: 6, Mtime: mtime(), Major: 8, Minor: 0}))
		must(t.Put("dev/big", &tree.Inode{Type: tree.CharDevice, Perm: 0o600, Mtime: mtime(), Major: 300, Minor: 70000}))
		must(t.Put("dev/fifo", &tree.Inode{Type: tree.FIFO, Perm: 0o644, Mtime: mtime()}))
		must(t.Put("dev/sock", &tree.Inode{Type: tree.Socket, Perm: 0o755, Mtime: mtime()}))
	}
	if o.LongName {
		must(t.Put(strings.Repeat("n", 255), &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: mtime(), Size: 5, Content: tree.Bytes("hello")}))
		must(t.Put("d000/"+strings.Repeat("é", 127), &tree.Inode{Type: tree.Dir, Perm: 0o700, Mtime: mtime()}))
	}
	for i := 0; i < o.BigDir; i++ {
		must(t.Put(fmt.Sprintf("big/entry-with-a-longer-name-%06d", i),
			&tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: mtime(), Size: 3, Content: tree.Bytes("abc")}))
	}
	return t
}

// content makes size bytes mixing compressible text, random bytes and zero
// runs.
func content(r *rand.Rand, size int64) []byte {
	b := make([]byte, size)
	for off := int64(0); off < size; {
		run := min(size-off, 512+r.Int64N(8192))
		switch r.IntN(3) {
		case 0: // zeros: leave as is
		case 1:
			for i := int64(0); i < run; i++ {
				b[off+i] = byte(r.Uint32())
			}
		default:
			line := []byte(fmt.Sprintf("line %d of some compressible text\n", r.IntN(100)))
			for i := int64(0); i < run; i++ {
				b[off+i] = line[i%int64(len(line))]
			}
		}
		off += run
	}
	return b
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// CompareOptions relax Equal for formats that cannot store everything.
type CompareOptions struct {
	IgnoreOwner   bool // FAT has no owners
	IgnoreMode    bool // FAT has no modes
	IgnoreXattrs  bool
	IgnoreDirTime bool // directory mtimes change when a tool extracts into them
	// IgnoreHardLinks compares hard-linked names as separate files (debugfs
	// rdump and mtools write copies).
	IgnoreHardLinks bool
	// PermMask, when non-zero, limits the compared permission bits
	// (debugfs rdump drops the sticky bit: 0o6777).
	PermMask uint16
	// TimeGranularity truncates mtimes before comparing (squashfs: 1s,
	// FAT: 2s). Zero compares nanoseconds.
	TimeGranularity time.Duration
	IgnoreTimes     bool
	// Types limits the compared inode types; nil compares all.
	SkipTypes []tree.Type
}

// Equal compares two trees name by name: types, perms, owners, times,
// xattrs, symlink targets, device numbers, content and hard-link groups.
// It returns an error describing the first difference.
func Equal(want, got *tree.Tree, o CompareOptions) error {
	wantPaths := map[string]*tree.Inode{}
	var order []string
	_ = want.Walk(func(p string, n *tree.Inode) error {
		if skip(n.Type, o) {
			return nil
		}
		wantPaths[p] = n
		order = append(order, p)
		return nil
	})
	gotPaths := map[string]*tree.Inode{}
	_ = got.Walk(func(p string, n *tree.Inode) error {
		if skip(n.Type, o) {
			return nil
		}
		gotPaths[p] = n
		return nil
	})
	for p := range gotPaths {
		if _, ok := wantPaths[p]; !ok {
			return fmt.Errorf("%q: unexpected entry", p)
		}
	}
	// hard-link groups must map one to one
	wantToGot := map[*tree.Inode]*tree.Inode{}
	gotToWant := map[*tree.Inode]*tree.Inode{}
	for _, p := range order {
		w, g := wantPaths[p], gotPaths[p]
		if g == nil {
			return fmt.Errorf("%q: missing", p)
		}
		if w.Type != g.Type {
			return fmt.Errorf("%q: type %v, want %v", p, g.Type, w.Type)
		}
		if w.Type != tree.Dir && !o.IgnoreHardLinks {
			if prev, ok := wantToGot[w]; ok && prev != g {
				return fmt.Errorf("%q: hard link broken (not the same inode as its other names)", p)
			}
			if prev, ok := gotToWant[g]; ok && prev != w {
				return fmt.Errorf("%q: hard-linked to a file it should not be", p)
			}
			wantToGot[w], gotToWant[g] = g, w
		}
		if err := equalInode(w, g, o); err != nil {
			return fmt.Errorf("%q: %w", p, err)
		}
	}
	return nil
}

func skip(t tree.Type, o CompareOptions) bool {
	for _, s := range o.SkipTypes {
		if s == t {
			return true
		}
	}
	return false
}

func equalInode(w, g *tree.Inode, o CompareOptions) error {
	mask := o.PermMask
	if mask == 0 {
		mask = 0o7777
	}
	if !o.IgnoreMode && w.Perm&mask != g.Perm&mask && w.Type != tree.Symlink {
		return fmt.Errorf("perm %04o, want %04o", g.Perm, w.Perm)
	}
	if !o.IgnoreOwner && (w.UID != g.UID || w.GID != g.GID) {
		return fmt.Errorf("owner %d:%d, want %d:%d", g.UID, g.GID, w.UID, w.GID)
	}
	if !o.IgnoreTimes && !(o.IgnoreDirTime && w.Type == tree.Dir) && w.Type != tree.Symlink {
		wt, gt := w.Mtime, g.Mtime
		if o.TimeGranularity > 0 {
			wt, gt = wt.Truncate(o.TimeGranularity), gt.Truncate(o.TimeGranularity)
		}
		if !wt.Equal(gt) {
			return fmt.Errorf("mtime %v, want %v", gt, wt)
		}
	}
	if !o.IgnoreXattrs {
		if len(w.Xattrs) != len(g.Xattrs) {
			return fmt.Errorf("xattrs %v, want %v", names(g.Xattrs), names(w.Xattrs))
		}
		for i := range w.Xattrs {
			if w.Xattrs[i].Name != g.Xattrs[i].Name || !bytes.Equal(w.Xattrs[i].Value, g.Xattrs[i].Value) {
				return fmt.Errorf("xattr %s differs", w.Xattrs[i].Name)
			}
		}
	}
	switch w.Type {
	case tree.Symlink:
		if w.Target != g.Target {
			return fmt.Errorf("target %q, want %q", g.Target, w.Target)
		}
	case tree.CharDevice, tree.BlockDevice:
		if w.Major != g.Major || w.Minor != g.Minor {
			return fmt.Errorf("device %d:%d, want %d:%d", g.Major, g.Minor, w.Major, w.Minor)
		}
	case tree.Regular:
		if w.Size != g.Size {
			return fmt.Errorf("size %d, want %d", g.Size, w.Size)
		}
		if err := sameContent(w, g); err != nil {
			return err
		}
	}
	return nil
}

func names(x []tree.Xattr) []string {
	var s []string
	for _, a := range x {
		s = append(s, a.Name)
	}
	return s
}

func sameContent(w, g *tree.Inode) error {
	read := func(n *tree.Inode) ([]byte, error) {
		if n.Content == nil {
			return nil, nil
		}
		rc, err := n.Content.Open()
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}
	wb, err := read(w)
	if err != nil {
		return err
	}
	gb, err := read(g)
	if err != nil {
		return err
	}
	if !bytes.Equal(wb, gb) {
		for i := range min(len(wb), len(gb)) {
			if wb[i] != gb[i] {
				return fmt.Errorf("content differs at byte %d", i)
			}
		}
		return fmt.Errorf("content length %d, want %d", len(gb), len(wb))
	}
	return nil
}
