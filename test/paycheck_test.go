package test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-os/kiln/build/blockmap"
	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/internal/treetest"
)

// TestPaycheckAcceptsPayloads runs update_engine's reference checker,
// paycheck.py (AOSP update_engine, android-12.1, as `make deps` fetches
// it), on kiln's default payloads, full and delta, for an ext4 and a
// squashfs USR: it checks every manifest rule, the signatures against the
// public key, applies the payload with its own applier (REPLACE_XZ with
// Python's lzma, REPLACE_BZ with its bz2, SOURCE_BSDIFF with Debian's
// bspatch) and compares the result with the new usr.img. It must also
// refuse a payload with one data byte flipped and a payload checked
// against another key, and (to show the checker is the one that refuses
// what issue 11 found) a payload with ZSTD operations.
func TestPaycheckAcceptsPayloads(t *testing.T) {
	pc := newPaycheck(t)
	for _, fs := range []string{"ext4", "squashfs"} {
		t.Run(fs, func(t *testing.T) {
			dir := t.TempDir()
			key := filepath.Join(dir, "payload")
			mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
			other := filepath.Join(dir, "other")
			mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", other)
			out1, out2 := paycheckReleases(t, dir, fs, key)
			usr1, usr2 := filepath.Join(out1, "usr.img"), filepath.Join(out2, "usr.img")

			full := filepath.Join(dir, "full.payload")
			delta := filepath.Join(dir, "delta.payload")
			mustRun(t, kiln, "payload", "generate", "--to", out2, "-o", full, "--key", key+".key")
			mustRun(t, kiln, "payload", "generate", "--from", out1, "--to", out2, "-o", delta, "--key", key+".key")
			for _, p := range []string{full, delta} {
				st, _ := os.Stat(p)
				t.Logf("%s: %d bytes", filepath.Base(p), st.Size())
				if fs == "ext4" {
					requireX86Filter(t, p)
				}
			}

			pc.accept(t, full, key+".pub", "full", "", usr2)
			pc.accept(t, delta, key+".pub", "delta", usr1, usr2)
			// xz-max: the LZMA2 encoder's optimal parser.
			xzMax := filepath.Join(dir, "xz-max.payload")
			mustRun(t, kiln, "payload", "generate", "--from", out1, "--to", out2, "-o", xzMax, "--key", key+".key", "--compression", "xz-max")
			pc.accept(t, xzMax, key+".pub", "delta", usr1, usr2)
			// REPLACE_BZ, the other compression every update_engine reads.
			bz2 := filepath.Join(dir, "bz2.payload")
			mustRun(t, kiln, "payload", "generate", "--from", out1, "--to", out2, "-o", bz2, "--key", key+".key", "--compression", "bz2")
			pc.accept(t, bz2, key+".pub", "delta", usr1, usr2)

			// One flipped byte in the data of an operation: its hash fails.
			for _, p := range []string{full, delta} {
				bad := filepath.Join(dir, "flipped-"+filepath.Base(p))
				copyFile(t, p, bad)
				flip(t, bad, dataByte(t, bad))
				kind, src := "full", ""
				if p == delta {
					kind, src = "delta", usr1
				}
				pc.reject(t, bad, key+".pub", kind, src, usr2, "Error: ", "data_sha256_hash", "does not match actual hash")
			}
			// The right payload, the wrong public key: the checker's
			// `openssl rsautl -verify` fails (bad padding, or a signature
			// larger than the other key's modulus).
			pc.reject(t, full, other+".pub", "full", "", usr2, "'rsautl', '-verify'", "RSA operation error")
			pc.reject(t, delta, other+".pub", "delta", usr1, usr2, "'rsautl', '-verify'", "RSA operation error")
			// ZSTD operations are for clients that know them; android-12.1
			// reads type 14 as REPLACE and fails its length rule.
			zstd := filepath.Join(dir, "zstd.payload")
			mustRun(t, kiln, "payload", "generate", "--to", out2, "-o", zstd, "--key", key+".key", "--client", "kiln", "--compression", "zstd")
			pc.reject(t, zstd, key+".pub", "full", "", usr2, "Error: ", "REPLACE")
		})
	}
}

