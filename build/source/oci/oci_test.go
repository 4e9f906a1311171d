package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.podman.io/image/v5/types"

	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
)

var epoch = time.Unix(1700000000, 0)

type entry struct {
	name     string
	typ      byte
	body     string
	link     string
	mode     int64
	uid, gid int
	xattrs   map[string]string
	major    int64
}

func tarBytes(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			ModTime: epoch.Add(123456789), Linkname: e.link, Size: int64(len(e.body)), Format: tar.FormatPAX, Devmajor: e.major, Devminor: 7}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// writeOCILayout writes an OCI image layout with one gzip layer per entry
// list, tagged "v1", and returns its directory.
func writeOCILayout(t *testing.T, layers ...[]entry) string {
	t.Helper()
	var raws [][]byte
	for _, l := range layers {
		raws = append(raws, tarBytes(t, l))
	}
	return writeOCILayoutRaw(t, raws...)
}

// writeOCILayoutRaw is writeOCILayout for layers given as tar streams.
func writeOCILayoutRaw(t *testing.T, raws ...[]byte) string {
	t.Helper()
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	os.MkdirAll(blobs, 0o755)
	put := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		os.WriteFile(filepath.Join(blobs, h), b, 0o644)
		return "sha256:" + h, len(b)
	}
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	var layerDescs []desc
	var diffIDs []string
	for _, raw := range raws {
		sum := sha256.Sum256(raw)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(raw)
		zw.Close()
		d, n := put(gz.Bytes())
		layerDescs = append(layerDescs, desc{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: d, Size: n})
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	cd, cn := put(cfg)
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cd, Size: cn}, "layers": layerDescs})
	md, mn := put(man)
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []desc{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: mn, Annotations: map[string]string{"org.opencontainers.image.ref.name": "v1"}}}})
	os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return dir
}

