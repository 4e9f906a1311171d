package source

import (
	"archive/tar"
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/kiln-os/kiln/build/tree"
)

func TestRulesNames(t *testing.T) {
	for r := Rules(0); r < 8; r++ {
		_, named := rulesNames[r]
		if named != (r <= OCILayer) || strings.HasPrefix(r.String(), "rules(") == named {
			t.Errorf("Rules(%d) = %q", r, r)
		}
	}
}

// hdr is a tar member for these tests.
type hdr struct {
	name string
	typ  byte
	link string
	body string
	x    map[string]string // SCHILY.xattr.NAME
}

func tarStream(t *testing.T, hs ...hdr) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		th := &tar.Header{Name: h.name, Typeflag: h.typ, Linkname: h.link, Mode: 0o644, Size: int64(len(h.body)), ModTime: epoch, Format: tar.FormatPAX}
		for k, v := range h.x {
			if th.PAXRecords == nil {
				th.PAXRecords = map[string]string{}
			}
			th.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(th); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(h.body))
	}
	tw.Close()
	return b.Bytes()
}

// applyStreams applies tar streams to a new tree by rules.
func applyStreams(t *testing.T, rules Rules, streams ...[]byte) (*tree.Tree, error) {
	t.Helper()
	sp, err := NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	tr := tree.New(epoch)
	for i, s := range streams {
		if err := sp.ApplyTar(tr, bytes.NewReader(s), LayerOptions{Name: "stream " + string(rune('0'+i)), Rules: rules}); err != nil {
			return nil, err
		}
	}
	return tr, nil
}

