package test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

// twoReleases builds release 1.0.0 from a random tree and 1.1.0 from the
// same tree with files changed, added, removed and renamed; it returns the
// two output directories and the RSA key name.
func twoReleases(t *testing.T, dir string) (string, string, string) {
	t.Helper()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	v1 := treetest.Random(31, treetest.Options{Files: 400, MaxSize: 512 << 10, HighIDs: true, Xattrs: true})
	v2 := treetest.Random(31, treetest.Options{Files: 400, MaxSize: 512 << 10, HighIDs: true, Xattrs: true})
	n := 0
	var paths []string
	v2.Walk(func(p string, in *tree.Inode) error {
		if in.Type == tree.Regular && in.Size > 1000 {
			paths = append(paths, p)
		}
		return nil
	})
	for i, p := range paths {
		switch i % 10 {
		case 0: // changed in place: a few bytes edited
			in, _ := v2.Lookup(p)
			rc, _ := in.Content.Open()
			b, _ := io.ReadAll(rc)
			rc.Close()
			copy(b[len(b)/3:], []byte("release 1.1.0 changed this"))
			in2 := *in
			in2.Content = tree.Bytes(b)
			v2.Put(p, &in2)
			n++
		case 1:
			v2.Remove(p)
		case 2: // renamed
			in, _ := v2.Lookup(p)
			v2.Remove(p)
			v2.Put(p+".renamed", in)
		}
	}
	for i := range 20 {
		b := make([]byte, 20000+i*3000)
		for j := range b {
			b[j] = byte(j*i + j/7)
		}
		v2.Put(fmt.Sprintf("new/added-%02d.bin", i), &tree.Inode{Type: tree.Regular, Perm: 0o644, Mtime: treetest.Epoch, Size: int64(len(b)), Content: tree.Bytes(b)})
	}
	if n == 0 {
		t.Fatal("nothing changed")
	}
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
    source: dir:usr%d
  ROOT: {}
`, i, i+1)), 0o644)
		out := filepath.Join(dir, fmt.Sprintf("out%d", i+1))
		if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", recipe, "-o", out, "--sign", key+".key"); r.code != 0 {
			t.Fatalf("build: %s", r.stderr)
		}
		outs = append(outs, out)
	}
	return outs[0], outs[1], key
}

func sha256File(t *testing.T, path string, off, size int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, size)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// peakRSS runs kiln with args and returns its peak RSS in bytes, as GNU
// time reports it. (The rusage of a child of the test process itself
// would count the test process's own pages: Go starts children with
// vfork, and exec keeps the old memory's high-water mark.)
func peakRSS(t *testing.T, args ...string) int64 {
	t.Helper()
	return peakRSSEnv(t, nil, args...)
}

func TestDeltaPayloadUpdatesPassiveSlot(t *testing.T) {
	dir := t.TempDir()
	out1, out2, key := twoReleases(t, dir)
	delta := filepath.Join(dir, "delta.payload")
	full := filepath.Join(dir, "full.payload")
	if rss := peakRSS(t, "payload", "generate", "--from", out1, "--to", out2, "-o", delta, "--key", key+".key"); rss > 512<<20 {
		t.Errorf("generate peak RSS %d MiB", rss>>20)
	}
	mustRun(t, kiln, "payload", "generate", "--to", out2, "-o", full, "--key", key+".key", "--client", "kiln", "--compression", "zstd")
	dst, _ := os.Stat(delta)
	fst, _ := os.Stat(full)
	t.Logf("delta %d bytes, full %d bytes", dst.Size(), fst.Size())
	if dst.Size() >= fst.Size()/2 {
		t.Errorf("delta %d bytes is not much smaller than the full payload (%d)", dst.Size(), fst.Size())
	}

	// inspect: version, kinds of operations, signature status.
	var s struct {
		Kind            string `json:"kind"`
		SignatureStatus string `json:"signature_status"`
		Partitions      []struct {
			Version    string `json:"version"`
			OldVersion string `json:"old_version"`
			OpsByType  []struct {
				Type  string `json:"type"`
				Count int    `json:"count"`
			} `json:"operations_by_type"`
		} `json:"partitions"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, kiln, "payload", "inspect", "--json", delta, "--key", key+".pub")), &s); err != nil {
		t.Fatal(err)
	}
	types := map[string]int{}
	for _, o := range s.Partitions[0].OpsByType {
		types[o.Type] = o.Count
	}
	if s.Kind != "delta" || s.SignatureStatus != "valid" || s.Partitions[0].Version != "1.1.0" || s.Partitions[0].OldVersion != "1.0.0" ||
		types["SOURCE_COPY"] == 0 || types["SOURCE_BSDIFF"] == 0 {
		t.Errorf("inspect: %+v", s)
	}
	// update_engine's own checker is not available here; the magic and
	// header fields are, by hand: "CrAU", major version 2 big-endian.
	head := make([]byte, 12)
	f, _ := os.Open(delta)
	f.Read(head)
	f.Close()
	if string(head[:4]) != "CrAU" || head[11] != 2 {
		t.Errorf("header % x", head)
	}

	// Apply the delta to release 1's disk.
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(out1, "disk.img"), disk)
	m1 := readManifest(t, out1)
	usrA, usrB := m1.Partition("USR-A"), m1.Partition("USR-B")
	before := sha256File(t, disk, usrA.Offset, usrA.Size)
	if rss := peakRSS(t, "payload", "apply", delta, "--disk", disk, "--key", key+".pub"); rss > 512<<20 {
		t.Errorf("apply peak RSS %d MiB", rss>>20)
	}
	// The passive slot is now release 2's USR, byte for byte.
	want := sha256File(t, filepath.Join(out2, "usr.img"), 0, usrB.Size)
	if got := sha256File(t, disk, usrB.Offset, usrB.Size); got != want {
		t.Errorf("USR-B after apply: sha256 %s, want release 2's usr.img %s", got, want)
	}
	if after := sha256File(t, disk, usrA.Offset, usrA.Size); after != before {
		t.Error("the active slot USR-A changed")
	}
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 1, 0} {
		t.Errorf("cgpt USR-B %v, want priority 2 tries 1 successful 0", got)
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{1, 0, 1} {
		t.Errorf("cgpt USR-A %v", got)
	}
	sgdiskClean(t, disk)
	// Applying again before the reboot rewrites the slot on trial, never
	// USR-A, which is still the slot that booted successfully.
	mustRun(t, kiln, "payload", "apply", delta, "--disk", disk, "--key", key+".pub")
	if got := sha256File(t, disk, usrB.Offset, usrB.Size); got != want {
		t.Error("USR-B after a second apply differs")
	}
	if after := sha256File(t, disk, usrA.Offset, usrA.Size); after != before {
		t.Error("a second apply wrote USR-A")
	}
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 1, 0} {
		t.Errorf("cgpt USR-B after a second apply %v", got)
	}
	// The slot verifies against release 2's signed manifest, independently.
	if r := run(t, kiln, "slot", "verify", disk, "USR-B", "--manifest", filepath.Join(out2, "manifest.json"), "--key", key+".pub"); r.code != 0 {
		t.Errorf("slot verify: %s%s", r.stdout, r.stderr)
	}
	// The boot: GRUB's gptprio lowers USR-B's tries, then the booted
	// system marks it good; then the full payload back to USR-A is a
	// reinstall of 1.1.0 into the now passive slot.
	mustRun(t, "cgpt", "add", "-i", "4", "-T", "0", disk)
	mustRun(t, kiln, "slot", "mark-good", disk, "USR-B")
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 0, 1} {
		t.Errorf("after mark-good USR-B %v", got)
	}
	mustRun(t, kiln, "payload", "apply", full, "--disk", disk, "--key", key+".pub")
	if got := sha256File(t, disk, usrA.Offset, usrA.Size); got != want {
		t.Error("full payload into USR-A: wrong bytes")
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{3, 1, 0} {
		t.Errorf("after the full payload USR-A %v, want [3 1 0]", got)
	}
}

