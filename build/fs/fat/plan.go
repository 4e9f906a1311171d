package fat

import (
	"fmt"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

const (
	dirEntrySize = 32
	// maxDirEntries is the most 32-byte entries a directory may have
	// (2 MiB), the limit of Linux and Windows.
	maxDirEntries = 65536
	maxFileSize   = 1<<32 - 1
)

// Directory entry attributes.
const (
	attrReadOnly = 0x01
	attrHidden   = 0x02
	attrSystem   = 0x04
	attrVolumeID = 0x08
	attrDir      = 0x10
	attrArchive  = 0x20
	attrLongName = attrReadOnly | attrHidden | attrSystem | attrVolumeID
)

// layout is what the volume will hold and where: every directory and
// file with its first cluster and length in clusters.
type layout struct {
	dirs  []*dirNode  // depth-first, the root first
	files []*fileNode // depth-first name order
	// dirClusters and used are clusters taken by directories and by
	// everything, counted from cluster 2.
	dirClusters, used uint32
}

type dirNode struct {
	path     string
	mtime    time.Time
	parent   *dirNode // nil for the root
	first    uint32
	clusters uint32
	children []child
}

type child struct {
	name  entryName
	mtime time.Time
	dir   *dirNode  // set for a directory
	file  *fileNode // set for a regular file
}

type fileNode struct {
	path     string
	inode    *tree.Inode
	first    uint32 // 0 for an empty file
	clusters uint32
}

// plan walks the tree, checks what FAT cannot store, names every entry
// and gives every directory and file its clusters.
func plan(t *tree.Tree, g geometry, opts Options) (*layout, error) {
	if t == nil || t.Root == nil || t.Root.Type != tree.Dir {
		return nil, fmt.Errorf("/: %w: the root is not a directory", ErrUnsupportedType)
	}
	l := &layout{}
	if _, err := l.addDir("", t.Root, nil, g, opts); err != nil {
		return nil, err
	}
	// Count first, so a full volume is reported before anything is written.
	var need uint64
	for _, d := range l.dirs {
		need += uint64(d.clusters)
	}
	for _, f := range l.files {
		need += uint64(f.clusters)
	}
	if need > uint64(g.clusters) {
		return nil, fmt.Errorf("%w: the tree needs %d clusters of %d bytes, the volume has %d",
			ErrFull, need, g.clusterSize(), g.clusters)
	}
	next := uint32(rootCluster)
	for _, d := range l.dirs {
		d.first = next
		next += d.clusters
	}
	l.dirClusters = next - rootCluster
	for _, f := range l.files {
		if f.clusters > 0 {
			f.first = next
			next += f.clusters
		}
	}
	l.used = next - rootCluster
	return l, nil
}

// addDir records directory n at path p and, depth first, everything below.
func (l *layout) addDir(p string, n *tree.Inode, parent *dirNode, g geometry, opts Options) (*dirNode, error) {
	d := &dirNode{path: p, mtime: mtimeOf(n, opts), parent: parent}
	l.dirs = append(l.dirs, d)
	names := make([]string, len(n.Entries))
	for i, e := range n.Entries {
		names[i] = e.Name
	}
	stored, err := dirNames(names)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", displayPath(p), err)
	}
	slots := 2 // "." and ".."
	if parent == nil {
		slots = 1 // the volume label
	}
	for _, s := range stored {
		slots += s.slots()
	}
	if slots > maxDirEntries {
		return nil, fmt.Errorf("%s: %w: %d entries, the most is %d", displayPath(p), ErrDirFull, slots, maxDirEntries)
	}
	d.clusters = uint32(max(1, (int64(slots)*dirEntrySize+g.clusterSize()-1)/g.clusterSize()))
	d.children = make([]child, len(n.Entries))
	for i, e := range n.Entries {
		cp := e.Name
		if p != "" {
			cp = p + "/" + e.Name
		}
		c := child{name: stored[i], mtime: mtimeOf(e.Inode, opts)}
		switch e.Inode.Type {
		case tree.Dir:
			c.dir, err = l.addDir(cp, e.Inode, d, g, opts)
			if err != nil {
				return nil, err
			}
		case tree.Regular:
			if e.Inode.Size < 0 || e.Inode.Size > maxFileSize {
				return nil, fmt.Errorf("%s: %w: %d bytes", cp, ErrFileTooLarge, e.Inode.Size)
			}
			cs := g.clusterSize()
			c.file = &fileNode{path: cp, inode: e.Inode, clusters: uint32((e.Inode.Size + cs - 1) / cs)}
			l.files = append(l.files, c.file)
		default:
			return nil, fmt.Errorf("%s: %w: %v", cp, ErrUnsupportedType, e.Inode.Type)
		}
		d.children[i] = c
	}
	return d, nil
}

func displayPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// fatEpoch is the earliest time FAT can store.
var fatEpoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

func mtimeOf(n *tree.Inode, opts Options) time.Time {
	switch {
	case !n.Mtime.IsZero():
		return n.Mtime
	case !opts.Mtime.IsZero():
		return opts.Mtime
	}
	return fatEpoch
}
