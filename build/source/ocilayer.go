package source

import (
	"sort"
	"strings"

	"github.com/kiln-os/kiln/build/tree"
)

// ociLayer applies an OCI image layer (image-spec layer.md) over the tree
// its lower layers made, whatever the order of its members:
//
//  1. The layer alone: no two members for one path (the spec's "MUST NOT
//     include duplicate entries"; dockerd refuses such a layer too), and
//     no member below one the layer makes a non-directory.
//  2. Whiteouts and opaque markers, first ("applied first, before
//     creating the new version ..., regardless of the ordering"), over
//     what lower layers hold: they never hide the layer's own members. A
//     whiteout whose directory lower layers do not have changes nothing;
//     one whose directory is a lower non-directory changes nothing when
//     the layer makes that a directory (nothing of the lower one lies
//     below it), and is refused otherwise.
//  3. The other members, parents before children: a directory over a
//     directory takes the member's attributes, xattrs included, and keeps
//     the children lower layers left; over anything else, and anything
//     over a lower non-directory or directory, replaces it. A directory
//     the layer has no member for is made (mode 0755, owner 0:0) where
//     lower layers left none. A member below a lower non-directory the
//     layer does not replace is refused, below a symlink too.
//  4. Hard links last, to what the layer holds once its other members are
//     in, through the layer's own hard links: the same file whether the
//     link comes before or after its target's member.
type ociLayer struct {
	t       *tree.Tree
	members []*member
	paths   map[string]*member // every member's own path, whiteouts' too
}

func newOCILayer(t *tree.Tree) *ociLayer {
	return &ociLayer{t: t, paths: map[string]*member{}}
}

// add takes one member of the layer; nothing is applied before the layer
// has been read.
func (o *ociLayer) add(m *member) error {
	if first := o.paths[m.path]; first != nil {
		return m.errorf("%w: member %d has the same path (%q): the OCI image-spec forbids a layer two members for one path", ErrConflict, first.index, first.name)
	}
	o.paths[m.path] = m
	o.members = append(o.members, m)
	return nil
}

// apply applies the layer read (see ociLayer).
func (o *ociLayer) apply() error {
	var whiteouts, inodes, links []*member
	// dirs are the paths the layer makes directories: its directory
	// members and every parent of its other members (whiteouts aside: a
	// whiteout makes nothing).
	dirs := map[string]bool{}
	for _, m := range o.members {
		switch m.kind {
		case memberWhiteout, memberOpaque:
			whiteouts = append(whiteouts, m)
			continue
		case memberLink:
			links = append(links, m)
		default:
			inodes = append(inodes, m)
			if m.isDir() {
				dirs[m.path] = true
			}
		}
		for p := parentOf(m.path); p != ""; p = parentOf(p) {
			dirs[p] = true
		}
	}
	// (1) The layer alone.
	for _, m := range o.members {
		for p := parentOf(m.path); p != ""; p = parentOf(p) {
			if n := o.paths[p]; n != nil && !n.isDir() {
				return m.errorf("%w: below %q, which member %d of the same layer makes %s", ErrConflict, p, n.index, n.what())
			}
		}
		if m.path == "" && !m.isDir() {
			return m.errorf("%w: %s in place of the root directory", ErrConflict, m.what())
		}
	}
	// (2) Whiteouts and opaque markers, checked against the lower layers
	// before any applies (so their order does not matter), then applied.
	var apply []*member
	for _, m := range whiteouts {
		live, err := o.lowerParents(m, dirs)
		if err != nil {
			return err
		}
		if live {
			apply = append(apply, m)
		}
	}
	for _, m := range apply {
		if m.kind == memberWhiteout {
			if err := o.t.Remove(m.target); err != nil {
				return m.errorf("%w", err)
			}
			continue
		}
		if d, err := o.t.Lookup(m.target); err == nil && d.Type == tree.Dir {
			d.Entries = nil
		}
	}
	// (3) The other members, parents first (a path sorts after its
	// parent's).
	sort.SliceStable(inodes, func(i, j int) bool { return inodes[i].path < inodes[j].path })
	for _, m := range inodes {
		if m.path == "" {
			setRoot(o.t, m.inode)
			continue
		}
		if err := checkParents(o.t, m.path); err != nil {
			return m.errorf("%w", err)
		}
		if err := o.t.Put(m.path, m.inode); err != nil {
			return m.errorf("%w", err)
		}
	}
	// (4) Hard links.
	byPath := map[string]*member{}
	for _, m := range links {
		byPath[m.path] = m
	}
	for _, m := range links {
		target, err := o.linkTarget(m, byPath)
		if err != nil {
			return err
		}
		if err := checkParents(o.t, m.path); err != nil {
			return m.errorf("%w", err)
		}
		if _, err := linkTarget(o.t, target); err != nil {
			return m.errorf("%w", err)
		}
		if err := o.t.Link(m.path, target); err != nil {
			return m.errorf("%w", err)
		}
	}
	return nil
}

// lowerParents walks the directories that hold whiteout m in the tree
// lower layers made and reports whether m has anything to hide there.
func (o *ociLayer) lowerParents(m *member, dirs map[string]bool) (bool, error) {
	names := strings.Split(m.path, "/")
	n := o.t.Root
	for i, name := range names[:len(names)-1] {
		n = n.Child(name)
		p := strings.Join(names[:i+1], "/")
		switch {
		case n == nil, n.Type != tree.Dir && dirs[p]:
			return false, nil
		case n.Type == tree.Symlink:
			return false, m.errorf("%w: parent %q is a symlink (to %q) of a lower layer, which this layer does not make a directory", tree.ErrBadPath, p, n.Target)
		case n.Type != tree.Dir:
			return false, m.errorf("%w: parent %q is %s of a lower layer, which this layer does not make a directory: %w", ErrConflict, p, typeName(n.Type), tree.ErrNotDir)
		}
	}
	return true, nil
}

// linkTarget follows hard link m through the layer's other hard links
// (byPath) to the path of the file it names.
func (o *ociLayer) linkTarget(m *member, byPath map[string]*member) (string, error) {
	seen := map[string]bool{m.path: true}
	target := m.link
	for {
		for p := parentOf(target); p != ""; p = parentOf(p) {
			if l := byPath[p]; l != nil {
				return "", m.errorf("%w: hard link to %q, below the hard link of member %d", ErrConflict, m.link, l.index)
			}
		}
		next := byPath[target]
		if next == nil {
			return target, nil
		}
		if seen[target] {
			return "", m.errorf("%w: hard link to %q, a loop of hard links", ErrConflict, m.link)
		}
		seen[target] = true
		target = next.link
	}
}

// parentOf returns the path of p's directory ("" for the root's children).
func parentOf(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}
