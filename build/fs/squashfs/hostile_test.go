package squashfs

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

// Hostile trees: every value at the edge of what squashfs and Linux hold
// is either stored so that the kernel (a loop mount) gives it back
// exactly, or refused with an error naming the file and the field.

// mounted writes tr and mounts the image.
func mounted(t *testing.T, tr *tree.Tree) string {
	t.Helper()
	img, _ := build(t, tr, Options{Mtime: testMtime, Workers: 2})
	return treetest.MountRO(t, img, "squashfs")
}

// refused writes tr and wants an error wrapping want whose text holds
// every one of words (the path, the field).
func refused(t *testing.T, tr *tree.Tree, want error, words ...string) {
	t.Helper()
	_, err := Write(discard{}, tr, Options{Workers: 2})
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
	tr := tree.New(testMtime)
	if err := tr.Put(path, n); err != nil {
		panic(err)
	}
	return tr
}

// TestHostileIDs: 65535 distinct ids is the most the superblock's 16-bit
// count holds; one more was written as a count of 0, which the kernel
// cannot mount.
func TestHostileIDs(t *testing.T) {
	ids := func(n int) *tree.Tree {
		tr := tree.New(testMtime) // root owned by 0
		for i := 1; i < n; i += 2 {
			f := &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: testMtime, UID: uint32(i), GID: uint32(i + 1)}
			if i+1 >= n {
				f.GID = 0
			}
			if err := tr.Put(fmt.Sprintf("d%02d/f%05d", i/4096, i), f); err != nil {
				t.Fatal(err)
			}
		}
		return tr
	}
	mnt := mounted(t, ids(maxIDs))
	var st unix.Stat_t
	last := fmt.Sprintf("d%02d/f%05d", (maxIDs-2)/4096, maxIDs-2)
	if err := unix.Lstat(filepath.Join(mnt, last), &st); err != nil || st.Uid != maxIDs-2 || st.Gid != maxIDs-1 {
		t.Errorf("%s: owner %d:%d, %v; want %d:%d", last, st.Uid, st.Gid, err, maxIDs-2, maxIDs-1)
	}
	refused(t, ids(maxIDs+1), ErrTooManyIDs, "65535")
}

func TestHostileSymlinksAndXattrs(t *testing.T) {
	long := strings.Repeat("x/", tree.MaxSymlinkLen/2) + "y"
	tr := tree.New(testMtime)
	f := &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: testMtime}
	f.SetXattr("user."+strings.Repeat("n", tree.MaxXattrNameLen-5), []byte("longest name"))
	big := make([]byte, tree.MaxXattrValueLen)
	for i := range big {
		big[i] = byte(i * 7)
	}
	f.SetXattr("user.big", big)
	l := &tree.Inode{Type: tree.Symlink, Perm: 0o777, Mtime: testMtime, Target: long}
	l.SetXattr("trusted.t", []byte("on a symlink"))
	for p, n := range map[string]*tree.Inode{"f": f, "l": l} {
		if err := tr.Put(p, n); err != nil {
			t.Fatal(err)
		}
	}
	got, err := source.FromDir(mounted(t, tr))
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(tr, got, treetest.CompareOptions{IgnoreDirTime: true}); err != nil {
		t.Fatalf("kernel view: %v", err)
	}

	acl := tree.EncodeACL([]tree.ACLEntry{{Tag: tree.ACLUserObj, Perm: 7, ID: tree.NoID}, {Tag: tree.ACLUser, Perm: 7, ID: 1234},
		{Tag: tree.ACLGroupObj, Perm: 5, ID: tree.NoID}, {Tag: tree.ACLMask, Perm: 7, ID: tree.NoID}, {Tag: tree.ACLOther, Perm: 0, ID: tree.NoID}})
	for name, c := range map[string]struct {
		n     *tree.Inode
		want  error
		words []string
	}{
		// readlink gave 4095 of 4096 bytes; an empty target was written.
		"target of 4096": {&tree.Inode{Type: tree.Symlink, Target: long + "z"}, tree.ErrLinux, []string{"symlink target of 4096 bytes"}},
		"empty target":   {&tree.Inode{Type: tree.Symlink}, tree.ErrLinux, []string{"symlink target is empty"}},
		"NUL in target":  {&tree.Inode{Type: tree.Symlink, Target: "a\x00b"}, tree.ErrLinux, []string{"NUL"}},
		"value over 64K": {xattr(tree.Regular, "user.v", make([]byte, tree.MaxXattrValueLen+1)), tree.ErrLinux, []string{"user.v", "value of 65537 bytes"}},
		"name of 256":    {xattr(tree.Regular, "user."+strings.Repeat("n", 251), []byte("x")), tree.ErrLinux, []string{"name of 256 bytes"}},
		"user on a link": {xattr(tree.Symlink, "user.x", []byte("x")), tree.ErrLinux, []string{"user.x", "symlink"}},
		"POSIX ACL":      {xattr(tree.Regular, tree.ACLAccess, acl), ErrXattrName, []string{tree.ACLAccess, "no POSIX ACLs"}},
		"owner -1":       {&tree.Inode{Type: tree.Regular, UID: tree.NoID}, tree.ErrLinux, []string{"owner"}},
	} {
		t.Run(name, func(t *testing.T) {
			c.n.Mtime = testMtime
			refused(t, one("a/x", c.n), c.want, append([]string{"a/x"}, c.words...)...)
		})
	}
}