// listTree shows names, types, link targets and xattrs, one a line.
func listTree(tr *tree.Tree) string {
	var b strings.Builder
	ids := map[*tree.Inode]int{}
	tr.Walk(func(p string, n *tree.Inode) error {
		if p == "" {
			return nil
		}
		b.WriteString(p + " " + n.Type.String())
		if n.Type == tree.Symlink {
			b.WriteString(" -> " + n.Target)
		}
		if n.Type == tree.Regular {
			if _, ok := ids[n]; !ok {
				ids[n] = len(ids) + 1
			}
			b.WriteString(" #" + string(rune('0'+ids[n])))
		}
		for _, x := range n.Xattrs {
			b.WriteString(" " + x.Name + "=" + string(x.Value))
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

const (
	reg = tar.TypeReg
	dir = tar.TypeDir
	sym = tar.TypeSymlink
	lnk = tar.TypeLink
)

// TestGNUTarRules: the rules gnutar.go states, one member sequence each
// (test/layers_test.go holds them against GNU tar itself).
func TestGNUTarRules(t *testing.T) {
	for _, c := range []struct {
		name    string
		members []hdr
		want    string // the tree, or the error's words
	}{
		{"file over file", []hdr{{name: "p", typ: reg, body: "1"}, {name: "p", typ: reg, body: "2"}}, "p regular #1\n"},
		{"hard-linked name keeps its inode", []hdr{{name: "f", typ: reg}, {name: "h", typ: lnk, link: "f"}, {name: "f", typ: reg, body: "new"}},
			"f regular #1\nh regular #2\n"},
		{"file over empty dir", []hdr{{name: "p/", typ: dir}, {name: "p", typ: reg}}, "p regular #1\n"},
		{"file over full dir", []hdr{{name: "p/", typ: dir}, {name: "p/c", typ: reg}, {name: "p", typ: reg}},
			`entry "p" (member 3): source: members that cannot all be applied: a regular file over the directory "p", which holds "p/c"`},
		{"symlink over full dir", []hdr{{name: "p/c", typ: reg}, {name: "p", typ: sym, link: "x"}}, `a symlink over the directory "p"`},
		{"dir over dir", []hdr{{name: "p/", typ: dir, x: map[string]string{"user.a": "1", "user.b": "1"}}, {name: "p/c", typ: reg},
			{name: "p/", typ: dir, x: map[string]string{"user.a": "2"}}}, "p dir user.a=2 user.b=1\np/c regular #1\n"},
		{"dir over symlink to dir", []hdr{{name: "d/", typ: dir}, {name: "p", typ: sym, link: "d"}, {name: "p/", typ: dir}}, "d dir\np dir\n"},
		{"hard link to itself", []hdr{{name: "p/", typ: dir}, {name: "p", typ: lnk, link: "p"}}, "p dir\n"},
		{"hard link to itself, missing", []hdr{{name: "p", typ: lnk, link: "p"}}, `hard link to itself, and "p" does not exist`},
		{"hard link to nothing", []hdr{{name: "p", typ: lnk, link: "q"}}, `hard link to "q", which does not exist`},
		{"hard link through a symlink", []hdr{{name: "d/f", typ: reg}, {name: "s", typ: sym, link: "d"}, {name: "h", typ: lnk, link: "s/f"}},
			`hard link to "s/f": tree: path escapes the root or is malformed: parent "s" is a symlink`},
		{"below a file", []hdr{{name: "p", typ: reg}, {name: "p/c", typ: reg}}, `parent "p" is a regular file: tree: not a directory`},
		{"below a symlink", []hdr{{name: "d/", typ: dir}, {name: "p", typ: sym, link: "d"}, {name: "p/c", typ: reg}}, `parent "p" is a symlink`},
		{"over an absolute symlink", []hdr{{name: "p", typ: sym, link: "/etc"}, {name: "p", typ: reg}},
			`entry "p" (member 2): source: members that cannot all be applied: a regular file at the name of member 1's symlink (to "/etc")`},
		{"over a hard link to a .. symlink", []hdr{{name: "p", typ: sym, link: "../x"}, {name: "h", typ: lnk, link: "p"}, {name: "h", typ: lnk, link: "h"}, {name: "h", typ: sym, link: "y"}},
			`entry "h" (member 4)`},
		{"self link over an absolute symlink", []hdr{{name: "p", typ: sym, link: "/etc"}, {name: "p", typ: lnk, link: "p"}}, "p symlink -> /etc\n"},
		{"root file", []hdr{{name: ".", typ: reg}}, "in place of the root directory"},
		{"whiteouts are files", []hdr{{name: "p", typ: reg}, {name: ".wh.p", typ: reg}, {name: "d/.wh..wh..opq", typ: reg}},
			".wh.p regular #1\nd dir\nd/.wh..wh..opq regular #2\np regular #3\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr, err := applyStreams(t, GNUTar, tarStream(t, c.members...))
			got := ""
			if err != nil {
				got = err.Error()
				if !errors.Is(err, ErrUnsupported) && !errors.Is(err, tree.ErrBadPath) {
					t.Errorf("not an input error: %v", err)
				}
			} else {
				got = listTree(tr)
			}
			if (strings.HasSuffix(c.want, "\n") && got != c.want) || !strings.Contains(got, c.want) {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

// TestOCILayerRules: the rules ocilayer.go states, each a lower and an
// upper layer, the upper in its given order and reversed (the result must
// not change).
func TestOCILayerRules(t *testing.T) {
	lowerD := []hdr{{name: "d/", typ: dir}, {name: "d/sub/", typ: dir}, {name: "d/sub/y", typ: reg}, {name: "d/f", typ: reg, body: "lower"}}
	for _, c := range []struct {
		name         string
		lower, upper []hdr
		want         string
	}{
		{"opaque, subdir made again", lowerD, []hdr{{name: "d/", typ: dir}, {name: "d/.wh..wh..opq", typ: reg}, {name: "d/sub/", typ: dir}, {name: "d/sub/new", typ: reg}},
			"d dir\nd/sub dir\nd/sub/new regular #1\n"},
		{"opaque, subdir implied", lowerD, []hdr{{name: "d/", typ: dir}, {name: "d/sub/new", typ: reg}, {name: "d/.wh..wh..opq", typ: reg}},
			"d dir\nd/sub dir\nd/sub/new regular #1\n"},
		{"whiteout of the layer's own file", lowerD, []hdr{{name: "d/f", typ: reg, body: "upper"}, {name: "d/.wh.f", typ: reg}},
			"d dir\nd/f regular #1\nd/sub dir\nd/sub/y regular #2\n"},
		{"whiteout of a dir the layer fills", lowerD, []hdr{{name: "d/n", typ: reg}, {name: ".wh.d", typ: reg}}, "d dir\nd/n regular #1\n"},
		{"dir over dir takes its xattrs", []hdr{{name: "d/", typ: dir, x: map[string]string{"user.a": "1"}}, {name: "d/x", typ: reg}},
			[]hdr{{name: "d/", typ: dir, x: map[string]string{"user.b": "2"}}}, "d dir user.b=2\nd/x regular #1\n"},
		{"file over lower full dir", lowerD, []hdr{{name: "d", typ: reg}}, "d regular #1\n"},
		{"hard link to the layer's new file", []hdr{{name: "f", typ: reg, body: "old"}}, []hdr{{name: "h", typ: lnk, link: "f"}, {name: "f", typ: reg, body: "new"}},
			"f regular #1\nh regular #1\n"},
		{"hard link chain", []hdr{{name: "f", typ: reg}}, []hdr{{name: "h2", typ: lnk, link: "h1"}, {name: "h1", typ: lnk, link: "f"}},
			"f regular #1\nh1 regular #1\nh2 regular #1\n"},
		{"whiteout under a lower symlink the layer makes a dir", []hdr{{name: "s", typ: sym, link: "/etc"}}, []hdr{{name: "s/.wh.passwd", typ: reg}, {name: "s/", typ: dir}},
			"s dir\n"},
		{"member under a lower symlink the layer replaces", []hdr{{name: "s", typ: sym, link: "/etc"}}, []hdr{{name: "s/x", typ: reg}, {name: "s/", typ: dir}},
			"s dir\ns/x regular #1\n"},
		{"duplicate", nil, []hdr{{name: "p", typ: reg}, {name: "./p/", typ: dir}}, `(member 2): source: members that cannot all be applied: member 1 has the same path`},
		{"below the layer's file", nil, []hdr{{name: "p/c", typ: reg}, {name: "p", typ: reg}}, `of the same layer makes a regular file`},
		{"whiteout under a lower file", []hdr{{name: "p", typ: reg}}, []hdr{{name: "p/.wh.x", typ: reg}}, `parent "p" is a regular file of a lower layer`},
		{"whiteout under a lower symlink", []hdr{{name: "p", typ: sym, link: "/"}}, []hdr{{name: "p/.wh.etc", typ: reg}}, `parent "p" is a symlink (to "/") of a lower layer`},
		{"member under a lower file", []hdr{{name: "p", typ: reg}}, []hdr{{name: "p/c", typ: reg}}, `parent "p" is a regular file`},
		{"hard link to a whited-out file", []hdr{{name: "f", typ: reg}}, []hdr{{name: "h", typ: lnk, link: "f"}, {name: ".wh.f", typ: reg}}, `hard link to "f", which does not exist`},
		{"hard link loop", nil, []hdr{{name: "a", typ: lnk, link: "b"}, {name: "b", typ: lnk, link: "a"}}, "a loop of hard links"},
		{"hard link below a hard link", []hdr{{name: "d/f", typ: reg}, {name: "g", typ: reg}}, []hdr{{name: "h", typ: lnk, link: "d/f"}, {name: "d", typ: lnk, link: "g"}},
			"below the hard link of member"},
		{"root not a directory", nil, []hdr{{name: ".", typ: reg}}, "in place of the root directory"},
		{"aufs metadata", nil, []hdr{{name: ".wh..wh.plnk/1", typ: reg}}, `a name beginning with ".wh." hides a file`},
		{"aufs name", nil, []hdr{{name: "d/.wh..wh.aufs", typ: reg}}, "aufs metadata"},
		{"whiteout of nothing", nil, []hdr{{name: "d/.wh.", typ: reg}}, "a whiteout naming no file"},
		{"whiteout of ..", []hdr{{name: "d/", typ: dir}}, []hdr{{name: "d/.wh...", typ: reg}}, `a whiteout of ".."`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var first string
			for pass, upper := range [][]hdr{c.upper, reversed(c.upper)} {
				tr, err := applyStreams(t, OCILayer, tarStream(t, c.lower...), tarStream(t, upper...))
				got := ""
				if err != nil {
					got = err.Error()
					if !errors.Is(err, ErrUnsupported) && !errors.Is(err, tree.ErrBadPath) {
						t.Errorf("not an input error: %v", err)
					}
					if !strings.HasPrefix(got, "stream 1: entry ") {
						t.Errorf("the error names neither the layer nor a member: %v", err)
					}
				} else {
					got = listTree(tr)
				}
				if (strings.HasSuffix(c.want, "\n") && got != c.want) || !strings.Contains(got, c.want) {
					t.Errorf("order %d: got\n%s\nwant\n%s", pass, got, c.want)
				}
				if pass == 0 {
					first = got
				} else if err == nil && got != first {
					t.Errorf("the reversed layer gives\n%s\nthe layer\n%s", got, first)
				}
			}
		})
	}
}

func reversed(hs []hdr) []hdr {
	out := make([]hdr, len(hs))
	for i, h := range hs {
		out[len(hs)-1-i] = h
	}
	return out
}