// noPolicy isolates a test from the machine's containers configuration:
// HOME is an empty directory, $CONTAINERS_POLICY_JSON and
// $XDG_CONFIG_HOME are unset, and the returned system context moves the
// system configuration root (/etc/containers, /usr/share/containers) to
// another empty directory. No policy.json exists anywhere, as on a fresh
// machine, whatever this machine has.
func noPolicy(t *testing.T) *types.SystemContext {
	t.Helper()
	t.Setenv("HOME", t.TempDir())
	for _, k := range []string{"XDG_CONFIG_HOME", "CONTAINERS_POLICY_JSON"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	return &types.SystemContext{RootForImplicitAbsolutePaths: t.TempDir()}
}

// load reads an image with no signature policy anywhere.
func load(t *testing.T, sp *source.Spool, spec string) (*Image, error) {
	t.Helper()
	return fromImage(context.Background(), sp, spec, Options{Mtime: epoch, Log: quietLog()}, noPolicy(t))
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func read(t *testing.T, n *tree.Inode) string {
	t.Helper()
	if n.Content == nil {
		return ""
	}
	rc, err := n.Content.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

func TestOCILayersWhiteoutsOpaque(t *testing.T) {
	lower := []entry{
		{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/keep", typ: tar.TypeReg, body: "keep", mode: 0o755, uid: 100000, gid: 70000},
		{name: "usr/bin/gone", typ: tar.TypeReg, body: "gone"},
		{name: "usr/bin/hard", typ: tar.TypeLink, link: "usr/bin/keep"},
		{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/lib/old1", typ: tar.TypeReg, body: "old1"},
		{name: "usr/lib/old2", typ: tar.TypeReg, body: "old2"},
		{name: "usr/share/x", typ: tar.TypeReg, body: "replaced later"},
		{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1},
		{name: "usr/bin/sh", typ: tar.TypeSymlink, link: "/usr/bin/busybox"},
		{name: "usr/bin/cap", typ: tar.TypeReg, body: "c", xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02", "user.k": "v"}},
	}
	upper := []entry{
		{name: "usr/bin/.wh.gone", typ: tar.TypeReg},
		{name: "usr/lib/new", typ: tar.TypeReg, body: "new"},
		{name: "usr/lib/.wh..wh..opq", typ: tar.TypeReg},
		{name: "usr/share/x", typ: tar.TypeReg, body: "upper"},
	}
	dir := writeOCILayout(t, lower, upper)
	sp, err := source.NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	img, err := load(t, sp, "oci:"+dir+":v1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(img.Digest, "sha256:") || len(img.Layers) != 2 {
		t.Errorf("digest %q layers %v", img.Digest, img.Layers)
	}
	tr := img.Tree
	if _, err := tr.Lookup("usr/bin/gone"); !errors.Is(err, tree.ErrNotExist) {
		t.Errorf("whiteout did not remove usr/bin/gone: %v", err)
	}
	lib, _ := tr.Lookup("usr/lib")
	if len(lib.Entries) != 1 || lib.Entries[0].Name != "new" {
		t.Errorf("opaque usr/lib holds %v, want only new", lib.Entries)
	}
	keep, _ := tr.Lookup("usr/bin/keep")
	hard, _ := tr.Lookup("usr/bin/hard")
	if keep != hard || read(t, keep) != "keep" || keep.UID != 100000 || keep.GID != 70000 || keep.Perm != 0o755 {
		t.Errorf("keep/hard: %+v %p %p", keep, keep, hard)
	}
	if !keep.Mtime.Equal(epoch.Add(123456789)) {
		t.Errorf("mtime %v lost nanoseconds", keep.Mtime)
	}
	x, _ := tr.Lookup("usr/share/x")
	if read(t, x) != "upper" {
		t.Errorf("usr/share/x = %q", read(t, x))
	}
	null, _ := tr.Lookup("dev/null")
	if null.Type != tree.CharDevice || null.Major != 1 || null.Minor != 7 {
		t.Errorf("dev/null %+v", null)
	}
	sh, _ := tr.Lookup("usr/bin/sh")
	if sh.Type != tree.Symlink || sh.Target != "/usr/bin/busybox" {
		t.Errorf("sh %+v", sh)
	}
	c, _ := tr.Lookup("usr/bin/cap")
	if len(c.Xattrs) != 2 || c.Xattrs[0].Name != "security.capability" || string(c.Xattrs[1].Value) != "v" {
		t.Errorf("xattrs %+v", c.Xattrs)
	}
}

func TestLayerEscapesAreErrors(t *testing.T) {
	cases := map[string][]entry{
		"dotdot":           {{name: "../etc/passwd", typ: tar.TypeReg, body: "x"}},
		"nested dotdot":    {{name: "usr/../../x", typ: tar.TypeReg, body: "x"}},
		"through symlink":  {{name: "evil", typ: tar.TypeSymlink, link: "/etc"}, {name: "evil/passwd", typ: tar.TypeReg, body: "x"}},
		"hardlink outside": {{name: "h", typ: tar.TypeLink, link: "../../etc/shadow"}},
		"whiteout through": {{name: "evil", typ: tar.TypeSymlink, link: "/"}, {name: "evil/.wh.etc", typ: tar.TypeReg}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			dir := writeOCILayout(t, entries)
			sp, _ := source.NewSpool(t.TempDir())
			defer sp.Close()
			_, err := load(t, sp, "oci:"+dir+":v1")
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "layer 0 (sha256:") || !strings.Contains(err.Error(), "entry \"") {
				t.Errorf("error does not name the layer and entry: %v", err)
			}
		})
	}
}

func TestCorruptLayerDigest(t *testing.T) {
	dir := writeOCILayout(t, []entry{{name: "a", typ: tar.TypeReg, body: "a"}})
	// Append a byte to the layer blob: gzip ignores it, the digest does not.
	matches, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
			b[len(b)-5] ^= 0xff // inside the gzip trailer (CRC)
			os.WriteFile(m, b, 0o644)
		}
	}
	sp, _ := source.NewSpool(t.TempDir())
	defer sp.Close()
	if _, err := load(t, sp, "oci:"+dir+":v1"); err == nil {
		t.Fatal("corrupt layer accepted")
	}
}

// TestUmociImage reads an image made by umoci (a tool nobody here wrote):
// two layers, the second deleting a file.
func TestUmociImage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	umoci := func(args ...string) {
		t.Helper()
		cmd := exec.Command("umoci", args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("umoci %v: %v\n%s", args, err, out)
		}
	}
	umoci("init", "--layout", img)
	umoci("new", "--image", img+":v1")
	b1 := filepath.Join(dir, "b1")
	umoci("unpack", "--rootless", "--image", img+":v1", b1)
	os.MkdirAll(filepath.Join(b1, "rootfs/usr/bin"), 0o755)
	os.WriteFile(filepath.Join(b1, "rootfs/usr/bin/a"), []byte("hello"), 0o755)
	os.WriteFile(filepath.Join(b1, "rootfs/usr/bin/gone"), []byte("bye"), 0o644)
	umoci("repack", "--image", img+":v1", b1)
	b2 := filepath.Join(dir, "b2")
	umoci("unpack", "--rootless", "--image", img+":v1", b2)
	os.Remove(filepath.Join(b2, "rootfs/usr/bin/gone"))
	umoci("repack", "--image", img+":v2", b2)

	sp, _ := source.NewSpool(t.TempDir())
	defer sp.Close()
	im, err := load(t, sp, "oci:"+img+":v2")
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Layers) != 2 {
		t.Errorf("%d layers", len(im.Layers))
	}
	a, err := im.Tree.Lookup("usr/bin/a")
	if err != nil || read(t, a) != "hello" || a.Perm != 0o755 {
		t.Errorf("usr/bin/a: %v %+v", err, a)
	}
	if _, err := im.Tree.Lookup("usr/bin/gone"); err == nil {
		t.Error("umoci's whiteout was not applied")
	}
}