func xattr(typ tree.Type, name string, value []byte) *tree.Inode {
	n := &tree.Inode{Type: typ, Target: "t"}
	n.SetXattr(name, value)
	return n
}

// TestHostileTimes: squashfs stores unsigned 32-bit seconds: the kernel
// shows exactly those (fractions are not in the format); times outside
// were clamped and are now refused.
func TestHostileTimes(t *testing.T) {
	tr := tree.New(testMtime)
	for p, tm := range map[string]time.Time{"zero": time.Unix(0, 0), "max": time.Unix(1<<32-1, 0), "y2038": time.Unix(1<<31, 0)} {
		if err := tr.Put(p, &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: tm}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := source.FromDir(mounted(t, tr))
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(tr, got, treetest.CompareOptions{IgnoreDirTime: true}); err != nil {
		t.Fatalf("kernel view: %v", err)
	}
	for _, tm := range []time.Time{time.Unix(-1, 0), time.Unix(1<<32, 0)} {
		refused(t, one("late", &tree.Inode{Type: tree.Regular, Mtime: tm}), ErrTime, "late", tm.UTC().Format(time.RFC3339))
	}
}

// growing is content longer than the inode's Size says: a file that grew
// while it was read.
type growing struct{ size, extra int }

func (g growing) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.LimitReader(zeroOr{}, int64(g.size+g.extra))), nil
}

type zeroOr struct{}

func (zeroOr) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'g'
	}
	return len(p), nil
}

// TestHostileLongContent: content past the recorded size was cut without
// an error; now it is refused, whatever path the reader takes (whole
// blocks, tail end, duplicate candidates, empty files).
func TestHostileLongContent(t *testing.T) {
	for _, size := range []int{0, 100, DefaultBlockSize, 3*DefaultBlockSize + 7} {
		for _, dup := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/dup=%v", size, dup), func(t *testing.T) {
				tr := tree.New(testMtime)
				if dup { // an equal file of the same size: hashed first
					must(t, tr.Put("a", &tree.Inode{Type: tree.Regular, Mtime: testMtime, Size: int64(size), Content: growing{size, 0}}))
				}
				must(t, tr.Put("b", &tree.Inode{Type: tree.Regular, Mtime: testMtime, Size: int64(size), Content: growing{size, 1}}))
				refused(t, tr, ErrLongContent, "b", fmt.Sprintf("%d bytes", size))
			})
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
