package source

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

var epoch = time.Unix(1700000000, 0)

func TestTarballAndDirAgree(t *testing.T) {
	// A random tree written to a host dir and to a tarball (by GNU tar)
	// reads back the same through both sources.
	want := treetest.Random(7, treetest.Options{Files: 60, MaxSize: 64 << 10, Xattrs: false, HighIDs: true})
	host := filepath.Join(t.TempDir(), "root")
	if err := writeHostTree(host, want); err != nil {
		t.Fatal(err)
	}
	fromDir, err := FromDir(host)
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(want, fromDir, treetest.CompareOptions{IgnoreDirTime: true}); err != nil {
		t.Fatalf("dir source: %v", err)
	}
	tarball := filepath.Join(t.TempDir(), "root.tar.gz")
	if out, err := exec.Command("tar", "--xattrs", "--numeric-owner", "-czf", tarball, "-C", host, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	sp, _ := NewSpool(t.TempDir())
	defer sp.Close()
	fromTar, err := sp.FromTar(tarball, epoch)
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(want, fromTar, treetest.CompareOptions{IgnoreDirTime: true}); err != nil {
		t.Fatalf("tar source: %v", err)
	}
}

// writeHostTree materialises a tree on the host (we run as root, so owners
// stick) to feed the tools.
func writeHostTree(root string, t *tree.Tree) error {
	type hl struct{ first string }
	seen := map[*tree.Inode]string{}
	var dirs []struct {
		p string
		n *tree.Inode
	}
	err := t.Walk(func(p string, n *tree.Inode) error {
		hp := filepath.Join(root, p)
		if first, ok := seen[n]; ok && n.Type != tree.Dir {
			return os.Link(first, hp)
		}
		seen[n] = hp
		switch n.Type {
		case tree.Dir:
			if err := os.MkdirAll(hp, 0o755); err != nil {
				return err
			}
			dirs = append(dirs, struct {
				p string
				n *tree.Inode
			}{hp, n})
			return nil
		case tree.Regular:
			rc, err := n.Content.Open()
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			if err := os.WriteFile(hp, b, 0o600); err != nil {
				return err
			}
		case tree.Symlink:
			if err := os.Symlink(n.Target, hp); err != nil {
				return err
			}
			return os.Lchown(hp, int(n.UID), int(n.GID))
		default:
			return nil
		}
		if err := os.Lchown(hp, int(n.UID), int(n.GID)); err != nil {
			return err
		}
		if err := os.Chmod(hp, os.FileMode(n.Perm&0o777)|modeBits(n.Perm)); err != nil {
			return err
		}
		return os.Chtimes(hp, n.Mtime, n.Mtime)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		os.Lchown(d.p, int(d.n.UID), int(d.n.GID))
		os.Chmod(d.p, os.FileMode(d.n.Perm&0o777)|modeBits(d.n.Perm))
		os.Chtimes(d.p, d.n.Mtime, d.n.Mtime)
	}
	return nil
}

func modeBits(perm uint16) os.FileMode {
	var m os.FileMode
	if perm&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if perm&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if perm&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}
