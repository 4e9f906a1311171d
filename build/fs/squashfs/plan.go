package squashfs

import (
	"fmt"
	"strings"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/tree"
)

// noFragment marks a file without a fragment (squashfs SQUASHFS_INVALID_FRAG).
const noFragment = 0xffffffff

// fileRec is one distinct regular inode: where its names are and, once the
// data is written, where its blocks went.
type fileRec struct {
	inode *tree.Inode
	paths []string // every name of the inode, in walk order

	// Set by the reader.
	frag    uint32 // fragment block index, or noFragment
	fragOff uint32 // offset of the tail inside the fragment block
	// blocksOf is an earlier file whose full blocks equal this file's;
	// this file's inode points at them. Nil when it has its own.
	blocksOf *fileRec

	// Set by the writer.
	start  int64             // image offset of the first data block
	sizes  []uint32          // on-disk size word of each full block
	sparse int64             // bytes held by sparse (all-zero) blocks
	ext    []blockmap.Extent // image ranges of the data blocks, merged
}

// data returns the record that holds the file's full blocks: its own or
// an earlier file's.
func (f *fileRec) data() *fileRec {
	if f.blocksOf != nil {
		return f.blocksOf
	}
	return f
}

// extents returns the file's data extents followed by its fragment block.
func (f *fileRec) extents(frags []fragment) []blockmap.Extent {
	ext := append([]blockmap.Extent(nil), f.data().ext...)
	if f.frag != noFragment {
		fr := frags[f.frag]
		ext = append(ext, blockmap.Extent{Offset: fr.start, Length: int64(fr.word &^ uncompressedBlock)})
	}
	return ext
}

// planned is the tree seen the way the writer needs it.
type planned struct {
	root  *tree.Inode
	files []*fileRec // distinct regular inodes, in walk (data) order
	recs  map[*tree.Inode]*fileRec
	links map[*tree.Inode]uint32 // names of each non-directory inode
	num   map[*tree.Inode]uint32 // inode numbers 1..count, in write order
	count uint32
	dirs  map[*tree.Inode]bool
}

// plan walks the tree once to collect files, link counts and check names,
// then numbers the inodes in the order the inode table will hold them.
func plan(t *tree.Tree) (*planned, error) {
	p := &planned{
		root:  t.Root,
		recs:  map[*tree.Inode]*fileRec{},
		links: map[*tree.Inode]uint32{},
		num:   map[*tree.Inode]uint32{},
		dirs:  map[*tree.Inode]bool{t.Root: true},
	}
	if err := tree.CheckLinux(t.Root); err != nil {
		return nil, fmt.Errorf("%w: /: %w", ErrInode, err)
	}
	if err := p.walk(t.Root, ""); err != nil {
		return nil, err
	}
	p.number(t.Root)
	return p, nil
}

func (p *planned) walk(dir *tree.Inode, path string) error {
	for i, e := range dir.Entries {
		cp := e.Name
		if path != "" {
			cp = path + "/" + e.Name
		}
		if err := checkName(e.Name); err != nil {
			return fmt.Errorf("%w: %q", err, cp)
		}
		if i > 0 && dir.Entries[i-1].Name >= e.Name {
			return fmt.Errorf("%w: %q: entries not sorted or duplicate", ErrName, cp)
		}
		n := e.Inode
		if n == nil {
			return fmt.Errorf("%w: %q: nil inode", ErrInodeType, cp)
		}
		if !p.dirs[n] && p.recs[n] == nil && p.links[n] == 0 { // first name
			if err := tree.CheckLinux(n); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrInode, cp, err)
			}
		}
		switch n.Type {
		case tree.Dir:
			if p.dirs[n] {
				return fmt.Errorf("%w: %q", ErrDirLink, cp)
			}
			p.dirs[n] = true
			if err := p.walk(n, cp); err != nil {
				return err
			}
		case tree.Regular:
			rec := p.recs[n]
			if rec == nil {
				rec = &fileRec{inode: n, frag: noFragment}
				p.recs[n] = rec
				p.files = append(p.files, rec)
			}
			rec.paths = append(rec.paths, cp)
			p.links[n]++
		case tree.Symlink, tree.CharDevice, tree.BlockDevice, tree.FIFO, tree.Socket:
			p.links[n]++
		default:
			return fmt.Errorf("%w: %q: %v", ErrInodeType, cp, n.Type)
		}
	}
	return nil
}

// checkName rejects names a squashfs directory entry cannot hold.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > tree.MaxNameLen ||
		strings.ContainsAny(name, "/\x00") {
		return ErrName
	}
	return nil
}

// number assigns inode numbers in the order writeDir emits the inodes: the
// entries of a directory in name order, a subdirectory after everything
// below it, so the root gets the last number.
func (p *planned) number(dir *tree.Inode) {
	for _, e := range dir.Entries {
		n := e.Inode
		if n.Type == tree.Dir {
			p.number(n)
		} else if p.num[n] == 0 {
			p.count++
			p.num[n] = p.count
		}
	}
	p.count++
	p.num[dir] = p.count
}
