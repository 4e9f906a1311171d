package treetest

import (
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/tree"
)

// WriteHost materialises a tree under root on the host, so that standard
// tools (mkfs.ext4 -d, mksquashfs, tar) can take the same input as kiln.
// Owners, device nodes and security.* xattrs need root, which tests here
// have. Directory metadata is set last, after their children.
func WriteHost(root string, t *tree.Tree) error {
	seen := map[*tree.Inode]string{}
	type dir struct {
		p string
		n *tree.Inode
	}
	var dirs []dir
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
			dirs = append(dirs, dir{hp, n})
			return setXattrs(hp, n)
		case tree.Regular:
			if err := writeContent(hp, n); err != nil {
				return err
			}
		case tree.Symlink:
			if err := os.Symlink(n.Target, hp); err != nil {
				return err
			}
			if err := os.Lchown(hp, int(n.UID), int(n.GID)); err != nil {
				return err
			}
			ts := []unix.Timespec{unix.NsecToTimespec(n.Mtime.UnixNano()), unix.NsecToTimespec(n.Mtime.UnixNano())}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, hp, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
			return setXattrs(hp, n)
		case tree.CharDevice, tree.BlockDevice, tree.FIFO, tree.Socket:
			mode := map[tree.Type]uint32{tree.CharDevice: unix.S_IFCHR, tree.BlockDevice: unix.S_IFBLK, tree.FIFO: unix.S_IFIFO, tree.Socket: unix.S_IFSOCK}[n.Type]
			if err := unix.Mknod(hp, mode|0o600, int(unix.Mkdev(n.Major, n.Minor))); err != nil {
				return err
			}
		}
		return setMeta(hp, n)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := setMeta(dirs[i].p, dirs[i].n); err != nil {
			return err
		}
	}
	return nil
}

func writeContent(hp string, n *tree.Inode) error {
	f, err := os.OpenFile(hp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if n.Content != nil {
		rc, err := n.Content.Open()
		if err != nil {
			return err
		}
		defer rc.Close()
		if _, err := io.Copy(f, rc); err != nil {
			return err
		}
	}
	if err := setXattrs(hp, n); err != nil {
		return err
	}
	return f.Close()
}

func setXattrs(hp string, n *tree.Inode) error {
	for _, x := range n.Xattrs {
		if err := unix.Lsetxattr(hp, x.Name, x.Value, 0); err != nil {
			return err
		}
	}
	return nil
}

// setMeta sets owner, mode (chown first: it clears setuid bits) and mtime.
func setMeta(hp string, n *tree.Inode) error {
	if err := os.Lchown(hp, int(n.UID), int(n.GID)); err != nil {
		return err
	}
	if err := unix.Chmod(hp, uint32(n.Perm)); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.Mtime.UnixNano()), unix.NsecToTimespec(n.Mtime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, hp, ts, unix.AT_SYMLINK_NOFOLLOW)
}
