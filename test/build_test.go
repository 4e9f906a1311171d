package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
	"github.com/kiln-os/kiln/internal/treetest"
)

// kilnEnv runs kiln with extra environment variables.
func kilnEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(kiln, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{o.String(), e.String(), code}
}

func readManifest(t *testing.T, dir string) *manifest.Manifest {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := manifest.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// extract copies a partition's bytes out of a disk image into its own file.
func extract(t *testing.T, disk string, p *manifest.Partition) string {
	t.Helper()
	in, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out := filepath.Join(t.TempDir(), p.Label+".img")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Copy the data extents only: the partitions are mostly holes.
	if err := f.Truncate(p.Size); err != nil {
		t.Fatal(err)
	}
	fd := int(in.Fd())
	for off := p.Offset; off < p.Offset+p.Size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil || data >= p.Offset+p.Size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		hole = min(hole, p.Offset+p.Size)
		if _, err := io.Copy(io.NewOffsetWriter(f, data-p.Offset), io.NewSectionReader(in, data, hole-data)); err != nil {
			t.Fatal(err)
		}
		off = hole
	}
	return out
}

// usrRecipe writes a recipe building USR from a host tree and returns its path.
func usrRecipe(t *testing.T, dir, usrSource, fs string) string {
	t.Helper()
	recipe := filepath.Join(dir, "recipe.yaml")
	body := fmt.Sprintf(`name: test
version: 2.0.1
channel: beta
partitions:
  EFI-SYSTEM:
    files:
      - {path: /EFI/BOOT/BOOTX64.EFI, content: "not really an EFI binary"}
      - {path: /loader/entries/kiln.conf, content: "title kiln\n"}
  USR-A:
    filesystem: %s
    source: %s
  OEM:
    files:
      - {path: /grub.cfg, content: "set linux_append=\"\"\n", mode: "0600", uid: 500}
  ROOT: {}
`, fs, usrSource)
	if err := os.WriteFile(recipe, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return recipe
}

// checkImage runs the standard tools over every partition of a build.
func checkImage(t *testing.T, out string) *manifest.Manifest {
	t.Helper()
	disk := filepath.Join(out, "disk.img")
	m := readManifest(t, out)
	sgdiskClean(t, disk)
	for i := range m.Partitions {
		p := &m.Partitions[i]
		switch p.Filesystem {
		case "ext4":
			img := extract(t, disk, p)
			if r := run(t, "e2fsck", "-fn", img); r.code != 0 {
				t.Errorf("e2fsck -fn %s: exit %d\n%s%s", p.Label, r.code, r.stdout, r.stderr)
			}
		case "vfat":
			img := extract(t, disk, p)
			if r := run(t, "fsck.vfat", "-n", img); r.code != 0 {
				t.Errorf("fsck.vfat -n %s: exit %d\n%s%s", p.Label, r.code, r.stdout, r.stderr)
			}
		}
		if p.Verity != nil {
			img := extract(t, disk, p)
			r := run(t, "veritysetup", "verify", img, img, p.Verity.RootHash, fmt.Sprintf("--hash-offset=%d", p.Verity.HashOffset))
			if r.code != 0 {
				t.Errorf("veritysetup verify %s: exit %d %s", p.Label, r.code, r.stderr)
			}
			// usr.img is the same bytes as the partition.
			mustRun(t, "cmp", img, filepath.Join(out, "usr.img"))
		}
	}
	return m
}

// hostTree makes a random tree on the host and returns it and its path.
func hostTree(t *testing.T, seed uint64, o treetest.Options) (*tree.Tree, string) {
	t.Helper()
	want := treetest.Random(seed, o)
	dir := filepath.Join(t.TempDir(), "usr")
	if err := treetest.WriteHost(dir, want); err != nil {
		t.Fatal(err)
	}
	// Compare against what the host holds (the source kiln reads).
	got, err := source.FromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return got, dir
}

func TestBuildExt4CheckedByStandardTools(t *testing.T) {
	want, usr := hostTree(t, 11, treetest.Options{Files: 300, MaxSize: 2 << 20, Devices: true, Xattrs: true, HighIDs: true, LongName: true})
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", usrRecipe(t, dir, "dir:"+usr, "ext4"), "-o", out)
	if r.code != 0 {
		t.Fatalf("build: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	m := checkImage(t, out)
	if m.Name != "test" || m.Version != "2.0.1" || m.Channel != "beta" || m.SourceDateEpoch != 1700000000 || len(m.Partitions) != 7 {
		t.Errorf("manifest %+v", m)
	}
	usrA := m.Partition("USR-A")
	if usrA.Verity == nil || usrA.Verity.HashOffset != 260094*4096 || usrA.Filesystem != "ext4" {
		t.Fatalf("USR-A %+v", usrA)
	}
	// The USR tree read back by debugfs equals the source.
	img := extract(t, filepath.Join(out, "disk.img"), usrA)
	dump := filepath.Join(t.TempDir(), "dump")
	os.Mkdir(dump, 0o755)
	mustRun(t, "debugfs", "-R", "rdump / "+dump, img)
	got, err := source.FromDir(dump)
	if err != nil {
		t.Fatal(err)
	}
	// debugfs rdump restores content, modes, owners, times, symlinks and
	// device nodes, but not hard links, xattrs, special mode bits or
	// nanoseconds (the ext4 package checks those with debugfs stat); it adds
	// lost+found.
	got.Remove("lost+found")
	if err := treetest.Equal(want, got, treetest.CompareOptions{IgnoreDirTime: true, IgnoreXattrs: true, IgnoreHardLinks: true, PermMask: 0o777, TimeGranularity: 1e9,
		SkipTypes: []tree.Type{tree.CharDevice, tree.BlockDevice, tree.FIFO, tree.Socket}}); err != nil {
		t.Errorf("USR tree differs from its source: %v", err)
	}
	// rdump drops setuid, setgid and sticky bits; ask debugfs for those
	// modes directly.
	special := 0
	want.Walk(func(p string, n *tree.Inode) error {
		if n.Perm&0o7000 != 0 {
			special++
			if st := mustRun(t, "debugfs", "-R", "stat /"+p, img); !strings.Contains(st, fmt.Sprintf("Mode:  0%o", n.Perm)) {
				t.Errorf("%s: want mode %05o: %.80s", p, n.Perm, st)
			}
		}
		return nil
	})
	// rdump skips device nodes, fifos and sockets: stat them.
	nodes := 0
	want.Walk(func(p string, n *tree.Inode) error {
		var wantText string
		switch n.Type {
		case tree.CharDevice, tree.BlockDevice:
			wantText = fmt.Sprintf("Device major/minor number: %02d:%02d ", n.Major, n.Minor)
		case tree.FIFO:
			wantText = "Type: FIFO"
		case tree.Socket:
			wantText = "Type: socket"
		default:
			return nil
		}
		nodes++
		if st := mustRun(t, "debugfs", "-R", "stat /"+p, img); !strings.Contains(st, wantText) || !strings.Contains(st, fmt.Sprintf("Mode:  0%o", n.Perm)) {
			t.Errorf("%s: want %q and mode %05o: %.200s", p, wantText, n.Perm, st)
		}
		return nil
	})
	if nodes < 5 {
		t.Errorf("only %d device/fifo/socket nodes checked", nodes)
	}
	if special == 0 {
		t.Error("the test tree has no setuid/setgid/sticky modes to check")
	}
	// Hard links and xattrs, asked of debugfs directly.
	links := map[*tree.Inode][]string{}
	want.Walk(func(p string, n *tree.Inode) error {
		if n.Type == tree.Regular {
			links[n] = append(links[n], p)
		}
		return nil
	})
	checked := 0
	for n, names := range links {
		if len(names) < 2 {
			continue
		}
		a := mustRun(t, "debugfs", "-R", "stat /"+names[0], img)
		b := mustRun(t, "debugfs", "-R", "stat /"+names[1], img)
		if inode(a) == "" || inode(a) != inode(b) || !strings.Contains(a, fmt.Sprintf("Links: %d", len(names))) {
			t.Errorf("hard link %v: %q vs %q", names, inode(a), inode(b))
		}
		if len(n.Xattrs) > 0 {
			ea := mustRun(t, "debugfs", "-R", "ea_list /"+names[0], img)
			if !strings.Contains(ea, n.Xattrs[0].Name) {
				t.Errorf("xattr %s of %s missing: %s", n.Xattrs[0].Name, names[0], ea)
			}
		}
		checked++
	}
	if checked == 0 {
		t.Error("the test tree has no hard links to check")
	}
	// The OEM file the recipe placed, with its mode and owner.
	oem := extract(t, filepath.Join(out, "disk.img"), m.Partition("OEM"))
	st := mustRun(t, "debugfs", "-R", "stat /grub.cfg", oem)
	if !strings.Contains(st, "Mode:  0600") || !strings.Contains(st, "User:   500") {
		t.Errorf("OEM grub.cfg: %s", st)
	}
	// The ESP files, by mtools.
	esp := extract(t, filepath.Join(out, "disk.img"), m.Partition("EFI-SYSTEM"))
	if dirOut := mustRun(t, "mdir", "-i", esp, "-b", "::/EFI/BOOT"); !strings.Contains(dirOut, "BOOTX64.EFI") {
		t.Errorf("mdir ESP: %s", dirOut)
	}
}

func inode(debugfsStat string) string {
	f := strings.Fields(debugfsStat)
	if len(f) > 1 && f[0] == "Inode:" {
		return f[1]
	}
	return ""
}

func TestBuildSquashfsCheckedByUnsquashfs(t *testing.T) {
	want, usr := hostTree(t, 12, treetest.Options{Files: 300, MaxSize: 1 << 20, Devices: true, Xattrs: true, HighIDs: true, LongName: true, BigDir: 600})
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", usrRecipe(t, dir, "dir:"+usr, "squashfs"), "-o", out); r.code != 0 {
		t.Fatalf("build: %d\n%s", r.code, r.stderr)
	}
	m := checkImage(t, out)
	usrA := m.Partition("USR-A")
	if usrA.Filesystem != "squashfs" || usrA.Verity == nil {
		t.Fatalf("USR-A %+v", usrA)
	}
	img := extract(t, filepath.Join(out, "disk.img"), usrA)
	dump := filepath.Join(t.TempDir(), "dump")
	if r := run(t, "unsquashfs", "-d", dump, img); r.code != 0 {
		t.Fatalf("unsquashfs: %s %s", r.stdout, r.stderr)
	}
	got, err := source.FromDir(dump)
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(want, got, treetest.CompareOptions{IgnoreDirTime: true, TimeGranularity: 1e9}); err != nil {
		t.Errorf("unsquashfs tree differs from the source: %v", err)
	}
}

func TestBuildReproducible(t *testing.T) {
	_, usr := hostTree(t, 13, treetest.Options{Files: 100, MaxSize: 256 << 10, Xattrs: true})
	dir := t.TempDir()
	recipe := usrRecipe(t, dir, "dir:"+usr, "squashfs")
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	env := []string{"SOURCE_DATE_EPOCH=1700000000"}
	for _, out := range []string{a, b} {
		if r := kilnEnv(t, env, "build", recipe, "-o", out); r.code != 0 {
			t.Fatalf("build: %s", r.stderr)
		}
	}
	for _, f := range []string{"disk.img", "usr.img", "manifest.json", "usr.blockmap.json"} {
		mustRun(t, "cmp", filepath.Join(a, f), filepath.Join(b, f))
	}
	// A different version gives a different image (seeded GUIDs), but the
	// same verity salt: deltas between releases then carry only the hash
	// blocks whose data changed.
	c := filepath.Join(dir, "c")
	if r := kilnEnv(t, env, "build", recipe, "-o", c, "--set", "version=2.0.2"); r.code != 0 {
		t.Fatalf("build: %s", r.stderr)
	}
	if m := readManifest(t, c); m.Version != "2.0.2" || m.DiskGUID == readManifest(t, a).DiskGUID || m.Partition("USR-A").Verity.Salt != readManifest(t, a).Partition("USR-A").Verity.Salt {
		t.Errorf("--set version did not change the build: %+v", m)
	}
}

func TestBuildFailuresLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	// A source that does not exist: exit 2 (bad input), no output directory.
	r := kilnEnv(t, nil, "build", usrRecipe(t, dir, "dir:does-not-exist", "ext4"), "-o", out)
	if r.code != 2 || !strings.Contains(r.stderr, "partitions.USR-A.source: dir:does-not-exist") {
		t.Errorf("missing source: %+v", r)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("failed build left %s behind", out)
	}
	// A tree too large for the partition: exit 1, and an earlier build's
	// output in OUTDIR stays as it was.
	small := filepath.Join(dir, "small")
	os.MkdirAll(small, 0o755)
	os.WriteFile(filepath.Join(small, "f"), []byte("small"), 0o644)
	if r := kilnEnv(t, nil, "build", "-q", usrRecipe(t, dir, "dir:"+small, "ext4"), "-o", out); r.code != 0 {
		t.Fatal(r.stderr)
	}
	before, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	big := filepath.Join(dir, "big")
	os.MkdirAll(big, 0o755)
	f, _ := os.Create(filepath.Join(big, "huge"))
	f.Truncate(1100 << 20) // sparse, but a file of 1.1 GiB does not fit a 1 GiB slot
	f.Close()
	r = kilnEnv(t, nil, "build", usrRecipe(t, dir, "dir:"+big, "ext4"), "-o", out)
	if r.code != 1 || !strings.Contains(r.stderr, "USR-A") {
		t.Errorf("oversized USR: %+v", r)
	}
	entries, _ := os.ReadDir(out)
	after, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	if len(entries) != 6 || string(after) != string(before) { // disk.img, usr.img, usr.blockmap.json, manifest.json, two SBOMs
		t.Errorf("a failed build changed OUTDIR: %v", entries)
	}
	// Recipe errors name the file, line and key, exit 2.
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("name: x\nversion: 1.0.0\npartitions:\n  USR-A:\n    filesytem: ext4\n"), 0o644)
	r = kilnEnv(t, nil, "build", bad, "-o", out)
	if r.code != 2 || !strings.Contains(r.stderr, "recipe "+bad+":5: partitions.USR-A.filesytem: unknown key") {
		t.Errorf("unknown key: %+v", r)
	}
	os.WriteFile(bad, []byte("name: x\nversion: 1.0.0\npartitions:\n  USR-C:\n    filesystem: ext4\n"), 0o644)
	r = kilnEnv(t, nil, "build", bad, "-o", out)
	if r.code != 2 || !strings.Contains(r.stderr, ":4: partitions.USR-C: layout coreos has no partition labelled") {
		t.Errorf("unknown partition: %+v", r)
	}
}

