package source

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/kiln-os/kiln/build/tree"
)

// aclFromText turns an ACL in the text form tar archives carry (GNU tar,
// star and bsdtar write SCHILY.acl.access and SCHILY.acl.default:
// "user::rw-,user:1234:rwx,group::r--,mask::rwx,other::r--", entries
// separated by commas or newlines, star and bsdtar adding a numeric id as
// a fourth field) into the kernel's xattr form for inode n.
//
// An access ACL must agree with n's mode, as it does on the file it was
// read from (tar -x would set the mode from it): owner, mask (or group)
// and other bits. One without named entries or mask says no more than the
// mode, and the kernel stores none: nil is returned. A default ACL
// belongs to a directory. A user or group given by name only is refused:
// which id a name means depends on a passwd file kiln cannot know.
func aclFromText(text string, isDefault bool, n *tree.Inode) ([]byte, error) {
	var entries []tree.ACLEntry
	for _, e := range strings.FieldsFunc(text, func(r rune) bool { return r == ',' || r == '\n' }) {
		if i := strings.IndexByte(e, '#'); i >= 0 {
			e = e[:i] // "#effective:r--" comments
		}
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if isDefault {
			e = strings.TrimPrefix(e, "default:")
		}
		a, err := aclEntry(e)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", e, err)
		}
		entries = append(entries, a)
	}
	if len(entries) == 0 {
		return nil, nil
	}
	order := map[uint16]int{tree.ACLUserObj: 0, tree.ACLUser: 1, tree.ACLGroupObj: 2, tree.ACLGroup: 3, tree.ACLMask: 4, tree.ACLOther: 5}
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.Tag != b.Tag {
			return order[a.Tag] < order[b.Tag]
		}
		return a.ID < b.ID
	})
	value := tree.EncodeACL(entries)
	if _, err := tree.DecodeACL(value); err != nil {
		return nil, err
	}
	if isDefault {
		if n.Type != tree.Dir {
			return nil, fmt.Errorf("a default ACL on a %v (only directories have one)", n.Type)
		}
		return value, nil
	}
	var owner, group, other uint16
	for _, e := range entries {
		switch e.Tag {
		case tree.ACLUserObj:
			owner = e.Perm
		case tree.ACLGroupObj:
			if len(entries) == 3 {
				group = e.Perm
			}
		case tree.ACLMask:
			group = e.Perm
		case tree.ACLOther:
			other = e.Perm
		}
	}
	if want := owner<<6 | group<<3 | other; n.Perm&0o777 != want {
		return nil, fmt.Errorf("the mode %04o disagrees with the ACL (%03o)", n.Perm, want)
	}
	if len(entries) == 3 {
		return nil, nil
	}
	return value, nil
}

var permBits = map[rune]uint16{'r': 4, 'w': 2, 'x': 1, '-': 0}

// aclEntry parses one "tag:qualifier:perms[:id]" entry.
func aclEntry(e string) (tree.ACLEntry, error) {
	f := strings.Split(e, ":")
	a := tree.ACLEntry{ID: tree.NoID}
	switch f[0] {
	case "user", "u":
		a.Tag = tree.ACLUser
	case "group", "g":
		a.Tag = tree.ACLGroup
	case "mask", "m":
		a.Tag = tree.ACLMask
	case "other", "o":
		a.Tag = tree.ACLOther
	default:
		return a, fmt.Errorf("unknown tag %q", f[0])
	}
	var qual, perms, id string
	switch {
	case len(f) == 2 && (a.Tag == tree.ACLMask || a.Tag == tree.ACLOther):
		perms = f[1]
	case len(f) == 3:
		qual, perms = f[1], f[2]
	case len(f) == 4:
		qual, perms, id = f[1], f[2], f[3]
	default:
		return a, errors.New("want tag:qualifier:permissions")
	}
	for _, c := range perms {
		b, ok := permBits[c]
		if !ok || a.Perm&b != 0 {
			return a, fmt.Errorf("permissions %q", perms)
		}
		a.Perm |= b
	}
	if len(perms) == 0 || len(perms) > 3 {
		return a, fmt.Errorf("permissions %q", perms)
	}
	if qual == "" {
		if id != "" {
			return a, errors.New("an id without a user or group")
		}
		switch a.Tag {
		case tree.ACLUser:
			a.Tag = tree.ACLUserObj
		case tree.ACLGroup:
			a.Tag = tree.ACLGroupObj
		}
		return a, nil
	}
	if a.Tag == tree.ACLMask || a.Tag == tree.ACLOther {
		return a, fmt.Errorf("%s entries name no user or group", f[0])
	}
	num, err := strconv.ParseUint(qual, 10, 32)
	if err != nil {
		if id == "" {
			return a, fmt.Errorf("names %s %q without its numeric id: kiln cannot know which id that is (archive with numeric ids, or with bsdtar, which adds them)", f[0], qual)
		}
		if num, err = strconv.ParseUint(id, 10, 32); err != nil {
			return a, fmt.Errorf("id %q", id)
		}
	} else if id != "" && id != qual {
		return a, fmt.Errorf("id %q differs from %q", id, qual)
	}
	a.ID = uint32(num)
	return a, nil
}

// libarchiveXattr decodes bsdtar's LIBARCHIVE.xattr.NAME=VALUE record:
// the name URL-encoded, the value base64 (libarchive omits the padding).
func libarchiveXattr(encName, value string) (string, []byte, error) {
	name, err := url.PathUnescape(encName)
	if err != nil {
		return "", nil, fmt.Errorf("name: %w", err)
	}
	v, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(value, "="))
	if err != nil {
		return "", nil, fmt.Errorf("value: %w", err)
	}
	return name, v, nil
}
