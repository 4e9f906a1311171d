package source

import (
	"path"
	"strings"

	"github.com/kiln-os/kiln/build/tree"
)

// gnuTar applies a plain tarball's members in order, as GNU tar 1.34
// extracts them as root with its default treatment of existing files
// (tar -xpf --xattrs --xattrs-include='*' --acls; without
// --xattrs-include GNU tar restores user.* xattrs only, kiln keeps them
// all). test/layers_test.go runs GNU tar beside kiln on every sequence of
// up to three member kinds at one name:
//
//   - a member over a non-directory replaces it (GNU tar unlinks it); a
//     name hard-linked to it elsewhere keeps the old inode;
//   - a non-directory over an empty directory replaces it (rmdir); over a
//     directory that holds anything, GNU tar refuses the member ("Cannot
//     open: File exists") and so does kiln;
//   - a directory over a directory keeps it and its children. GNU tar
//     applies a directory's metadata at the first member outside it, so
//     the earlier member's has been applied when the later one comes:
//     mode, owner, time and POSIX ACLs end as the later member's, other
//     xattrs as the union of both, the later value where both have one.
//     The root is the exception: every member lies inside it, so GNU tar
//     applies only its last member's metadata;
//   - a directory's time is its member's. (GNU tar's is the time of
//     extraction when a member lands in the directory after its metadata
//     was applied, or when no member names it; that time is not the
//     archive's, and kiln's implied directories take the time of the
//     member that implies them.)
//   - a hard link to itself changes nothing when its name exists;
//   - a symlink whose target is absolute or holds ".." is made last, in
//     place of an empty placeholder file, and only where its name (and
//     the name of every hard link to it) still has the placeholder's
//     device and inode number. Whether a later member at such a name
//     survives then depends on whether the filesystem gives it the
//     placeholder's freed inode number (ext4 does, and the symlink
//     overwrites the member; tmpfs does not), or GNU tar keeps the
//     earlier symlink over a later one: kiln refuses any later member at
//     such a name but a hard link to itself;
//   - a member below a non-directory is refused, as GNU tar refuses it
//     ("Not a directory"); below a symlink, GNU tar writes where the
//     symlink points, which kiln never does: refused too, and so is a
//     hard link to a path through a symlink.
type gnuTar struct {
	t *tree.Tree
	// placeholders are the symlinks GNU tar would make last, with the
	// member that made each; placeholderNames every name that has held
	// one (GNU tar makes its hard links last too).
	placeholders     map[*tree.Inode]*member
	placeholderNames map[string]*member
}

func newGNUTar(t *tree.Tree) *gnuTar {
	return &gnuTar{t: t, placeholders: map[*tree.Inode]*member{}, placeholderNames: map[string]*member{}}
}

// apply applies one member.
func (g *gnuTar) apply(m *member) error {
	isDir := m.isDir()
	if m.path == "" {
		if !isDir {
			return m.errorf("%w: %s in place of the root directory (GNU tar: \"Cannot open: File exists\")", ErrConflict, m.what())
		}
		setRoot(g.t, m.inode)
		return nil
	}
	if err := checkParents(g.t, m.path); err != nil {
		return m.errorf("%w", err)
	}
	old, _ := g.t.Lookup(m.path) // nil when missing: its parents are directories
	if m.kind == memberLink && m.link == m.path {
		if old == nil {
			return m.errorf("%w: hard link to itself, and %q does not exist", ErrConflict, m.path)
		}
		return nil
	}
	if first := g.placeholderNames[m.path]; first != nil {
		return m.errorf("%w: %s at the name of member %d's symlink (to %q), which GNU tar makes last, in place of a placeholder file, "+
			"if the name still has the placeholder's inode number: whether it has depends on the filesystem", ErrConflict, m.what(), first.index, first.inode.Target)
	}
	if old != nil {
		if old.Type == tree.Dir && !isDir && len(old.Entries) > 0 {
			return m.errorf("%w: %s over the directory %q, which holds %q: GNU tar refuses it (\"File exists\")",
				ErrConflict, m.what(), m.path, path.Join(m.path, old.Entries[0].Name))
		}
		if old.Type == tree.Dir && isDir {
			m.inode.Xattrs = unionXattrs(old.Xattrs, m.inode.Xattrs)
		}
	}
	if m.kind == memberLink {
		target, err := linkTarget(g.t, m.link)
		if err != nil {
			return m.errorf("%w", err)
		}
		if err := g.t.Link(m.path, m.link); err != nil {
			return m.errorf("%w", err)
		}
		if first := g.placeholders[target]; first != nil {
			g.placeholderNames[m.path] = first
		}
		return nil
	}
	if m.inode.Type == tree.Symlink && placeholder(m.inode.Target) {
		g.placeholders[m.inode] = m
		g.placeholderNames[m.path] = m
	}
	// Put replaces a non-directory and keeps a directory's children under
	// a directory.
	if err := g.t.Put(m.path, m.inode); err != nil {
		return m.errorf("%w", err)
	}
	return nil
}

// placeholder reports whether GNU tar makes a symlink to target last, in
// place of a placeholder file (unless --absolute-names): an absolute
// target, or one with a ".." name.
func placeholder(target string) bool {
	if strings.HasPrefix(target, "/") {
		return true
	}
	for _, name := range strings.Split(target, "/") {
		if name == ".." {
			return true
		}
	}
	return false
}

// unionXattrs returns the xattrs a directory has after GNU tar applied an
// earlier member's (old) and then a later member's (add): setxattr adds
// every name of add, and --acls sets both ACLs from add alone (an access
// ACL from its mode when it has none, which the kernel stores as no
// xattr; a default ACL removed when it has none).
func unionXattrs(old, add []tree.Xattr) []tree.Xattr {
	n := &tree.Inode{}
	for _, x := range old {
		if x.Name != tree.ACLAccess && x.Name != tree.ACLDefault {
			n.SetXattr(x.Name, x.Value)
		}
	}
	for _, x := range add {
		n.SetXattr(x.Name, x.Value)
	}
	return n.Xattrs
}
