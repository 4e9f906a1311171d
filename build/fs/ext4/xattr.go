package ext4

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// Extended attribute layout.
const (
	xattrMagic       = 0xEA020000
	xattrInodeStart  = 128 + extraIsize // in-inode area: magic, entries, values
	xattrInodeSpace  = inodeSize - xattrInodeStart
	xattrBlockHeader = 32
	xattrEntryHeader = 16
	xattrMaxRefs     = 1024 // the kernel stops sharing a block beyond this
)

// xattr is one attribute in on-disk form.
type xattr struct {
	index uint8  // name prefix index
	name  string // name without the prefix
	value []byte // on-disk value (POSIX ACLs converted)
	hash  uint32
}

// xattrBlock is an attribute block, shared by the inodes whose block
// attributes are identical.
type xattrBlock struct {
	data []byte // BlockSize bytes, h_refcount still zero
	refs uint32
	blk  uint64
}

// prefixes maps name prefixes to on-disk name indexes: the namespaces
// the kernel's ext4 shows. The POSIX ACLs are whole names. Other system.
// names (index 7 holds system.data, inline data the kernel never lists)
// and richacl (8, never in mainline Linux) are refused.
var prefixes = []struct {
	prefix string
	index  uint8
}{
	{"system.posix_acl_access", 2},
	{"system.posix_acl_default", 3},
	{"user.", 1},
	{"trusted.", 4},
	{"security.", 6},
}

func pad4(n int) int { return (n + 3) &^ 3 }

// prepareXattrs converts an inode's attributes, keeps in the inode as many
// as fit (in on-disk order) and puts the rest in an attribute block,
// sharing an identical block with earlier inodes.
func (b *builder) prepareXattrs(n *node) error {
	if len(n.in.Xattrs) == 0 {
		return nil
	}
	xs := make([]xattr, 0, len(n.in.Xattrs))
	for _, a := range n.in.Xattrs {
		x, err := toDisk(a.Name, a.Value)
		if err != nil {
			return err
		}
		xs = append(xs, x)
	}
	// The kernel searches block entries in this order.
	sort.Slice(xs, func(i, j int) bool {
		a, c := xs[i], xs[j]
		if a.index != c.index {
			return a.index < c.index
		}
		if len(a.name) != len(c.name) {
			return len(a.name) < len(c.name)
		}
		return a.name < c.name
	})
	used := 4 + 4 // magic, end marker
	var inBlock []xattr
	for _, x := range xs {
		need := xattrEntryHeader + pad4(len(x.name)) + pad4(len(x.value))
		if used+need <= xattrInodeSpace {
			n.xin = append(n.xin, x)
			used += need
		} else {
			inBlock = append(inBlock, x)
		}
	}
	if len(inBlock) == 0 {
		return nil
	}
	data, err := encodeXattrBlock(inBlock)
	if err != nil {
		return err
	}
	key := string(data)
	for _, xb := range b.xindex[key] {
		if xb.refs < xattrMaxRefs {
			xb.refs++
			n.xblock = xb
			return nil
		}
	}
	xb := &xattrBlock{data: data, refs: 1}
	b.xindex[key] = append(b.xindex[key], xb)
	b.xblocks = append(b.xblocks, xb)
	n.xblock = xb
	return nil
}

// toDisk splits a full attribute name into index and suffix and converts
// POSIX ACL values to ext4's compact form.
func toDisk(full string, value []byte) (xattr, error) {
	for _, p := range prefixes {
		if !strings.HasPrefix(full, p.prefix) {
			continue
		}
		x := xattr{index: p.index, name: full[len(p.prefix):], value: value}
		if p.index == 2 || p.index == 3 {
			if x.name != "" {
				break // e.g. system.posix_acl_accessX
			}
			v, err := aclToDisk(value)
			if err != nil {
				return xattr{}, fmt.Errorf("%w: %s: %v", ErrXattr, full, err)
			}
			x.value = v
		} else if x.name == "" {
			return xattr{}, fmt.Errorf("%w: empty name after prefix in %q", ErrXattr, full)
		}
		if len(x.name) > 255 {
			return xattr{}, fmt.Errorf("%w: name %q longer than 255 bytes", ErrXattr, full)
		}
		x.hash = xattrHash(x.name, x.value)
		return x, nil
	}
	return xattr{}, fmt.Errorf("%w: unknown namespace in %q", ErrXattr, full)
}

