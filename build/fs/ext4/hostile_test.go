package ext4

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

// Hostile trees: every value at the edge of what ext4 and Linux hold is
// either stored so that the kernel (a loop mount) gives it back exactly,
// or refused with an error naming the file and the field.

// kernelTree writes tr, mounts the image and reads it back through the
// kernel (lost+found removed).
func kernelTree(t *testing.T, tr *tree.Tree) *tree.Tree {
	t.Helper()
	img, _ := build(t, tr, testOpts)
	fsck(t, img)
	got, err := source.FromDir(treetest.MountRO(t, img, "ext4"))
	if err != nil {
		t.Fatal(err)
	}
	got.Remove("lost+found")
	return got
}

// refused writes tr and wants an error wrapping want whose text holds
// every one of words (the path, the field).
func refused(t *testing.T, tr *tree.Tree, want error, words ...string) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Write(f, tr, testOpts)
	if !errors.Is(err, want) {
		t.Fatalf("Write: err = %v, want %v", err, want)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

func one(path string, n *tree.Inode) *tree.Tree {
	tr := tree.New(treetest.Epoch)
	if err := tr.Put(path, n); err != nil {
		panic(err)
	}
	return tr
}

func TestHostileDeviceNumbers(t *testing.T) {
	tr := tree.New(treetest.Epoch)
	for i, d := range [][2]uint32{{0, 0}, {1, 3}, {255, 255}, {256, 0}, {1, 256}, {8, 1 << 19}, {4095, 1<<20 - 1}} {
		if err := tr.Put("dev/d"+string(rune('a'+i)), &tree.Inode{Type: tree.BlockDevice, Perm: 0o600, Mtime: treetest.Epoch, Major: d[0], Minor: d[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := treetest.Equal(tr, kernelTree(t, tr), treetest.CompareOptions{}); err != nil {
		t.Fatalf("kernel view: %v", err)
	}
	// 5000:1 was written as 904:257, 1:1048576 as 1:0.
	for _, d := range [][2]uint32{{5000, 1}, {1, 1 << 20}, {4096, 0}} {
		refused(t, one("dev/x", &tree.Inode{Type: tree.CharDevice, Mtime: treetest.Epoch, Major: d[0], Minor: d[1]}),
			tree.ErrLinux, "dev/x", "device number")
	}
}

func TestHostileTimes(t *testing.T) {
	tr := tree.New(treetest.Epoch)
	for name, tm := range map[string]time.Time{
		"min":    time.Unix(minInodeTime, 0),
		"pre70":  time.Unix(-1, 999999999),
		"zero":   time.Unix(0, 0),
		"y2038":  time.Unix(1<<31, 1),
		"y2106":  time.Unix(1<<32, 5),
		"max":    time.Unix(3<<32+1<<31-1, 999999999), // 2446-05-10T22:38:55.999999999Z
		"sub/ns": time.Unix(1700000000, 123456789),
	} {
		if err := tr.Put(name, &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: tm}); err != nil {
			t.Fatal(err)
		}
	}
	if err := treetest.Equal(tr, kernelTree(t, tr), treetest.CompareOptions{IgnoreDirTime: true}); err != nil {
		t.Fatalf("kernel view: %v", err)
	}
	// One second past the end wrapped to 1901; one before the start was
	// stored as the start.
	for _, tm := range []time.Time{time.Unix(3<<32+1<<31, 0), time.Unix(1<<34+1<<31-1, 0), time.Unix(minInodeTime-1, 0)} {
		refused(t, one("late", &tree.Inode{Type: tree.Regular, Mtime: tm}), ErrTree, "late", "mtime", tm.UTC().Format(time.RFC3339))
	}
}

func TestHostileXattrs(t *testing.T) {
	acl := tree.EncodeACL([]tree.ACLEntry{{Tag: tree.ACLUserObj, Perm: 7, ID: tree.NoID}, {Tag: tree.ACLUser, Perm: 7, ID: 1234},
		{Tag: tree.ACLGroupObj, Perm: 5, ID: tree.NoID}, {Tag: tree.ACLGroup, Perm: 1, ID: 70000},
		{Tag: tree.ACLMask, Perm: 7, ID: tree.NoID}, {Tag: tree.ACLOther, Perm: 0, ID: tree.NoID}})
	tr := tree.New(treetest.Epoch)
	f := &tree.Inode{Type: tree.Regular, Perm: 0o770, Mtime: treetest.Epoch}
	f.SetXattr("user."+strings.Repeat("n", tree.MaxXattrNameLen-5), []byte("longest name"))
	f.SetXattr(tree.ACLAccess, acl)
	d := &tree.Inode{Type: tree.Dir, Perm: 0o770, Mtime: treetest.Epoch}
	d.SetXattr(tree.ACLAccess, acl)
	d.SetXattr(tree.ACLDefault, acl)
	l := &tree.Inode{Type: tree.Symlink, Perm: 0o777, Mtime: treetest.Epoch, Target: "f"}
	l.SetXattr("trusted.on-a-symlink", []byte("t"))
	l.SetXattr("security.selinux", []byte("system_u:object_r:bin_t:s0\x00"))
	for p, n := range map[string]*tree.Inode{"f": f, "d": d, "l": l} {
		if err := tr.Put(p, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := treetest.Equal(tr, kernelTree(t, tr), treetest.CompareOptions{}); err != nil {
		t.Fatalf("kernel view: %v", err)
	}

	for name, c := range map[string]struct {
		typ   tree.Type
		xname string
		value []byte
		words []string
	}{
		"system namespace": {tree.Regular, "system.foo", []byte("x"), []string{"system.foo", "namespace"}},
		"name of 256":      {tree.Regular, "user." + strings.Repeat("n", 251), []byte("x"), []string{"name of 256 bytes"}},
		"user on symlink":  {tree.Symlink, "user.x", []byte("x"), []string{"user.x", "symlink"}},
		"user on device":   {tree.CharDevice, "user.x", []byte("x"), []string{"user.x", "char-device"}},
		"default on file":  {tree.Regular, tree.ACLDefault, acl, []string{"default ACL"}},
		"broken ACL":       {tree.Regular, tree.ACLAccess, acl[:len(acl)-8], []string{"ACL incomplete"}},
		"NUL in name":      {tree.Regular, "user.a\x00b", []byte("x"), []string{"NUL"}},
	} {
		t.Run(name, func(t *testing.T) {
			n := &tree.Inode{Type: c.typ, Mtime: treetest.Epoch, Target: "t"}
			n.SetXattr(c.xname, c.value)
			refused(t, one("a/x", n), tree.ErrLinux, append([]string{"a/x", "xattr"}, c.words...)...)
		})
	}
}

func TestHostileSymlinksOwnersNames(t *testing.T) {
	tr := tree.New(treetest.Epoch)
	long := strings.Repeat("../x/", tree.MaxSymlinkLen/5) + "last"
	long = long[len(long)-tree.MaxSymlinkLen:]
	for p, n := range map[string]*tree.Inode{
		"long":  {Type: tree.Symlink, Perm: 0o777, Mtime: treetest.Epoch, Target: long},
		"owner": {Type: tree.Regular, Perm: 0o644, Mtime: treetest.Epoch, UID: tree.NoID - 1, GID: tree.NoID - 1},
	} {
		if err := tr.Put(p, n); err != nil {
			t.Fatal(err)
		}
	}
	mnt := treetest.MountRO(t, func() string { img, _ := build(t, tr, testOpts); return img }(), "ext4")
	if got, err := os.Readlink(filepath.Join(mnt, "long")); err != nil || got != long {
		t.Errorf("readlink of a %d-byte target: %d bytes, %v", len(long), len(got), err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "owner"), &st); err != nil || st.Uid != tree.NoID-1 || st.Gid != tree.NoID-1 {
		t.Errorf("owner: %d:%d %v", st.Uid, st.Gid, err)
	}

	refused(t, one("s/l", &tree.Inode{Type: tree.Symlink, Mtime: treetest.Epoch, Target: long + "x"}), tree.ErrLinux, "s/l", "symlink target of 4096 bytes")
	refused(t, one("s/l", &tree.Inode{Type: tree.Symlink, Mtime: treetest.Epoch}), tree.ErrLinux, "s/l", "symlink target is empty")
	refused(t, one("s/l", &tree.Inode{Type: tree.Symlink, Mtime: treetest.Epoch, Target: "a\x00b"}), tree.ErrLinux, "s/l", "NUL")
	refused(t, one("o/f", &tree.Inode{Type: tree.Regular, Mtime: treetest.Epoch, UID: tree.NoID}), tree.ErrLinux, "o/f", "owner")
	for _, name := range []string{"a/b", "a\x00b"} {
		bad := tree.New(treetest.Epoch)
		bad.Root.Entries = []tree.Entry{{Name: name, Inode: &tree.Inode{Type: tree.Regular, Mtime: treetest.Epoch}}}
		refused(t, bad, ErrTree, "bad name")
	}
}