// TestX86FilterPayloads: x86 programs in a release go into REPLACE_XZ
// data behind xz's x86 BCJ filter for the client families that decode it
// (paycheck.py's applier among them, see TestPaycheckAcceptsPayloads),
// and kiln's own applier installs such payloads, full and delta (it
// checks the written partition's hash), with the encoder's fast parser
// (--compression xz) and its optimal one (xz-max). For the chromiumos
// family the filter is not used.
func TestX86FilterPayloads(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "payload")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	out1, out2 := paycheckReleases(t, dir, "ext4", key)
	for i, from := range []string{"", out1, out1} {
		p := filepath.Join(dir, "x86.payload")
		args := []string{"payload", "generate", "--to", out2, "-o", p, "--key", key + ".key"}
		if from != "" {
			args = append(args, "--from", from)
		}
		if i == 2 {
			args = append(args, "--compression", "xz-max")
		}
		mustRun(t, kiln, args...)
		requireX86Filter(t, p)
		disk := filepath.Join(dir, "apply.img")
		copyFile(t, filepath.Join(out1, "disk.img"), disk)
		mustRun(t, kiln, "payload", "apply", p, "--disk", disk, "--key", key+".pub")
		mustRun(t, kiln, append(args, "--client", "chromiumos")...)
		if out := mustRun(t, kiln, "payload", "inspect", p); !strings.Contains(out, "chromiumos    applies it") {
			t.Errorf("--client chromiumos: the payload is not for chromiumos clients:\n%s", out)
		}
	}
}