func TestPayloadRefusals(t *testing.T) {
	dir := t.TempDir()
	out1, out2, key := twoReleases(t, dir)
	delta := filepath.Join(dir, "delta.payload")
	mustRun(t, kiln, "payload", "generate", "--from", out1, "--to", out2, "-o", delta, "--key", key+".key")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", filepath.Join(dir, "other"))

	// A downgrade is refused when generating and when applying.
	down := filepath.Join(dir, "down.payload")
	if r := run(t, kiln, "payload", "generate", "--from", out2, "--to", out1, "-o", down, "--key", key+".key"); r.code != 1 || !strings.Contains(r.stderr, "downgrade refused") {
		t.Errorf("downgrade generate: %+v", r)
	}
	if _, err := os.Stat(down); err == nil {
		t.Error("a refused generate left a payload behind")
	}
	mustRun(t, kiln, "payload", "generate", "--from", out2, "--to", out1, "-o", down, "--key", key+".key", "--allow-downgrade")
	disk2 := filepath.Join(dir, "disk2.img")
	copyFile(t, filepath.Join(out2, "disk.img"), disk2)
	if r := run(t, kiln, "payload", "apply", down, "--disk", disk2, "--key", key+".pub"); r.code != 1 || !strings.Contains(r.stderr, "1.0.0 is older than 1.1.0") {
		t.Errorf("downgrade apply: %+v", r)
	}
	if r := run(t, kiln, "payload", "apply", down, "--disk", disk2, "--key", key+".pub", "--allow-downgrade"); r.code != 0 {
		t.Errorf("downgrade apply with --allow-downgrade: %+v", r)
	}

	// Each of these fails before the disk is written: the disk stays
	// byte-identical.
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(out1, "disk.img"), disk)
	pristine := filepath.Join(dir, "pristine.img")
	copyFile(t, disk, pristine)
	trunc := filepath.Join(dir, "trunc.payload")
	b, _ := os.ReadFile(delta)
	os.WriteFile(trunc, b[:len(b)-100], 0o644) // into the signatures
	garbled := filepath.Join(dir, "garbled.payload")
	g := append([]byte(nil), b...)
	g[len(g)-150] ^= 0xff // inside the signature
	os.WriteFile(garbled, g, 0o644)
	magic := filepath.Join(dir, "magic.payload")
	os.WriteFile(magic, append([]byte("CrAX"), b[4:]...), 0o644)
	// A malformed payload is bad input (exit 2); one that fails its
	// signature is a failed check (exit 1).
	cases := []struct {
		name, payload, key, want string
		code                     int
	}{
		{"wrong key", delta, filepath.Join(dir, "other.pub"), "signature does not verify (metadata)", 1},
		{"truncated", trunc, key + ".pub", "does not fill the 167 bytes after the data", 2},
		{"garbled", garbled, key + ".pub", "signature does not verify (payload)", 1},
		{"wrong magic", magic, key + ".pub", "magic", 2},
	}
	for _, c := range cases {
		r := run(t, kiln, "payload", "apply", c.payload, "--disk", disk, "--key", c.key)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q, want %d and %q", c.name, r.code, r.stderr, c.code, c.want)
		}
		if rr := run(t, "cmp", "-s", disk, pristine); rr.code != 0 {
			t.Fatalf("%s: the disk was written", c.name)
		}
	}

	// A delta for another source: release 1 → 2 applied to a disk whose
	// booted slot holds release 2. Refused before anything is written.
	copyFile(t, filepath.Join(out2, "disk.img"), disk2)
	mustRun(t, "cgpt", "add", "-i", "4", "-P", "0", "-T", "0", "-S", "1", disk2)
	copyFile(t, disk2, pristine)
	r := run(t, kiln, "payload", "apply", delta, "--disk", disk2, "--key", key+".pub")
	if r.code != 1 || !strings.Contains(r.stderr, "is a delta from 1.0.0, but the booted slot USR-A holds 1.1.0") {
		t.Errorf("wrong source: %+v", r)
	}
	if rr := run(t, "cmp", "-s", disk2, pristine); rr.code != 0 {
		t.Error("a refused apply changed the disk")
	}
	if got := cgptSlot(t, disk2, 3); got != [3]int{1, 0, 1} {
		t.Errorf("after a refused apply USR-A %v", got)
	}
}