// aclToDisk converts a POSIX ACL from the xattr form the VFS uses
// (version 2, 8-byte entries) to ext4's (version 1, 4-byte entries for the
// tags that carry no id).
func aclToDisk(v []byte) ([]byte, error) {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != 2 {
		return nil, fmt.Errorf("not a version 2 POSIX ACL")
	}
	out := binary.LittleEndian.AppendUint32(nil, 1)
	for e := v[4:]; len(e) > 0; e = e[8:] {
		tag := binary.LittleEndian.Uint16(e)
		out = append(out, e[:4]...)
		switch tag {
		case 0x02, 0x08: // ACL_USER, ACL_GROUP
			out = append(out, e[4:8]...)
		case 0x01, 0x04, 0x10, 0x20: // USER_OBJ, GROUP_OBJ, MASK, OTHER
		default:
			return nil, fmt.Errorf("unknown ACL tag %#x", tag)
		}
	}
	return out, nil
}

// xattrHash is the entry hash e2fsck and the kernel check.
func xattrHash(name string, value []byte) uint32 {
	var h uint32
	for i := 0; i < len(name); i++ {
		h = h<<5 ^ h>>27 ^ uint32(name[i])
	}
	for i := 0; i < len(value); i += 4 {
		var w [4]byte
		copy(w[:], value[i:])
		h = h<<16 ^ h>>16 ^ binary.LittleEndian.Uint32(w[:])
	}
	return h
}

// putEntries writes entries at buf[0:] and values downward from
// buf[valueEnd], value offsets counted from base. It returns false if
// they do not fit, leaving 4 zero bytes after the last entry.
func putEntries(buf []byte, xs []xattr, valueEnd, base int) bool {
	off, vend := 0, valueEnd
	for _, x := range xs {
		esize := xattrEntryHeader + pad4(len(x.name))
		vsize := pad4(len(x.value))
		if off+esize+4 > vend-vsize {
			return false
		}
		voff := 0
		if len(x.value) > 0 {
			vend -= vsize
			copy(buf[vend:], x.value)
			voff = vend + base
		}
		e := buf[off:]
		e[0] = uint8(len(x.name))
		e[1] = x.index
		binary.LittleEndian.PutUint16(e[2:], uint16(voff))
		binary.LittleEndian.PutUint32(e[4:], 0) // e_value_inum
		binary.LittleEndian.PutUint32(e[8:], uint32(len(x.value)))
		binary.LittleEndian.PutUint32(e[12:], x.hash)
		copy(e[16:], x.name)
		off += esize
	}
	return true
}

// encodeXattrBlock builds an attribute block (refcount left zero).
func encodeXattrBlock(xs []xattr) ([]byte, error) {
	buf := make([]byte, BlockSize)
	if !putEntries(buf[xattrBlockHeader:], xs, BlockSize-xattrBlockHeader, xattrBlockHeader) {
		return nil, fmt.Errorf("%w: attributes need more than the inode and one block", ErrXattr)
	}
	binary.LittleEndian.PutUint32(buf[0:], xattrMagic)
	binary.LittleEndian.PutUint32(buf[8:], 1) // h_blocks
	var h uint32
	for _, x := range xs {
		if x.hash == 0 {
			h = 0
			break
		}
		h = h<<16 ^ h>>16 ^ x.hash
	}
	binary.LittleEndian.PutUint32(buf[12:], h)
	return buf, nil
}

// putInodeXattrs writes the in-inode attribute area (the inode's bytes
// from xattrInodeStart).
func putInodeXattrs(area []byte, xs []xattr) {
	if len(xs) == 0 {
		return
	}
	binary.LittleEndian.PutUint32(area, xattrMagic)
	// Offsets count from the first entry, right after the magic.
	putEntries(area[4:], xs, len(area)-4, 0)
}
