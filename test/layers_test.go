package test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
}

// tarOf writes members as a PAX tar stream.
func tarOf(t *testing.T, ms ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Typeflag: m.typ, Linkname: m.link, Mode: m.mode, Uid: m.uid,
			ModTime: m.mtime, Format: tar.FormatPAX}
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
