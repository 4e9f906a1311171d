package test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

// Exact layers: what kiln makes of an OCI image's layers is what
// `umoci unpack` makes of them where the OCI image-spec defines the result
// (whiteouts and opaque markers hide only what lower layers hold, whatever
// their place in the layer), and what kiln makes of a plain tarball is
// what GNU tar 1.34 extracts as root (tar -xpf --xattrs
// --xattrs-include='*' --acls); where GNU tar refuses a member, kiln
// refuses the tarball naming it. The oracles run here on layers and
// tarballs the tests write, and their trees are compared with the image
// kiln builds, read back through a loop mount.

// layerTime is the time of the members these tests write: nanoseconds
// included, before noClamp so that none is clamped.
var layerTime = time.Unix(1600000000, 123456789)

// member is one tar entry a test writes.
type member struct {
	name   string
	typ    byte
	body   string
	link   string // symlink or hard link target
	mode   int64
	uid    int
	xattrs map[string]string // SCHILY.xattr.NAME
	pax    map[string]string // other PAX records
	mtime  time.Time
	major  int64 // a device's numbers
	minor  int64
}

// tarOf writes members as a PAX tar stream.
func tarOf(t *testing.T, ms ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Typeflag: m.typ, Linkname: m.link, Mode: m.mode, Uid: m.uid,
			ModTime: m.mtime, Devmajor: m.major, Devminor: m.minor, Format: tar.FormatPAX}
		if h.ModTime.IsZero() {
			h.ModTime = layerTime
		}
		if h.Mode == 0 {
			h.Mode = map[byte]int64{tar.TypeDir: 0o755, tar.TypeSymlink: 0o777}[m.typ]
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		if m.typ == tar.TypeReg {
			h.Size = int64(len(m.body))
		}
		for k, v := range m.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		for k, v := range m.pax {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords[k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if m.typ == tar.TypeReg {
			tw.Write([]byte(m.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dirM(name string, xattrs ...string) member {
	return member{name: name, typ: tar.TypeDir, xattrs: pairs(xattrs)}
}

func fileM(name, body string, xattrs ...string) member {
	return member{name: name, typ: tar.TypeReg, body: body, xattrs: pairs(xattrs)}
}

func pairs(kv []string) map[string]string {
	if len(kv) == 0 {
		return nil
	}
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// writeOCI writes an OCI image layout by hand (blobs named by their
// digests, a config listing the layers' diff ids, a manifest, an index
// tagging it v1) with one gzip layer per tar stream, and returns it.
func writeOCI(t *testing.T, dir string, layers ...[]byte) string {
	t.Helper()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	put := func(mediaType string, b []byte) desc {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(blobs, h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return desc{MediaType: mediaType, Digest: "sha256:" + h, Size: len(b)}
	}
	var descs []desc
	var diffIDs []string
	for _, l := range layers {
		sum := sha256.Sum256(l)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(l)
		zw.Close()
		descs = append(descs, put("application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes()))
	}
	marshal := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cfg := put("application/vnd.oci.image.config.v1+json", marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"config": map[string]any{}, "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}}))
	man := put("application/vnd.oci.image.manifest.v1+json", marshal(map[string]any{"schemaVersion": 2,
		"mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": descs}))
	man.Annotations = map[string]string{"org.opencontainers.image.ref.name": "v1"}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), marshal(map[string]any{"schemaVersion": 2, "manifests": []desc{man}}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// umociTree unpacks the layout's v1 image with umoci (as root) and reads
// its rootfs.
func umociTree(t *testing.T, layout string) *tree.Tree {
	t.Helper()
	bundle := filepath.Join(t.TempDir(), "bundle")
	mustRun(t, "umoci", "unpack", "--image", layout+":v1", bundle)
	got, err := source.FromDir(filepath.Join(bundle, "rootfs"))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// gnuTar extracts a tarball with GNU tar as root, with the options that
// keep everything a tar member can say (umask 022 for the directories it
// makes itself), into a new directory on the filesystem of dir (ext4 for
// the test's temporary directories). It returns the directory, GNU tar's
// exit code and its messages.
func gnuTar(t *testing.T, tarball, dir string) (string, int, string) {
	t.Helper()
	out, err := os.MkdirTemp(dir, "gnutar-")
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, "sh", "-c", `umask 022 && exec tar --xattrs --xattrs-include='*' --acls -xpf "$1" -C "$2"`, "sh", tarball, out)
	return out, r.code, r.stderr
}

// kilnUSR builds a recipe whose USR-A (ext4) holds source and returns the
// tree the kernel shows of it, lost+found aside.
func kilnUSR(t *testing.T, dir, src string) *tree.Tree {
	t.Helper()
	out := filepath.Join(dir, "out")
	mustBuild(t, writeRecipe(t, dir, "  USR-A:\n    source: "+src+"\n  OEM: {}\n  ROOT: {}\n"), out, noClamp)
	got, err := source.FromDir(mountRO(t, filepath.Join(out, "usr.img"), "ext4", 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Remove("lost+found"); err != nil {
		t.Fatal(err)
	}
	return got
}

// sameTree compares kiln's tree with an oracle's: every name, type, mode,
// owner, time (nanoseconds), xattr (POSIX ACLs among them), symlink
// target, device number, content and hard-link group. The roots are the
// extraction directories, whose own metadata is not the source's; the
// times of the directories in unspecifiedTime are made by the extractor
// (GNU tar and umoci give a directory no member names the time it was
// made, or changed it after the member's time was set).
func sameTree(t *testing.T, want, got *tree.Tree, unspecifiedTime ...string) {
	t.Helper()
	want.Root.Perm, want.Root.UID, want.Root.GID, want.Root.Mtime, want.Root.Xattrs = got.Root.Perm, got.Root.UID, got.Root.GID, got.Root.Mtime, got.Root.Xattrs
	for _, p := range unspecifiedTime {
		w, err1 := want.Lookup(p)
		g, err2 := got.Lookup(p)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: oracle %v, kiln %v", p, err1, err2)
		}
		w.Mtime = g.Mtime
	}
	if err := treetest.Equal(want, got, treetest.CompareOptions{}); err != nil {
		t.Errorf("kiln's image differs from the oracle's tree: %v\noracle:\n%s\nkiln:\n%s", err, listing(want), listing(got))
	}
}

// listing shows a tree, one name a line.
func listing(tr *tree.Tree) string {
	var b strings.Builder
	tr.Walk(func(p string, n *tree.Inode) error {
		fmt.Fprintf(&b, "  /%s %v %04o %d:%d", p, n.Type, n.Perm, n.UID, n.GID)
		if n.Type == tree.Symlink {
			fmt.Fprintf(&b, " -> %s", n.Target)
		}
		for _, x := range n.Xattrs {
			fmt.Fprintf(&b, " %s=%q", x.Name, x.Value)
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// lowerD is the lower layer of the opaque-directory cases: d/sub holds a
// file and a directory with a file.
func lowerD(t *testing.T) []byte {
	return tarOf(t, dirM("d/"), dirM("d/sub/"), fileM("d/sub/y", "y"), dirM("d/sub/deep/"), fileM("d/sub/deep/z", "z"), fileM("d/keep", "k"))
}

// TestLayersOpaqueRecreatedSubdir: what podman makes of `rm -r d && mkdir
// -p d/sub && touch d/sub/new`: d made opaque, d/sub made again. The
// marker hides everything lower layers had under d, d/sub's children
// too; only the layer's own d/sub/new stays (kiln used to keep d/sub/y
// and d/sub/deep/z).
func TestLayersOpaqueRecreatedSubdir(t *testing.T) {
	dir := t.TempDir()
	img := writeOCI(t, filepath.Join(dir, "img"), lowerD(t),
		tarOf(t, dirM("d/"), fileM("d/.wh..wh..opq", ""), dirM("d/sub/"), fileM("d/sub/new", "new")))
	want := umociTree(t, img)
	got := kilnUSR(t, dir, "oci:img:v1")
	sameTree(t, want, got)
	for _, gone := range []string{"d/sub/y", "d/sub/deep", "d/keep"} {
		if _, err := got.Lookup(gone); err == nil {
			t.Errorf("%s survived the opaque marker over d", gone)
		}
	}
}

// TestLayersOpaqueImpliedSubdir: the layer's d/sub/new, whose directory
// d/sub has no member of its own, stays under an opaque d whatever the
// marker's place (kiln used to drop d/sub with it). umoci, reading the
// marker last, keeps lower d/sub's directory (not its children) for the
// file; the spec applies the marker first, so d/sub is made anew, its
// time the extractor's.
func TestLayersOpaqueImpliedSubdir(t *testing.T) {
	dir := t.TempDir()
	img := writeOCI(t, filepath.Join(dir, "img"), lowerD(t),
		tarOf(t, dirM("d/"), fileM("d/sub/new", "new"), fileM("d/.wh..wh..opq", "")))
	want := umociTree(t, img)
	got := kilnUSR(t, dir, "oci:img:v1")
	sameTree(t, want, got, "d/sub")
	if n, err := got.Lookup("d/sub/new"); err != nil || n.Size != 3 {
		t.Errorf("d/sub/new: %v", err)
	}
}

// TestLayersWhiteoutOfOwnEntry: a whiteout hides only what lower layers
// hold. A file and then its whiteout in one layer leave the layer's
// file; a directory's whiteout after the layer's own files in it leaves
// those (kiln used to remove both).
func TestLayersWhiteoutOfOwnEntry(t *testing.T) {
	dir := t.TempDir()
	img := writeOCI(t, filepath.Join(dir, "img"),
		tarOf(t, fileM("f", "lower"), dirM("d/"), fileM("d/x", "lower x")),
		tarOf(t, fileM("f", "upper"), fileM(".wh.f", ""), dirM("d/"), fileM("d/y", "upper y"), fileM(".wh.d", "")))
	want := umociTree(t, img)
	got := kilnUSR(t, dir, "oci:img:v1")
	// umoci removes the lower d/x after it has set d's time, so its d has
	// the time of that removal; the member's time is checked apart.
	sameTree(t, want, got, "d")
	if f, err := got.Lookup("f"); err != nil || f.Size != int64(len("upper")) {
		t.Errorf("the layer's own f: %v", err)
	}
	if _, err := got.Lookup("d/x"); err == nil {
		t.Error("d/x of the lower layer survived .wh.d")
	}
	if d, err := got.Lookup("d"); err != nil || !d.Mtime.Equal(layerTime) {
		t.Errorf("d: %v, want the member's time %v", err, layerTime)
	}
}

// TestLayersTarFileOverFullDir: a tarball with d/, d/c and then a
// regular file d. GNU tar refuses the file ("Cannot open: File exists")
// and keeps d/c; kiln stored the file and dropped d/c without a word.
// Now it refuses the tarball, naming it and the member.
func TestLayersTarFileOverFullDir(t *testing.T) {
	dir := t.TempDir()
	tarball := filepath.Join(dir, "usr.tar")
	if err := os.WriteFile(tarball, tarOf(t, dirM("d/"), fileM("d/c", "c"), fileM("d", "file")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code, msg := gnuTar(t, tarball, dir); code == 0 || !strings.Contains(msg, "d: Cannot open: File exists") {
		t.Fatalf("GNU tar: exit %d, %q; want a refusal of d", code, msg)
	}
	mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    source: tar:usr.tar\n  OEM: {}\n  ROOT: {}\n"), filepath.Join(dir, "out"), noClamp,
		tarball, `entry "d" (member 3)`, `"d/c"`)
}

// TestLayersTarDirTwice: a tarball with d/ twice, with different xattrs
// and modes. GNU tar applies the first member's metadata before it
// reaches the second, so d ends with the second's mode and owner and
// the xattrs of both (the second's value where both have one); kiln
// kept the second's xattrs alone.
func TestLayersTarDirTwice(t *testing.T) {
	dir := t.TempDir()
	tarball := filepath.Join(dir, "usr.tar")
	first := dirM("d/", "user.a", "1", "user.b", "1", "trusted.t", "first")
	first.mode, first.uid = 0o700, 5
	second := dirM("d/", "user.a", "2", "user.c", "2")
	second.mode, second.uid, second.mtime = 0o751, 6, layerTime.Add(time.Hour)
	if err := os.WriteFile(tarball, tarOf(t, first, fileM("d/c", "c"), second), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code, msg := gnuTar(t, tarball, dir)
	if code != 0 {
		t.Fatalf("GNU tar: exit %d: %s", code, msg)
	}
	want, err := source.FromDir(out)
	if err != nil {
		t.Fatal(err)
	}
	got := kilnUSR(t, dir, "tar:usr.tar")
	sameTree(t, want, got)
	d, err := got.Lookup("d")
	if err != nil || len(d.Xattrs) != 4 {
		t.Errorf("d's xattrs: %v %v, want trusted.t, user.a=2, user.b, user.c", err, d)
	}
}

// tarItems are the members the tarball matrix puts in sequences, each at
// or about the name p of its case's directory c (which holds a file f0
// and a directory d0): F a file p, D and E a directory p (E with access
// and default ACLs), S a symlink p to f0, T one to d0, A one to an
// absolute path, U one through "..", H a hard link p to f0, I a hard link
// p to itself, P a fifo p, N a character device p, C a file p/c, L a
// hard link to p.
const tarItems = "FDESTAUHIPNCL"

// tarMember is item x at position i (from 0) of case c's sequence.
func tarMember(c string, x byte, i int) member {
	p := c + "/p"
	at := layerTime.Add(time.Duration(i+1) * time.Minute)
	switch x {
	case 'F':
		return member{name: p, typ: tar.TypeReg, body: fmt.Sprintf("F%d", i), mode: 0o640, uid: 10 + i, mtime: at,
			xattrs: map[string]string{"user.f": fmt.Sprint(i)}}
	case 'D':
		return member{name: p + "/", typ: tar.TypeDir, mode: []int64{0o750, 0o711, 0o755}[i], uid: 20 + i, mtime: at,
			xattrs: map[string]string{fmt.Sprintf("user.d%d", i): "x", "user.common": fmt.Sprint(i)}}
	case 'E':
		acl := "user::rwx\nuser:1234:rwx\ngroup::r-x\nmask::rwx\nother::r-x\n"
		return member{name: p + "/", typ: tar.TypeDir, mode: 0o775, uid: 30 + i, mtime: at,
			xattrs: map[string]string{"user.common": "E"}, pax: map[string]string{"SCHILY.acl.access": acl, "SCHILY.acl.default": acl}}
	case 'S':
		return member{name: p, typ: tar.TypeSymlink, link: "f0", uid: 40 + i, mtime: at}
	case 'T':
		return member{name: p, typ: tar.TypeSymlink, link: "d0", uid: 40 + i, mtime: at}
	case 'A':
		return member{name: p, typ: tar.TypeSymlink, link: fmt.Sprintf("/abs/%d", i), mtime: at}
	case 'U':
		return member{name: p, typ: tar.TypeSymlink, link: fmt.Sprintf("../up/%d", i), mtime: at}
	case 'H':
		return member{name: p, typ: tar.TypeLink, link: c + "/f0"}
	case 'I':
		return member{name: p, typ: tar.TypeLink, link: p}
	case 'P':
		return member{name: p, typ: tar.TypeFifo, mode: 0o600, uid: 50 + i, mtime: at}
	case 'N':
		return member{name: p, typ: tar.TypeChar, mode: 0o620, uid: 60 + i, mtime: at, major: 1, minor: int64(3 + i)}
	case 'C':
		return member{name: p + "/c", typ: tar.TypeReg, body: fmt.Sprintf("C%d", i), mtime: at}
	case 'L':
		return member{name: fmt.Sprintf("%s/h%d", c, i), typ: tar.TypeLink, link: p}
	}
	panic(fmt.Sprintf("tar item %q", x))
}

// tarCase returns case c's members: its directory, f0 and d0, then seq.
func tarCase(c, seq string) []member {
	ms := []member{dirM(c + "/"), fileM(c+"/f0", "f0"), dirM(c + "/d0/")}
	for i := range seq {
		ms = append(ms, tarMember(c, seq[i], i))
	}
	return ms
}

// tarModel follows what a sequence leaves at p, for what only kiln
// refuses and for the times GNU tar does not take from a member: it
// reports whether kiln refuses a member GNU tar extracts (one below a
// symlink, which GNU tar writes through; any member but a hard link to
// itself at a name that has held a symlink GNU tar makes last), and
// whether p ends a directory with a time of GNU tar's making: one no
// member named, or one that received a member after GNU tar had applied
// its member's metadata (it does so at the first member outside the
// directory, here a hard link to it or to itself).
func tarModel(seq string) (kilnRefuses, extractorTime bool) {
	state, placeholder := byte('-'), false // '-' none, 'f' non-directory, 'd' directory, 'l' symlink
	applied := false                       // p's metadata applied (a directory member's)
	for i := range seq {
		x := seq[i]
		if placeholder && x != 'I' && x != 'L' && x != 'C' {
			return true, false
		}
		switch x {
		case 'F', 'H', 'P', 'N':
			state, extractorTime = 'f', false
		case 'D', 'E':
			state, extractorTime, applied = 'd', false, false
		case 'S', 'T':
			state, extractorTime = 'l', false
		case 'A', 'U':
			state, extractorTime, placeholder = 'l', false, true
		case 'I', 'L':
			applied = true
		case 'C':
			switch state {
			case 'l':
				return true, false
			case '-':
				state, extractorTime = 'd', true
			case 'd':
				extractorTime = extractorTime || applied
			}
		}
	}
	return false, state == 'd' && extractorTime
}

// sequences returns every sequence of 1 to n items.
func sequences(items string, n int) []string {
	out := []string{""}
	var all []string
	for l := 0; l < n; l++ {
		var next []string
		for _, s := range out {
			for i := range items {
				next = append(next, s+items[i:i+1])
			}
		}
		all, out = append(all, next...), next
	}
	return all
}

// tmpfs mounts a tmpfs for the test.
func tmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	mustRun(t, "mount", "-t", "tmpfs", "kiln-test", dir)
	t.Cleanup(func() {
		if r := run(t, "umount", dir); r.code != 0 {
			t.Errorf("umount %s: %s", dir, r.stderr)
		}
	})
	return dir
}

// TestLayersTarMatrix: every sequence of one to three of tarItems at one
// name (2379), each sequence a case in a directory of its own, extracted
// by GNU tar onto ext4 and onto tmpfs. Where GNU tar refuses a member,
// where its two results differ (a symlink it makes last, whose name a
// later member took), where it writes through a symlink, or where a
// later member takes such a symlink's name, kiln refuses the case's
// tarball, naming it and a member. Every other case is in one tarball
// kiln builds, and the image equals GNU tar's ext4 extraction of it.
func TestLayersTarMatrix(t *testing.T) {
	dir := t.TempDir()
	seqs := sequences(tarItems, 3)
	name := func(i int) string { return fmt.Sprintf("c%04d", i) }
	var all []member
	for i, seq := range seqs {
		all = append(all, tarCase(name(i), seq)...)
	}
	full := filepath.Join(dir, "all.tar")
	if err := os.WriteFile(full, tarOf(t, all...), 0o644); err != nil {
		t.Fatal(err)
	}
	ext4Out, _, msg := gnuTar(t, full, dir)
	tmpfsOut, _, _ := gnuTar(t, full, tmpfs(t))
	refused := map[string]string{} // case: GNU tar's first complaint
	for _, line := range strings.Split(msg, "\n") {
		if c, _, ok := strings.Cut(strings.TrimPrefix(line, "tar: "), "/"); ok && strings.HasPrefix(line, "tar: c") && refused[c] == "" {
			refused[c] = line
		}
	}
	onExt4, err := source.FromDir(ext4Out)
	if err != nil {
		t.Fatal(err)
	}
	onTmpfs, err := source.FromDir(tmpfsOut)
	if err != nil {
		t.Fatal(err)
	}
	var accepted []member
	var implied []string
	counts := map[string]int{}
	sp, err := source.NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	for i, seq := range seqs {
		c := name(i)
		a, _ := onExt4.Sub(c)
		b, _ := onTmpfs.Sub(c)
		fsDependent := treetest.Equal(a, b, treetest.CompareOptions{IgnoreDirTime: true}) != nil
		kilnOnly, pImplied := tarModel(seq)
		if gnu := refused[c]; gnu != "" || fsDependent || kilnOnly {
			why := "GNU tar: " + gnu
			switch {
			case gnu != "":
				counts["refused by GNU tar"]++
			case fsDependent:
				why = "GNU tar's result depends on the filesystem"
				counts["filesystem-dependent in GNU tar"]++
			default:
				why = "kiln's own rule"
				counts["refused by kiln alone"]++
			}
			p := filepath.Join(dir, c+".tar")
			if err := os.WriteFile(p, tarOf(t, tarCase(c, seq)...), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := sp.FromTar(p, time.Unix(noClamp, 0), nil)
			switch {
			case err == nil:
				t.Errorf("%s %s: kiln accepts it (%s)", c, seq, why)
			case !errors.Is(err, source.ErrUnsupported) && !errors.Is(err, tree.ErrBadPath):
				t.Errorf("%s %s: kiln's error is not an input error: %v", c, seq, err)
			case !strings.Contains(err.Error(), "tar "+p+": entry \""+c):
				t.Errorf("%s %s: kiln's error names neither the tarball nor a member: %v", c, seq, err)
			case !kilnOnly && gnu != "" && !strings.Contains(err.Error(), `entry "`+strings.TrimSuffix(strings.Fields(gnu)[1], ":")+`"`):
				t.Errorf("%s %s: GNU tar refuses %q, kiln %v", c, seq, gnu, err)
			}
			continue
		}
		counts["accepted"]++
		accepted = append(accepted, tarCase(c, seq)...)
		if pImplied {
			implied = append(implied, c+"/p")
		}
	}
	t.Logf("%d sequences: %v", len(seqs), counts)
	tarball := filepath.Join(dir, "usr.tar")
	if err := os.WriteFile(tarball, tarOf(t, accepted...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code, msg := gnuTar(t, tarball, dir)
	if code != 0 {
		t.Fatalf("GNU tar refuses the accepted cases: %s", msg)
	}
	want, err := source.FromDir(out)
	if err != nil {
		t.Fatal(err)
	}
	got := kilnUSR(t, dir, "tar:usr.tar")
	sameCases(t, want, got, seqs, implied)
}

// sameCases is sameTree over a matrix of cases named cNNNN or oNNNN
// (their index in seqs), naming the failing case's sequence.
func sameCases(t *testing.T, want, got *tree.Tree, seqs []string, unspecifiedTime []string) {
	t.Helper()
	want.Root.Perm, want.Root.UID, want.Root.GID, want.Root.Mtime, want.Root.Xattrs = got.Root.Perm, got.Root.UID, got.Root.GID, got.Root.Mtime, got.Root.Xattrs
	for _, p := range unspecifiedTime {
		w, err1 := want.Lookup(p)
		g, err2 := got.Lookup(p)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: oracle %v, kiln %v", p, err1, err2)
		}
		w.Mtime = g.Mtime
	}
	if err := treetest.Equal(want, got, treetest.CompareOptions{}); err != nil {
		msg := err.Error()
		var i int
		if _, serr := fmt.Sscanf(strings.TrimLeft(msg, `"`)[1:], "%04d", &i); serr == nil && i < len(seqs) {
			c := strings.TrimLeft(msg, `"`)[:5]
			w, _ := want.Sub(c)
			g, _ := got.Sub(c)
			t.Errorf("case %s (%s): kiln's image differs from the oracle's: %v\noracle:\n%s\nkiln:\n%s", c, seqs[i], err, listingOf(w), listingOf(g))
			return
		}
		t.Errorf("kiln's image differs from the oracle's: %v", err)
	}
}

func listingOf(tr *tree.Tree) string {
	if tr == nil {
		return "  (none)\n"
	}
	return listing(tr)
}

// ociCase is a case of the layer matrix: what the lower layer has at p in
// the case's directory c (which also holds a file f0), and what the upper
// layer has.
type ociCase struct {
	// lower: '-' nothing, 'F' a file, 'S' a symlink to f0, 'E' an empty
	// directory, 'D' a directory holding a, sub/b and sub/deep/z.
	lower byte
	// entry, the upper layer's member at p: '-' none, 'F' a file, 'D' a
	// directory, 'S' a symlink, 'H' a hard link to f0.
	entry byte
	// items are the upper layer's other members: W the whiteout .wh.p, O
	// the opaque marker p/.wh..wh..opq, K the whiteout p/.wh.a, C a file
	// p/new, B a directory p/sub, G a file p/sub/new2, L a hard link h to
	// p.
	items string
}

const ociItems = "WOKCBGL"

func (o ociCase) has(x byte) bool { return strings.IndexByte(o.items, x) >= 0 }

func (o ociCase) String() string {
	return fmt.Sprintf("lower %c, upper %c+%s", o.lower, o.entry, o.items)
}

// lowerMembers returns case c's lower layer.
func (o ociCase) lowerMembers(c string) []member {
	ms := []member{dirM(c + "/"), fileM(c+"/f0", "f0")}
	dir := member{name: c + "/p/", typ: tar.TypeDir, mode: 0o700, uid: 7, xattrs: map[string]string{"user.l": "1"}}
	switch o.lower {
	case 'F':
		ms = append(ms, member{name: c + "/p", typ: tar.TypeReg, body: "lower", mode: 0o640, uid: 7, xattrs: map[string]string{"user.l": "1"}})
	case 'S':
		ms = append(ms, member{name: c + "/p", typ: tar.TypeSymlink, link: "f0", uid: 7})
	case 'E':
		ms = append(ms, dir)
	case 'D':
		ms = append(ms, dir, fileM(c+"/p/a", "a"),
			member{name: c + "/p/sub/", typ: tar.TypeDir, mode: 0o750, uid: 8, xattrs: map[string]string{"user.s": "1"}},
			fileM(c+"/p/sub/b", "b"), dirM(c+"/p/sub/deep/"), fileM(c+"/p/sub/deep/z", "z"))
	}
	return ms
}

// upperMember returns upper member x of case c ('F', 'D', 'S', 'H' are
// the entry at p).
func (o ociCase) upperMember(c string, x byte) member {
	later := layerTime.Add(time.Hour)
	switch x {
	case 'F':
		return member{name: c + "/p", typ: tar.TypeReg, body: "upper", mode: 0o600, uid: 9, mtime: later, xattrs: map[string]string{"user.u": "1"}}
	case 'D':
		return member{name: c + "/p/", typ: tar.TypeDir, mode: 0o751, uid: 9, mtime: later, xattrs: map[string]string{"user.u": "1"}}
	case 'S':
		return member{name: c + "/p", typ: tar.TypeSymlink, link: "f0", uid: 9, mtime: later}
	case 'H':
		return member{name: c + "/p", typ: tar.TypeLink, link: c + "/f0"}
	case 'W':
		return fileM(c+"/.wh.p", "")
	case 'O':
		return fileM(c+"/p/.wh..wh..opq", "")
	case 'K':
		return fileM(c+"/p/.wh.a", "")
	case 'C':
		return member{name: c + "/p/new", typ: tar.TypeReg, body: "new", mtime: later}
	case 'B':
		return member{name: c + "/p/sub/", typ: tar.TypeDir, mode: 0o711, uid: 10, mtime: later.Add(time.Hour)}
	case 'G':
		return member{name: c + "/p/sub/new2", typ: tar.TypeReg, body: "new2", mtime: later}
	case 'L':
		return member{name: c + "/h", typ: tar.TypeLink, link: c + "/p"}
	}
	panic(fmt.Sprintf("layer item %q", x))
}

// upper lists the case's upper members as items ("F" for an entry F).
func (o ociCase) upper() []byte {
	var xs []byte
	if o.entry != '-' {
		xs = append(xs, o.entry)
	}
	return append(xs, o.items...)
}

// canonical orders the upper members as the image-spec recommends and as
// every unpacker gets right: whiteouts first, then parents before their
// children, hard links last (the entry's before the link to it).
func (o ociCase) canonical() []byte {
	var xs []byte
	for _, group := range []string{"WOK", "FDSCBG", "HL"} {
		for _, x := range o.upper() {
			if strings.IndexByte(group, x) >= 0 && !(x == 'F' && o.entry != 'F') && !(x == 'S' && o.entry != 'S') && !(x == 'D' && o.entry != 'D') {
				xs = append(xs, x)
			}
		}
	}
	// FDSCBG is already in path order: p, p/new, p/sub/, p/sub/new2.
	return xs
}

// refused reports whether kiln refuses the case, whatever the order of
// its upper layer: a member below the layer's own non-directory p; a
// whiteout in p, or a member below p, where p is a lower non-directory
// the layer neither whites out nor makes a directory; a hard link to a p
// that ends a directory or nothing.
func (o ociCase) refused() bool {
	below := o.has('O') || o.has('K') || o.has('C') || o.has('B') || o.has('G')
	entryFile := o.entry == 'F' || o.entry == 'S' || o.entry == 'H'
	layerDir := o.entry == 'D' || o.has('C') || o.has('B') || o.has('G')
	lowerFile := o.lower == 'F' || o.lower == 'S'
	switch {
	case entryFile && below:
		return true
	case (o.has('O') || o.has('K')) && lowerFile && !layerDir:
		return true
	case (o.has('C') || o.has('B') || o.has('G')) && o.entry != 'D' && !o.has('W') && lowerFile:
		return true
	}
	if o.has('L') {
		switch {
		case entryFile:
		case layerDir, o.has('W'):
			return true
		case !lowerFile:
			return true
		}
	}
	return false
}

// extractorTime lists the case's directories whose time the unpacker
// makes: p and p/sub where the layer has members below them and none for
// them, and lower layers left none (umoci makes them with MkdirAll); and
// the directory holding each of those, which umoci restores the time of
// only when it holds the member itself.
func (o ociCase) extractorTime(c string) []string {
	var out []string
	pLower := (o.lower == 'E' || o.lower == 'D') && !o.has('W')
	if o.entry != 'D' && (o.has('C') || o.has('B') || o.has('G')) && !pLower {
		out = append(out, c, c+"/p")
	}
	if o.has('G') && !o.has('B') && !(pLower && o.lower == 'D' && !o.has('O')) {
		out = append(out, c+"/p", c+"/p/sub")
	}
	return out
}

// ociCases returns every case: each lower, each entry, each subset of
// ociItems.
func ociCases() []ociCase {
	var out []ociCase
	for _, lower := range []byte("-FSED") {
		for _, entry := range []byte("-FDSH") {
			for set := 0; set < 1<<len(ociItems); set++ {
				var items []byte
				for i := range ociItems {
					if set&(1<<i) != 0 {
						items = append(items, ociItems[i])
					}
				}
				out = append(out, ociCase{lower, entry, string(items)})
			}
		}
	}
	return out
}

// orders returns the orders the test applies a case's upper layer in:
// every one of up to max members (at most 4), else the canonical, its
// reverse and others drawn with a seed, max! of them at most.
func orders(o ociCase, seed uint64, max int) [][]byte {
	canon := o.canonical()
	if len(canon) <= max {
		return permutations(canon)
	}
	rev := append([]byte(nil), canon...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	out := [][]byte{canon, rev}
	r := rand.New(rand.NewPCG(seed, 0x6c6179657273))
	seen := map[string]bool{string(canon): true, string(rev): true}
	for n := len(permutations([]byte(ociItems[:max]))); len(out) < n; {
		p := append([]byte(nil), canon...)
		r.Shuffle(len(p), func(i, j int) { p[i], p[j] = p[j], p[i] })
		if !seen[string(p)] {
			seen[string(p)] = true
			out = append(out, p)
		}
	}
	return out
}

func permutations(xs []byte) [][]byte {
	if len(xs) <= 1 {
		return [][]byte{append([]byte(nil), xs...)}
	}
	var out [][]byte
	for i := range xs {
		rest := append(append([]byte(nil), xs[:i]...), xs[i+1:]...)
		for _, p := range permutations(rest) {
			out = append(out, append([]byte{xs[i]}, p...))
		}
	}
	return out
}

// applyLayers applies tar streams as OCI layers to a new tree, in process.
func applyLayers(sp *source.Spool, layers ...[]byte) (*tree.Tree, error) {
	t := tree.New(time.Unix(noClamp, 0))
	for i, l := range layers {
		if err := sp.ApplyTar(t, bytes.NewReader(l), source.LayerOptions{Name: fmt.Sprintf("layer %d", i), Rules: source.OCILayer}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// TestLayersOCIMatrix: every case of ociCases, its upper layer in every
// order (up to 24 of them). umoci unpacks the cases kiln accepts, in the
// canonical order, as one image; kiln gives the same tree for each case
// in every order, in process, and in the image it builds from one image
// holding each case in three orders (canonical, reversed, shuffled).
// Every order of a case kiln refuses is refused, naming the layer and a
// member, as an input error.
func TestLayersOCIMatrix(t *testing.T) {
	dir := t.TempDir()
	cases := ociCases()
	name := func(i int) string { return fmt.Sprintf("o%04d", i) }
	// umoci's trees of the accepted cases.
	var lower, upper []member
	var accepted []int
	var seqs []string
	for i, o := range cases {
		seqs = append(seqs, o.String())
		if o.refused() {
			continue
		}
		accepted = append(accepted, i)
		lower = append(lower, o.lowerMembers(name(i))...)
		for _, x := range o.canonical() {
			upper = append(upper, o.upperMember(name(i), x))
		}
	}
	want := umociTree(t, writeOCI(t, filepath.Join(dir, "umoci"), tarOf(t, lower...), tarOf(t, upper...)))
	// Every order, in process, the cases spread over the CPUs: up to 24
	// orders of an accepted case, up to 6 of a refused one.
	var applied, refusals atomic.Int64
	spools := t.TempDir()
	work := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				o, c := cases[i], name(i)
				sp, err := source.NewSpool(spools)
				if err != nil {
					t.Error(err)
					continue
				}
				n, r := ociInProcess(t, sp, want, o, c, uint64(i))
				applied.Add(n)
				refusals.Add(r)
				sp.Close()
			}
		}()
	}
	for i := range cases {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("%d cases (%d accepted), %d upper layers applied in process (%d refused)", len(cases), len(accepted), applied.Load(), refusals.Load())
	if t.Failed() {
		return
	}
	// Three orders of each accepted case in the image kiln builds.
	lower, upper = nil, nil
	var implied []string
	for _, i := range accepted {
		o := cases[i]
		all := orders(o, uint64(i), 4)
		for v, order := range [][]byte{all[0], all[len(all)/2], all[len(all)-1]} {
			c := fmt.Sprintf("%s-%d", name(i), v)
			lower = append(lower, o.lowerMembers(c)...)
			for _, x := range order {
				upper = append(upper, o.upperMember(c, x))
			}
			implied = append(implied, o.extractorTime(c)...)
		}
	}
	writeOCI(t, filepath.Join(dir, "img"), tarOf(t, lower...), tarOf(t, upper...))
	got := kilnLarge(t, dir, "oci:img:v1")
	for _, i := range accepted {
		w, _ := want.Sub(name(i))
		for v := 0; v < 3; v++ {
			c := fmt.Sprintf("%s-%d", name(i), v)
			g, err := got.Sub(c)
			if err != nil {
				t.Errorf("%s (%v): %v", c, cases[i], err)
				continue
			}
			if err := equalCase(w, g, c, cases[i].extractorTime(c)); err != nil {
				t.Errorf("%s (%v): kiln's image: %v\numoci:\n%skiln:\n%s", c, cases[i], err, listing(w), listing(g))
			}
		}
	}
}

// ociInProcess applies case o (directory c) in its orders, in process,
// and checks each against umoci's tree (want) or the refusal. It returns
// how many orders it applied and how many were refused.
func ociInProcess(t *testing.T, sp *source.Spool, want *tree.Tree, o ociCase, c string, seed uint64) (applied, refused int64) {
	low := tarOf(t, o.lowerMembers(c)...)
	var w *tree.Tree
	all := orders(o, seed, 3)
	if !o.refused() {
		var err error
		if w, err = want.Sub(c); err != nil {
			t.Errorf("%s (%v): umoci made no %s: %v", c, o, c, err)
			return 0, 0
		}
		all = orders(o, seed, 4)
	}
	for _, order := range all {
		var ms []member
		for _, x := range order {
			ms = append(ms, o.upperMember(c, x))
		}
		got, err := applyLayers(sp, low, tarOf(t, ms...))
		applied++
		if o.refused() {
			refused++
			switch {
			case err == nil:
				t.Errorf("%s (%v), order %s: kiln accepts it", c, o, order)
			case !errors.Is(err, source.ErrUnsupported) && !errors.Is(err, tree.ErrBadPath):
				t.Errorf("%s (%v), order %s: not an input error: %v", c, o, order, err)
			case !strings.HasPrefix(err.Error(), "layer 1: entry \""+c+"/"):
				t.Errorf("%s (%v), order %s: the error names neither the layer nor a member: %v", c, o, order, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s (%v), order %s: %v", c, o, order, err)
			continue
		}
		g, err := got.Sub(c)
		if err != nil {
			t.Errorf("%s (%v), order %s: %v", c, o, order, err)
			continue
		}
		if err := equalCase(w, g, c, o.extractorTime(c)); err != nil {
			t.Errorf("%s (%v), order %s: %v\numoci:\n%skiln:\n%s", c, o, order, err, listing(w), listing(g))
		}
	}
	return applied, refused
}

// equalCase compares a case's tree from the oracle (want) with kiln's
// (got, whose directory is c), the times of the directories in
// extractorTime (c or paths under it) aside: got takes want's.
func equalCase(want, got *tree.Tree, c string, extractorTime []string) error {
	for _, p := range extractorTime {
		rel := strings.TrimPrefix(strings.TrimPrefix(p, c), "/")
		w, err1 := want.Lookup(rel)
		g, err2 := got.Lookup(rel)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("%s: oracle %v, kiln %v", rel, err1, err2)
		}
		g.Mtime = w.Mtime
	}
	return treetest.Equal(want, got, treetest.CompareOptions{})
}

// largeLayout is sourceLayout with USR slots large enough for the
// matrices' thousands of directories.
const largeLayout = `name: layers-tests
alignment: 1MiB
partitions:
  - {number: 1, label: EFI-SYSTEM, type: esp, size: 40MiB, filesystem: vfat}
  - {number: 2, label: BIOS-BOOT, type: bios-boot, size: 1MiB}
  - {number: 3, label: USR-A, type: coreos-usr, size: 384MiB, filesystem: ext4, slot: {priority: 1, successful: true}}
  - {number: 4, label: USR-B, type: coreos-usr, size: 384MiB}
  - {number: 6, label: OEM, type: linux-data, size: 16MiB, filesystem: ext4}
  - {number: 9, label: ROOT, type: coreos-resize, size: rest, min-size: 16MiB, filesystem: ext4}
`

// kilnLarge is kilnUSR on largeLayout.
func kilnLarge(t *testing.T, dir, src string) *tree.Tree {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "large.yaml"), []byte(largeLayout), 0o644); err != nil {
		t.Fatal(err)
	}
	recipe := filepath.Join(dir, "large-recipe.yaml")
	body := "name: layers-test\nversion: 1.0.0\nlayout: large.yaml\npartitions:\n  USR-A:\n    source: " + src + "\n  OEM: {}\n  ROOT: {}\n"
	if err := os.WriteFile(recipe, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out-large")
	mustBuild(t, recipe, out, noClamp)
	got, err := source.FromDir(mountPartition(t, out, "USR-A"))
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Remove("lost+found"); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestLayersOCIDuplicates: a layer with two members for one path, of any
// two kinds, however spelled, is refused naming both: the image-spec
// forbids it ("MUST NOT include duplicate entries") and dockerd refuses
// such a layer; umoci and containerd apply both in turn, so the result
// would depend on the unpacker.
func TestLayersOCIDuplicates(t *testing.T) {
	kinds := map[byte]member{
		'F': fileM("c/p", "file"),
		'D': dirM("c/p/"),
		'S': {name: "c/p", typ: tar.TypeSymlink, link: "f0"},
		'H': {name: "c/p", typ: tar.TypeLink, link: "c/f0"},
		'P': {name: "c/p", typ: tar.TypeFifo},
	}
	type pair struct{ a, b member }
	var pairs []pair
	for _, x := range []byte("FDSHP") {
		for _, y := range []byte("FDSHP") {
			pairs = append(pairs, pair{kinds[x], kinds[y]})
		}
	}
	pairs = append(pairs,
		pair{dirM("c/p/"), dirM("./c/p")},
		pair{fileM("c/.wh.p", ""), fileM("c/.wh.p", "")},
		pair{fileM("c/p/.wh..wh..opq", ""), fileM("./c/p/.wh..wh..opq", "")},
		pair{dirM("./"), dirM("/")},
	)
	lower := tarOf(t, dirM("c/"), fileM("c/f0", "f0"), dirM("c/p/"))
	sp, err := source.NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	for _, p := range pairs {
		for _, order := range [][2]member{{p.a, p.b}, {p.b, p.a}} {
			_, err := applyLayers(sp, lower, tarOf(t, fileM("c/x", "x"), order[0], order[1]))
			if !errors.Is(err, source.ErrConflict) || !strings.Contains(err.Error(), fmt.Sprintf("layer 1: entry %q (member 3): ", order[1].name)) ||
				!strings.Contains(err.Error(), fmt.Sprintf("member 2 has the same path (%q)", order[0].name)) {
				t.Errorf("%q (%c) then %q (%c): %v", order[0].name, order[0].typ, order[1].name, order[1].typ, err)
			}
		}
	}
	dir := t.TempDir()
	writeOCI(t, filepath.Join(dir, "img"), lower, tarOf(t, dirM("c/p/"), fileM("c/p", "file")))
	mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    source: oci:img:v1\n  OEM: {}\n  ROOT: {}\n"), filepath.Join(dir, "out"), noClamp,
		"img:v1: layer 1 (sha256:", `entry "c/p" (member 2)`, `member 1 has the same path ("c/p/")`, "forbids")
}

// TestLayersRoot: members for the root. In a tarball, GNU tar applies
// the last root member's metadata alone (every member lies below the
// root, so it never applies an earlier one's), xattrs included; a root
// member that is not a directory GNU tar refuses, and kiln too. In a
// layer, the root takes the member's attributes, and an opaque marker at
// the top hides everything lower layers hold, as umoci makes them.
func TestLayersRoot(t *testing.T) {
	t.Run("tar", func(t *testing.T) {
		dir := t.TempDir()
		first := dirM("./", "user.a", "1")
		first.mode, first.uid = 0o700, 3
		second := dirM("./", "user.b", "2")
		second.mode, second.uid, second.mtime = 0o750, 4, layerTime.Add(time.Hour)
		tarball := filepath.Join(dir, "usr.tar")
		if err := os.WriteFile(tarball, tarOf(t, first, fileM("x", "x"), second), 0o644); err != nil {
			t.Fatal(err)
		}
		out, code, msg := gnuTar(t, tarball, dir)
		if code != 0 {
			t.Fatalf("GNU tar: %s", msg)
		}
		want, err := source.FromDir(out)
		if err != nil {
			t.Fatal(err)
		}
		got := kilnUSR(t, dir, "tar:usr.tar")
		if err := treetest.Equal(want, got, treetest.CompareOptions{}); err != nil || len(got.Root.Xattrs) != 1 {
			t.Errorf("the root: %v\nGNU tar:\n%skiln:\n%s", err, listing(want), listing(got))
		}

		if err := os.WriteFile(tarball, tarOf(t, fileM("x", "x"), fileM(".", "not a directory")), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, code, msg := gnuTar(t, tarball, dir); code == 0 || !strings.Contains(msg, ".: Cannot open: File exists") {
			t.Errorf("GNU tar takes a file for the root: exit %d, %s", code, msg)
		}
		mustRefuse(t, writeRecipe(t, dir, "  USR-A:\n    source: tar:usr.tar\n  OEM: {}\n  ROOT: {}\n"), filepath.Join(dir, "out2"), noClamp,
			tarball, `entry "." (member 2)`, "in place of the root directory")
	})
	t.Run("layers", func(t *testing.T) {
		dir := t.TempDir()
		first := dirM("./", "user.a", "1")
		first.mode, first.uid = 0o700, 3
		second := dirM("./", "user.b", "2")
		second.mode, second.uid, second.mtime = 0o750, 4, layerTime.Add(time.Hour)
		img := writeOCI(t, filepath.Join(dir, "img"),
			tarOf(t, first, fileM("x", "x"), dirM("d/"), fileM("d/y", "y")),
			tarOf(t, second, fileM("z", "z"), fileM(".wh..wh..opq", "")))
		want := umociTree(t, img)
		got := kilnUSR(t, dir, "oci:img:v1")
		if err := treetest.Equal(want, got, treetest.CompareOptions{}); err != nil || len(got.Root.Entries) != 1 {
			t.Errorf("the root: %v\numoci:\n%skiln:\n%s", err, listing(want), listing(got))
		}
	})
}

// acrossOps are what one layer of TestLayersOCIAcrossLayers does to p in
// its case's directory c: '-' nothing, F a file, S a symlink to f0, H a
// hard link to f0, D a directory with a file of the layer's, O that
// directory made opaque, W the whiteout .wh.p.
const acrossOps = "-FSHDOW"

// acrossLayer returns layer l (from 0) of a case: op at p (layer 0 also
// makes c and f0).
func acrossLayer(c string, l int, op byte) []member {
	var ms []member
	if l == 0 {
		ms = append(ms, dirM(c+"/"), fileM(c+"/f0", "f0"))
	}
	at := layerTime.Add(time.Duration(l) * time.Hour)
	x := map[string]string{"user.layer": fmt.Sprint(l)}
	switch op {
	case 'F':
		ms = append(ms, member{name: c + "/p", typ: tar.TypeReg, body: fmt.Sprintf("layer %d", l), mode: 0o640, uid: l, mtime: at, xattrs: x})
	case 'S':
		ms = append(ms, member{name: c + "/p", typ: tar.TypeSymlink, link: "f0", uid: l, mtime: at})
	case 'H':
		ms = append(ms, member{name: c + "/p", typ: tar.TypeLink, link: c + "/f0"})
	case 'D', 'O':
		if op == 'O' {
			ms = append(ms, fileM(c+"/p/.wh..wh..opq", ""))
		}
		ms = append(ms, member{name: c + "/p/", typ: tar.TypeDir, mode: 0o750, uid: l, mtime: at, xattrs: x},
			member{name: fmt.Sprintf("%s/p/x%d", c, l), typ: tar.TypeReg, body: fmt.Sprint(l), mtime: at})
	case 'W':
		ms = append(ms, fileM(c+"/.wh.p", ""))
	}
	return ms
}

// TestLayersOCIAcrossLayers: every sequence of three layers' acrossOps
// at one name (343 cases), each layer in the canonical order (whiteouts
// first) and reversed: kiln's tree, in process and in the image it
// builds, equals umoci's.
func TestLayersOCIAcrossLayers(t *testing.T) {
	dir := t.TempDir()
	var cases []string
	for _, a := range acrossOps {
		for _, b := range acrossOps {
			for _, c := range acrossOps {
				cases = append(cases, string([]rune{a, b, c}))
			}
		}
	}
	name := func(i, v int) string { return fmt.Sprintf("x%03d-%d", i, v) }
	reverse := func(ms []member) []member {
		out := append([]member(nil), ms...)
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
		return out
	}
	var layers [3][]member // umoci: canonical order
	var kilnLayers [3][]member
	for i, ops := range cases {
		for l := range 3 {
			layers[l] = append(layers[l], acrossLayer(name(i, 0), l, ops[l])...)
			for v := range 2 {
				ms := acrossLayer(name(i, v), l, ops[l])
				if v == 1 {
					ms = reverse(ms)
				}
				kilnLayers[l] = append(kilnLayers[l], ms...)
			}
		}
	}
	want := umociTree(t, writeOCI(t, filepath.Join(dir, "umoci"), tarOf(t, layers[0]...), tarOf(t, layers[1]...), tarOf(t, layers[2]...)))
	writeOCI(t, filepath.Join(dir, "img"), tarOf(t, kilnLayers[0]...), tarOf(t, kilnLayers[1]...), tarOf(t, kilnLayers[2]...))
	image := kilnLarge(t, dir, "oci:img:v1")
	spools := t.TempDir()
	for i, ops := range cases {
		w, err := want.Sub(name(i, 0))
		if err != nil {
			t.Fatal(err)
		}
		sp, err := source.NewSpool(spools)
		if err != nil {
			t.Fatal(err)
		}
		for v := range 2 {
			var streams [][]byte
			for l := range 3 {
				ms := acrossLayer(name(i, 0), l, ops[l])
				if v == 1 {
					ms = reverse(ms)
				}
				streams = append(streams, tarOf(t, ms...))
			}
			got, err := applyLayers(sp, streams...)
			if err != nil {
				t.Errorf("layers %s, order %d, in process: %v", ops, v, err)
				continue
			}
			g, _ := got.Sub(name(i, 0))
			if err := equalCase(w, g, "", nil); err != nil {
				t.Errorf("layers %s, order %d, in process: %v\numoci:\n%skiln:\n%s", ops, v, err, listing(w), listing(g))
			}
			if g, err = image.Sub(name(i, v)); err != nil {
				t.Fatal(err)
			}
			if err := equalCase(w, g, "", nil); err != nil {
				t.Errorf("layers %s, order %d, image: %v\numoci:\n%skiln:\n%s", ops, v, err, listing(w), listing(g))
			}
		}
		sp.Close()
	}
}