// TestBuildMemoryBounded: a build whose USR holds a 300 MiB file keeps
// kiln's peak RSS well under 512 MiB (content is streamed, never held).
func TestBuildMemoryBounded(t *testing.T) {
	dir := t.TempDir()
	usr := filepath.Join(dir, "usr")
	os.MkdirAll(usr, 0o755)
	f, _ := os.Create(filepath.Join(usr, "big.bin"))
	buf := make([]byte, 1<<20)
	for i := range 300 {
		for j := range buf {
			buf[j] = byte(i*7 + j*13)
		}
		f.Write(buf)
	}
	f.Close()
	rss := peakRSS(t, "build", usrRecipe(t, dir, "dir:"+usr, "ext4"), "-o", filepath.Join(dir, "out"))
	t.Logf("peak RSS %d MiB", rss>>20)
	if rss > 512<<20 {
		t.Errorf("peak RSS %d MiB, want < 512 MiB", rss>>20)
	}
}

func TestBuildJSONSummary(t *testing.T) {
	dir := t.TempDir()
	r := kilnEnv(t, nil, "build", "--json", "../recipes/demo.yaml", "-o", filepath.Join(dir, "out"))
	if r.code != 0 {
		t.Fatalf("%s", r.stderr)
	}
	var s struct {
		Disk   string `json:"disk"`
		Stages []struct {
			Name string `json:"name"`
		} `json:"stages"`
		Image manifest.Manifest `json:"image"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatal(err)
	}
	if s.Image.Name != "demo" || len(s.Stages) < 4 || !strings.HasSuffix(s.Disk, "disk.img") {
		t.Errorf("summary %+v", s)
	}
	if r.stderr != "" {
		t.Errorf("--json build printed to stderr: %q", r.stderr)
	}
}

// TestBuildReproducibleSigned: a signed build is bit-identical to its
// rebuild with every key type kiln makes (the slot's release record inside
// disk.img carries the signature, so one random ECDSA nonce would change
// the disk and manifest.json.sig), and so is a `kiln sign` of one file.
// openssl checks each ECDSA and RSA signature.
func TestBuildReproducibleSigned(t *testing.T) {
	dir := t.TempDir()
	usr := filepath.Join(dir, "usr")
	os.MkdirAll(filepath.Join(usr, "bin"), 0o755)
	os.WriteFile(filepath.Join(usr, "bin", "hello"), []byte("#!/bin/sh\necho hello\n"), 0o755)
	recipe := usrRecipe(t, dir, "dir:"+usr, "ext4")
	env := []string{"SOURCE_DATE_EPOCH=1700000000"}
	for _, typ := range []string{"rsa-2048", "rsa-3072", "ecdsa-p256", "ed25519"} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			key := filepath.Join(dir, typ)
			mustRun(t, kiln, "keygen", "--type", typ, "-o", key)
			var outs []string
			for i := range 2 {
				out := filepath.Join(dir, fmt.Sprintf("%s-%d", typ, i))
				if r := kilnEnv(t, env, "build", "-q", recipe, "-o", out, "--sign", key+".key"); r.code != 0 {
					t.Fatalf("build: %s", r.stderr)
				}
				outs = append(outs, out)
			}
			for _, f := range []string{"disk.img", "usr.img", "manifest.json", "manifest.json.sig", "sbom.spdx.json", "sbom.cdx.json", "provenance.intoto.json"} {
				if r := run(t, "cmp", filepath.Join(outs[0], f), filepath.Join(outs[1], f)); r.code != 0 {
					t.Errorf("%s differs between two signed builds: %s", f, r.stdout)
				}
			}
			file := filepath.Join(dir, typ+".txt")
			os.WriteFile(file, []byte("release notes\n"), 0o644)
			var sigs [][]byte
			for range 2 {
				mustRun(t, kiln, "sign", file, "--key", key+".key")
				b, err := os.ReadFile(file + ".sig")
				if err != nil {
					t.Fatal(err)
				}
				sigs = append(sigs, b)
			}
			if !bytes.Equal(sigs[0], sigs[1]) {
				t.Errorf("kiln sign gave two signatures for one file: %q, %q", sigs[0], sigs[1])
			}
			if typ == "ed25519" {
				return
			}
			raw := filepath.Join(dir, typ+".sig.bin")
			mustRun(t, "sh", "-c", "base64 -d "+filepath.Join(outs[0], "manifest.json.sig")+" > "+raw)
			mustRun(t, "openssl", "dgst", "-sha256", "-verify", key+".pub", "-signature", raw, filepath.Join(outs[0], "manifest.json"))
		})
	}
}
