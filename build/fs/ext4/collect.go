package ext4

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// Reserved inode numbers.
const (
	rootIno    = 2
	journalIno = 8
	firstIno   = 11 // first non-reserved inode; lost+found takes it
	maxLinks   = 65000
)

// node is one inode of the image: where it comes from and, after the
// layout, where its blocks are.
type node struct {
	in      *tree.Inode
	ino     uint32
	links   uint32    // names; for directories 2 + subdirectories
	parent  uint32    // directories: the inode ".." names
	path    string    // first name, for errors
	mtime   time.Time // the time stored: the inode's, or Options.Mtime when it has none
	paths   []string
	visited bool
	entries []tree.Entry // directories: entries as written (root may gain lost+found)

	dir   []byte // directory blocks, built once inode numbers are known
	htree bool

	xin    []xattr // attributes stored in the inode
	xblock *xattrBlock

	// placement
	ext        []extent // logical → physical mapping (dirs, slow symlinks, files)
	treeBlocks []uint64 // extent tree blocks, leaves first
	dataBlocks uint64   // blocks mapped by ext
	root       [60]byte // i_block of extent-mapped inodes, once written
}

// builder carries one Write call.
type builder struct {
	w    io.WriterAt
	t    *tree.Tree
	opts Options

	nodes   []*node // by inode number; reserved numbers are nil
	byInode map[*tree.Inode]*node
	xblocks []*xattrBlock
	xindex  map[string][]*xattrBlock
}

// collect numbers the inodes (root 2, lost+found 11, then the tree
// directory by directory, a directory's entries before its subdirectories)
// and prepares directory contents and extended attributes.
func (b *builder) collect() error {
	b.byInode = map[*tree.Inode]*node{}
	b.xindex = map[string][]*xattrBlock{}
	b.nodes = make([]*node, firstIno, firstIno+64)

	root := &node{in: b.t.Root, ino: rootIno, parent: rootIno, links: 2, visited: true}
	b.nodes[rootIno] = root
	b.byInode[b.t.Root] = root
	root.entries = b.t.Root.Entries

	lfMtime := b.opts.Mtime
	if lfMtime.IsZero() {
		lfMtime = b.t.Root.Mtime
	}
	lfInode := b.t.Root.Child("lost+found")
	if lfInode == nil {
		lfInode = &tree.Inode{Type: tree.Dir, Perm: 0o700, Mtime: lfMtime}
		e := append([]tree.Entry(nil), root.entries...)
		i := sort.Search(len(e), func(i int) bool { return e[i].Name >= "lost+found" })
		e = append(e, tree.Entry{})
		copy(e[i+1:], e[i:])
		e[i] = tree.Entry{Name: "lost+found", Inode: lfInode}
		root.entries = e
	} else if lfInode.Type != tree.Dir {
		return fmt.Errorf("%w: lost+found is a %v, not a directory", ErrTree, lfInode.Type)
	}
	lf := &node{in: lfInode, ino: firstIno, links: 0}
	b.nodes = append(b.nodes, lf)
	b.byInode[lfInode] = lf

	if err := b.visit(root, ""); err != nil {
		return err
	}
	for _, n := range b.nodes {
		if n == nil {
			continue
		}
		p := displayPath(n.path)
		if n.in.Type != tree.Dir && n.links > maxLinks {
			return fmt.Errorf("%s: %w: %d names", p, ErrTooManyLinks, n.links)
		}
		if n.in.Type == tree.Dir && n.links > maxLinks {
			n.links = 1 // dir_nlink: the count no longer fits
		}
		if err := tree.CheckLinux(n.in); err != nil {
			return fmt.Errorf("%s: %w: %w", p, ErrTree, err)
		}
		n.mtime = n.in.Mtime
		if n.mtime.IsZero() {
			n.mtime = b.defaultMtime()
		}
		if err := checkTime(n.mtime); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if err := b.prepareXattrs(n); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if n.in.Type == tree.Dir {
			if err := b.buildDir(n); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	return nil
}

// visit numbers the entries of directory d, then descends.
func (b *builder) visit(d *node, dpath string) error {
	for _, e := range d.entries {
		if e.Inode == nil {
			return fmt.Errorf("%w: %s: nil inode", ErrTree, path.Join(dpath, e.Name))
		}
		if len(e.Name) == 0 || len(e.Name) > tree.MaxNameLen || e.Name == "." || e.Name == ".." ||
			strings.ContainsAny(e.Name, "/\x00") {
			return fmt.Errorf("%w: bad name %q in %q", ErrTree, e.Name, "/"+dpath)
		}
		p := e.Name
		if dpath != "" {
			p = dpath + "/" + e.Name
		}
		n := b.byInode[e.Inode]
		if n == nil {
			if _, ok := fileType[e.Inode.Type]; !ok {
				return fmt.Errorf("%w: %s: unknown type %v", ErrTree, p, e.Inode.Type)
			}
			n = &node{in: e.Inode, ino: uint32(len(b.nodes))}
			if len(b.nodes) >= 1<<32-1 {
				return fmt.Errorf("%w: too many inodes", ErrTree)
			}
			b.nodes = append(b.nodes, n)
			b.byInode[e.Inode] = n
		}
		if n.path == "" {
			n.path = p
		}
		if e.Inode.Type == tree.Dir {
			if n.visited || n.parent != 0 {
				return fmt.Errorf("%w: directory %s reachable twice", ErrTree, p)
			}
			n.parent = d.ino
			n.links = 2
			d.links++
		} else {
			n.links++
			if e.Inode.Type == tree.Regular {
				n.paths = append(n.paths, p)
			}
		}
	}
	for _, e := range d.entries {
		n := b.byInode[e.Inode]
		if e.Inode.Type != tree.Dir {
			continue
		}
		n.visited = true
		n.entries = e.Inode.Entries
		if err := b.visit(n, n.path); err != nil {
			return err
		}
	}
	return nil
}

// fileType maps inode types to directory entry file types.
var fileType = map[tree.Type]uint8{
	tree.Regular:     1,
	tree.Dir:         2,
	tree.CharDevice:  3,
	tree.BlockDevice: 4,
	tree.FIFO:        5,
	tree.Socket:      6,
	tree.Symlink:     7,
}

// modeType maps inode types to the type bits of i_mode.
var modeType = map[tree.Type]uint16{
	tree.Regular:     0x8000,
	tree.Dir:         0x4000,
	tree.CharDevice:  0x2000,
	tree.BlockDevice: 0x6000,
	tree.FIFO:        0x1000,
	tree.Socket:      0xC000,
	tree.Symlink:     0xA000,
}

// defaultMtime is the time of inodes whose tree time is zero (unset):
// Options.Mtime, or 1970 when that is unset too.
func (b *builder) defaultMtime() time.Time {
	if b.opts.Mtime.IsZero() {
		return time.Unix(0, 0)
	}
	return b.opts.Mtime
}

// displayPath names the root "/" in errors.
func displayPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// fastSymlink reports whether a symlink's target fits in i_block.
func fastSymlink(in *tree.Inode) bool { return len(in.Target) < 60 }

// blocksFor is the number of blocks that hold size bytes.
func blocksFor(size int64) uint64 { return uint64((size + BlockSize - 1) / BlockSize) }