// requireX86Filter fails unless the payload has REPLACE_XZ data behind
// xz's x86 BCJ filter, which `payload inspect` tells by the one client
// family that cannot apply it.
func requireX86Filter(t *testing.T, path string) {
	t.Helper()
	var s struct {
		Clients []struct {
			Client string `json:"client"`
			Why    string `json:"why_not"`
		} `json:"clients"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, kiln, "payload", "inspect", "--json", path)), &s); err != nil {
		t.Fatal(err)
	}
	for _, c := range s.Clients {
		if strings.Contains(c.Why, "x86 BCJ") {
			return
		}
	}
	t.Fatalf("%s: no REPLACE_XZ operation uses the x86 BCJ filter: %+v", filepath.Base(path), s.Clients)
}

// TestPaycheckClientComputedTree: a delta whose verity tree the client
// computes (hash_tree_* fields) is minor version 6 and passes the checker's
// manifest and signature checks; paycheck's own applier computes no tree,
// so applying it ends in a partition hash mismatch — why such payloads are
// only for clients that compute the tree, and not kiln's default.
func TestPaycheckClientComputedTree(t *testing.T) {
	pc := newPaycheck(t)
	dir := t.TempDir()
	signKey := filepath.Join(dir, "build")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", signKey)
	out1, out2 := paycheckReleases(t, dir, "ext4", signKey)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(dir, "payload.pub")
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	oldImg, newImg := releaseImage(t, out1), releaseImage(t, out2)
	v := readManifest(t, out2).Partitions
	var ver *payload.Verity
	for _, p := range v {
		if p.Verity != nil && p.Label == "USR-A" {
			root, _ := hex.DecodeString(p.Verity.RootHash)
			salt, _ := hex.DecodeString(p.Verity.Salt)
			ver = &payload.Verity{DataBlocks: p.Verity.DataBlocks, HashOffset: p.Verity.HashOffset, Salt: salt, RootHash: root,
				TreeBlocks: uint64(verity.HashTreeSize(p.Verity.DataBlocks)/payload.BlockSize) - 1}
		}
	}
	if ver == nil {
		t.Fatal("no USR-A verity in the manifest")
	}
	plan, err := payload.NewPlan(context.Background(), payload.Config{Old: oldImg, New: *newImg, OldVersion: "1.0.0", NewVersion: "1.1.0",
		Verity: ver, VerityTree: payload.VerityTreeByClient, TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Close()
	if plan.MinorVersion != payload.VerityMinorVersion {
		t.Fatalf("minor version %d", plan.MinorVersion)
	}
	path := filepath.Join(dir, "tree-by-client.payload")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := payload.Write(f, plan, payload.RSASigner{Key: key}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	usr1, usr2 := filepath.Join(out1, "usr.img"), filepath.Join(out2, "usr.img")
	pc.accept(t, path, pub, "delta", "", "")
	pc.reject(t, path, pub, "delta", usr1, usr2, "Error: ", "new usr hash", "not as expected")
}

// paycheck runs update_engine's paycheck.py with Debian's python3.
type paycheck struct {
	script  string // paycheck.py
	bspatch string // the wrapper that applies bspatch to extents
}

// paycheckTree is the git tree id of the update_engine scripts/ directory
// that `make deps` fetches (the Makefile's UPDATE_ENGINE_TREE).
const paycheckTree = "552df1d635aabfdeb0bb739c5adec93dd731fd63"

func newPaycheck(t *testing.T) *paycheck {
	t.Helper()
	script := os.Getenv("KILN_PAYCHECK")
	if script == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			t.Fatal(err)
		}
		script = filepath.Join(cache, "kiln", "update_engine-"+paycheckTree, "scripts", "paycheck.py")
	}
	if why := os.Getenv("KILN_PAYCHECK_UNAVAILABLE"); why != "" && !fileExists(script) {
		// make deps could not reach the AOSP sources (a machine without
		// that network): the one test kiln cannot run there. It says so.
		t.Skipf("SKIPPED: %s; paycheck.py is not available on this machine", why)
	}
	if !fileExists(script) {
		t.Fatalf("update_engine's paycheck.py is not at %s (`make deps` fetches it; KILN_PAYCHECK names another)", script)
	}
	for _, tool := range []string{"/usr/bin/python3", "/usr/bin/bspatch", "openssl"} {
		if r := run(t, tool, "-h"); r.stdout+r.stderr == "" {
			t.Fatalf("%s printed nothing", tool)
		}
	}
	if r := run(t, "/usr/bin/python3", "-c", "import google.protobuf, lzma, bz2"); r.code != 0 {
		t.Fatalf("python3-protobuf is not installed (make test installs it): %s", r.stderr)
	}
	w := filepath.Join(t.TempDir(), "bspatch-extents")
	if err := os.WriteFile(w, []byte(bspatchWrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	return &paycheck{script: script, bspatch: w}
}

// bspatchWrapper gives Debian's bspatch (whole files only) the interface
// paycheck's applier calls: OLD NEW PATCH SRC_EXTENTS DST_EXTENTS, the
// extents as "offset:length,..." in bytes of the OLD and NEW files.
const bspatchWrapper = `#!/usr/bin/python3
import os, subprocess, sys, tempfile
old, new, patch = sys.argv[1:4]
if len(sys.argv) == 4:
    os.execv("/usr/bin/bspatch", ["bspatch", old, new, patch])
def extents(arg):
    return [tuple(int(x) for x in e.split(":")) for e in arg.split(",")]
src, dst = extents(sys.argv[4]), extents(sys.argv[5])
with tempfile.TemporaryDirectory() as d:
    inp, out = os.path.join(d, "old"), os.path.join(d, "new")
    with open(old, "rb") as f, open(inp, "wb") as w:
        for off, n in src:
            f.seek(off)
            w.write(f.read(n))
    subprocess.check_call(["/usr/bin/bspatch", inp, out, patch])
    with open(out, "rb") as f:
        data = f.read()
want = sum(n for _, n in dst)
if len(data) != want:
    sys.exit("bspatch-extents: the patch made %d bytes, the extents hold %d" % (len(data), want))
with open(new, "r+b") as f:
    pos = 0
    for off, n in dst:
        f.seek(off)
        f.write(data[pos:pos + n])
        pos += n
`

// args builds a paycheck command line: check against pub, as kind; apply
// (with src for a delta) and compare with dst when dst is set.
func (pc *paycheck) args(payloadPath, pub, kind, src, dst string) []string {
	a := []string{pc.script, payloadPath, "-k", pub, "-t", kind, "--part_names", payload.DefaultPartition}
	if dst != "" {
		a = append(a, "--bspatch-path", pc.bspatch, "--dst_part_paths", dst)
		if src != "" {
			a = append(a, "--src_part_paths", src)
		}
	}
	return a
}

func (pc *paycheck) accept(t *testing.T, payloadPath, pub, kind, src, dst string) {
	t.Helper()
	r := run(t, "/usr/bin/python3", pc.args(payloadPath, pub, kind, src, dst)...)
	if r.code != 0 {
		t.Fatalf("paycheck.py %s -t %s: exit %d\n%s%s", filepath.Base(payloadPath), kind, r.code, r.stdout, r.stderr)
	}
}

// reject runs paycheck, which must fail saying each of want (so that a
// crash of the checker for another reason does not pass for a refusal).
func (pc *paycheck) reject(t *testing.T, payloadPath, pub, kind, src, dst string, want ...string) {
	t.Helper()
	r := run(t, "/usr/bin/python3", pc.args(payloadPath, pub, kind, src, dst)...)
	if r.code == 0 {
		t.Fatalf("paycheck.py accepted %s (key %s)", filepath.Base(payloadPath), filepath.Base(pub))
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Fatalf("paycheck.py %s (key %s): exit %d without the expected error (%q)\n%s", filepath.Base(payloadPath), filepath.Base(pub), r.code, w, r.stderr)
		}
	}
	t.Logf("paycheck.py refuses %s (key %s): %s", filepath.Base(payloadPath), filepath.Base(pub), lastLine(r.stderr))
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// dataByte returns the offset of a byte in the middle of the first
// operation's data blob.
func dataByte(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	p, err := payload.Open(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range p.Partitions[0].Ops {
		if op.GetDataLength() > 0 {
			return p.DataOffset + int64(op.GetDataOffset()+op.GetDataLength()/2)
		}
	}
	t.Fatal("no operation has data")
	return 0
}

// paycheckReleases builds release 1.0.0 and 1.1.0 of a random USR tree
// with the given filesystem: files edited in place, removed, renamed and
// added between them. Both are signed with key.
func paycheckReleases(t *testing.T, dir, fs, key string) (string, string) {
	t.Helper()
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	opts := treetest.Options{Files: 250, MaxSize: 256 << 10, Xattrs: true}
	v1, v2 := treetest.Random(11, opts), treetest.Random(11, opts)
	var paths []string
	v2.Walk(func(p string, in *tree.Inode) error {
		if in.Type == tree.Regular && in.Size > 5000 {
			paths = append(paths, p)
		}
		return nil
	})
	for i, p := range paths {
		in, _ := v2.Lookup(p)
		switch i % 8 {
		case 0: // a few bytes edited
			rc, err := in.Content.Open()
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			copy(b[len(b)/2:], "release 1.1.0")
			in2 := *in
			in2.Content = tree.Bytes(b)
			v2.Put(p, &in2)
		case 1:
			v2.Remove(p)
		case 2:
			v2.Remove(p)
			v2.Put(p+".moved", in)
		}
	}
	for i := range 8 {
		b := make([]byte, 30000+i*7000)
		for j := range b {
			b[j] = byte(j*(i+3) + j/11)
		}
		v2.Put(fmt.Sprintf("lib/added-%d.so", i), &tree.Inode{Type: tree.Regular, Perm: 0o755, Mtime: treetest.Epoch, Size: int64(len(b)), Content: tree.Bytes(b)})
	}
	// A real x86-64 program, new in release 2: its blocks go into a
	// REPLACE_XZ behind xz's x86 BCJ filter (ext4; squashfs blocks are
	// compressed already).
	prog, err := os.ReadFile("/bin/bash")
	if err != nil {
		t.Fatal(err)
	}
	v2.Put("bin/bash", &tree.Inode{Type: tree.Regular, Perm: 0o755, Mtime: treetest.Epoch, Size: int64(len(prog)), Content: tree.Bytes(prog)})
	var outs []string
	for i, tr := range []*tree.Tree{v1, v2} {
		usr := filepath.Join(dir, fmt.Sprintf("usr%d", i+1))
		if err := treetest.WriteHost(usr, tr); err != nil {
			t.Fatal(err)
		}
		recipe := filepath.Join(dir, fmt.Sprintf("r%d.yaml", i+1))
		os.WriteFile(recipe, []byte(fmt.Sprintf(`name: rel
version: 1.%d.0
layout: small.yaml
partitions:
  EFI-SYSTEM:
    files: [{path: /EFI/BOOT/BOOTX64.EFI, content: "x"}]
  USR-A:
    filesystem: %s
    source: dir:usr%d
  ROOT: {}
`, i, fs, i+1)), 0o644)
		out := filepath.Join(dir, fmt.Sprintf("out%d", i+1))
		if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", recipe, "-o", out, "--sign", key+".key"); r.code != 0 {
			t.Fatalf("build %s: %s", fs, r.stderr)
		}
		outs = append(outs, out)
	}
	return outs[0], outs[1]
}

// releaseImage opens a build output's usr.img and block map as a planner
// input; the file stays open until the test ends.
func releaseImage(t *testing.T, out string) *payload.Image {
	t.Helper()
	f, err := os.Open(filepath.Join(out, "usr.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	img := &payload.Image{R: f, Size: st.Size()}
	bm, err := os.Open(filepath.Join(out, "usr.blockmap.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer bm.Close()
	if img.Map, err = blockmap.Read(bm); err != nil {
		t.Fatal(err)
	}
	return img
}