// TestSignaturePolicy: with no policy.json anywhere (a fresh machine) an
// image is read, through the exported FromImage too, with HOME an empty
// directory; a policy that exists is obeyed; a $CONTAINERS_POLICY_JSON
// naming a missing file is an error, not a silent accept-anything.
func TestSignaturePolicy(t *testing.T) {
	dir := writeOCILayout(t, []entry{{name: "a", typ: tar.TypeReg, body: "a"}})
	sp, err := source.NewSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	spec := "oci:" + dir + ":v1"

	t.Run("none anywhere", func(t *testing.T) {
		if _, err := load(t, sp, spec); err != nil {
			t.Fatalf("no policy.json anywhere: %v", err)
		}
	})
	t.Run("exported, empty HOME", func(t *testing.T) {
		noPolicy(t)
		if _, err := FromImage(context.Background(), sp, spec, Options{Mtime: epoch, Log: quietLog()}); err != nil {
			t.Fatalf("FromImage with HOME empty: %v", err)
		}
	})
	t.Run("reject policy obeyed", func(t *testing.T) {
		sys := noPolicy(t)
		conf := filepath.Join(os.Getenv("HOME"), ".config", "containers")
		if err := os.MkdirAll(conf, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(conf, "policy.json"), []byte(`{"default":[{"type":"reject"}]}`), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := fromImage(context.Background(), sp, spec, Options{Mtime: epoch, Log: quietLog()}, sys)
		if err == nil || !strings.Contains(err.Error(), "rejected by the signature policy") {
			t.Fatalf("reject-everything policy: err = %v", err)
		}
	})
	t.Run("explicit missing policy", func(t *testing.T) {
		sys := noPolicy(t)
		missing := filepath.Join(t.TempDir(), "policy.json")
		t.Setenv("CONTAINERS_POLICY_JSON", missing)
		_, err := fromImage(context.Background(), sp, spec, Options{Mtime: epoch, Log: quietLog()}, sys)
		if err == nil || !strings.Contains(err.Error(), "signature policy") || !strings.Contains(err.Error(), missing) {
			t.Fatalf("missing $CONTAINERS_POLICY_JSON file: err = %v", err)
		}
	})
}

// TestOCISparseLayer: a layer holding a GNU PAX sparse member (tar
// --sparse --format=posix) gives the file's content, and the next member
// its own; the raw stream (data runs, next header, next file) was taken
// for the content.
func TestOCISparseLayer(t *testing.T) {
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(3 << 20)
	f.WriteAt([]byte("data in the middle"), 1<<20)
	f.Close()
	os.WriteFile(filepath.Join(src, "next"), []byte("next file"), 0o644)
	out, err := exec.Command("tar", "--sparse", "--format=posix", "-cf", "-", "-C", src, "sparse", "next").Output()
	if err != nil {
		t.Fatalf("tar: %v", err)
	}
	sp, _ := source.NewSpool(t.TempDir())
	defer sp.Close()
	img, err := load(t, sp, "oci:"+writeOCILayoutRaw(t, out)+":v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sparse", "next"} {
		want, _ := os.ReadFile(filepath.Join(src, name))
		n, err := img.Tree.Lookup(name)
		if err != nil || read(t, n) != string(want) {
			t.Errorf("%s: %v, content equal: %v", name, err, err == nil && read(t, n) == string(want))
		}
	}
}

// TestOCIBudget: the layers of one image share the spool budget: two
// layers that each fit, but not together, are refused with
// source.ErrTooLarge naming the layer that crossed it.
func TestOCIBudget(t *testing.T) {
	big := strings.Repeat("z", 600<<10)
	dir := writeOCILayout(t, []entry{{name: "a", typ: tar.TypeReg, body: big}}, []entry{{name: "b", typ: tar.TypeReg, body: big}})
	sp, _ := source.NewSpool(t.TempDir())
	defer sp.Close()
	b := &source.Budget{Limit: 1 << 20, For: "test"}
	_, err := fromImage(context.Background(), sp, "oci:"+dir+":v1", Options{Mtime: epoch, Budget: b}, noPolicy(t))
	if !errors.Is(err, source.ErrTooLarge) || !strings.Contains(err.Error(), "layer 1") {
		t.Fatalf("err = %v, want ErrTooLarge in layer 1", err)
	}
	b = &source.Budget{Limit: 2 << 20, For: "test"}
	if _, err := fromImage(context.Background(), sp, "oci:"+dir+":v1", Options{Mtime: epoch, Budget: b}, noPolicy(t)); err != nil {
		t.Fatalf("within the budget: %v", err)
	}
}
