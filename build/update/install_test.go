package update

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

const testLayout = `name: small
alignment: 1MiB
partitions:
  - {number: 1, label: EFI-SYSTEM, type: esp, size: 34MiB, filesystem: vfat}
  - {number: 3, label: USR-A, type: coreos-usr, size: 24MiB, filesystem: ext4, fs-size: 20MiB, verity: true, slot: {priority: 1, successful: true}}
  - {number: 4, label: USR-B, type: coreos-usr, size: 24MiB}
  - {number: 9, label: ROOT, type: coreos-resize, size: rest, min-size: 8MiB, filesystem: ext4}
`

// fixture is a key and releases built with it, in one directory.
type fixture struct {
	dir    string
	signer sign.Signer
	verify sign.Verifier
	rel    map[string]*Release // by version
}

// newFixture builds signed releases of the given versions; each one's
// /usr differs from the last in a few files.
func newFixture(t *testing.T, versions ...string) *fixture {
	t.Helper()
	dir := t.TempDir()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.NewSigner(priv, "test key")
	if err != nil {
		t.Fatal(err)
	}
	v, err := sign.NewVerifier(priv.Public(), "test key")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dir: dir, signer: s, verify: v, rel: map[string]*Release{}}
	os.WriteFile(filepath.Join(dir, "layout.yaml"), []byte(testLayout), 0o644)
	for i, ver := range versions {
		usr := filepath.Join(dir, "usr-"+ver)
		os.MkdirAll(filepath.Join(usr, "lib"), 0o755)
		for j := range 12 {
			b := make([]byte, 40000+j*1000)
			for k := range b {
				b[k] = byte(k*(j+1) + k/13)
			}
			if j < i*2 { // each release changes two more files
				copy(b[100:], fmt.Sprintf("release %s", ver))
			}
			os.WriteFile(filepath.Join(usr, "lib", fmt.Sprintf("f%02d", j)), b, 0o644)
		}
		os.WriteFile(filepath.Join(usr, "lib", "version"), []byte(ver+"\n"), 0o644)
		recipe := filepath.Join(dir, "r-"+ver+".yaml")
		os.WriteFile(recipe, []byte(fmt.Sprintf("name: t\nversion: %s\nlayout: layout.yaml\npartitions:\n  EFI-SYSTEM: {}\n  USR-A:\n    source: dir:usr-%s\n  ROOT: {}\n", ver, ver)), 0o644)
		r, err := build.LoadRecipe(recipe, nil)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "out-"+ver)
		if _, err := build.Build(context.Background(), r, build.Options{OutDir: out, SourceDateEpoch: time.Unix(1700000000, 0), Signer: s}); err != nil {
			t.Fatal(err)
		}
		if f.rel[ver], err = OpenRelease(out); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// payload generates a payload from (or full when from is "") to.
func (f *fixture) payload(t *testing.T, from, to string) string {
	t.Helper()
	out := filepath.Join(f.dir, fmt.Sprintf("%s-%s.payload", from, to))
	o := GenerateOptions{To: f.rel[to], Out: out, Signer: f.signer, AllowDowngrade: true}
	if from != "" {
		o.From = f.rel[from]
	}
	if _, err := Generate(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	return out
}

// disk copies a release's disk.img (sparse) to a new file.
func (f *fixture) disk(t *testing.T, ver string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "disk.img")
	copySparseFile(t, filepath.Join(f.rel[ver].Dir, build.DiskFile), dst)
	return dst
}

func copySparseFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	st, _ := in.Stat()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	out.Truncate(st.Size())
	buf := make([]byte, 1<<20)
	err = hashing.Extents(in, 0, st.Size(), func(off, n int64, hole bool) error {
		if hole {
			return nil
		}
		_, err := io.CopyBuffer(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, n), buf)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// errCrash is what a crashed device panics with: the process is gone.
var errCrash = errors.New("crash")

// faultyDisk passes writes to the file until a crash (the write at the cut
// is torn: its first half reaches the disk) or returns an I/O error for
// one write.
type faultyDisk struct {
	*os.File
	writes     int
	crashAfter int // crash at write crashAfter+1 (-1: never)
	failAt     int // this write fails with EIO (0: never)
	gptWrites  []int
	gptAreas   func(off int64) bool
}

var errEIO = errors.New("injected EIO")

func (d *faultyDisk) WriteAt(p []byte, off int64) (int, error) {
	d.writes++
	if d.gptAreas != nil && d.gptAreas(off) {
		d.gptWrites = append(d.gptWrites, d.writes)
	}
	if d.writes == d.failAt {
		return 0, errEIO
	}
	if d.crashAfter >= 0 && d.writes == d.crashAfter+1 {
		d.File.WriteAt(p[:len(p)/2], off)
		panic(errCrash)
	}
	return d.File.WriteAt(p, off)
}

// installWith runs install on disk through a faultyDisk; a crash returns
// errCrash.
func installWith(f *fixture, disk, pl string, fd *faultyDisk) (res *InstallResult, err error) {
	d, err := layout.OpenDiskForWriting(disk)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	fd.File = d.File
	defer func() {
		if r := recover(); r != nil {
			if r != errCrash {
				panic(r)
			}
			err = errCrash
		}
	}()
	return install(context.Background(), InstallOptions{Payload: pl, Disk: disk, Verifier: f.verify}, fd, d)
}

// checkNextIsGood requires the slot gptprio boots next to carry a valid
// signed release record and a whole dm-verity tree matching it, so the
// machine never boots garbage, and returns it and its version.
func checkNextIsGood(t *testing.T, f *fixture, disk, when string) (*layout.Entry, string) {
	t.Helper()
	d, err := layout.OpenDisk(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tb, err := d.ReadTable()
	if err != nil {
		t.Fatalf("%s: the disk has no readable GPT: %v", when, err)
	}
	next, _, err := slot.Next(tb)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	area := io.NewSectionReader(d, next.Offset(), next.Size())
	rec, err := slot.Read(area, next.Size())
	if err == nil {
		err = rec.Verify(f.verify)
	}
	if err != nil {
		t.Fatalf("%s: the next slot %s (%s) has no valid record: %v", when, next.Label, next.Slot(), err)
	}
	root, _ := rec.Record.Verity.Root()
	if _, err := verity.Verify(area, 0, rec.Record.Verity.HashOffset, root); err != nil {
		t.Fatalf("%s: the next slot %s (%s) fails verity: %v", when, next.Label, next.Slot(), err)
	}
	return next, rec.Record.Version
}

func isGPTArea(size int64) func(int64) bool {
	return func(off int64) bool { return off < 34*512 || off >= size-33*512 }
}

// TestInstallCrashAnywhere cuts the power at every GPT write of an
// install and at write points spread over the data, and fails each GPT
// write once with an I/O error: after each, the slot that boots next is a
// signed, verity-intact release, and running the install again completes
// it. Two starting points: a new disk (USR-B empty), and a disk that went
// 1.0.0 → 2.0.0 and was marked good, so the install overwrites USR-A, the
// old release still in the boot order.
func TestInstallCrashAnywhere(t *testing.T) {
	f := newFixture(t, "1.0.0", "2.0.0", "3.0.0")
	second := f.disk(t, "1.0.0")
	if _, err := Install(context.Background(), InstallOptions{Payload: f.payload(t, "1.0.0", "2.0.0"), Disk: second, Verifier: f.verify}); err != nil {
		t.Fatal(err)
	}
	markGood(t, tryBoot(t, second), second)
	scenarios := []struct {
		name, payload, target, version string
		start                          func(t *testing.T) string
	}{
		{"new disk, delta", f.payload(t, "1.0.0", "2.0.0"), "USR-B", "2.0.0", func(t *testing.T) string { return f.disk(t, "1.0.0") }},
		{"new disk, full", f.payload(t, "", "2.0.0"), "USR-B", "2.0.0", func(t *testing.T) string { return f.disk(t, "1.0.0") }},
		{"second update, delta into USR-A", f.payload(t, "2.0.0", "3.0.0"), "USR-A", "3.0.0", func(t *testing.T) string {
			d := filepath.Join(t.TempDir(), "disk.img")
			copySparseFile(t, second, d)
			return d
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			disk := sc.start(t)
			st, _ := os.Stat(disk)
			probe := &faultyDisk{crashAfter: -1, gptAreas: isGPTArea(st.Size())}
			if _, err := installWith(f, disk, sc.payload, probe); err != nil {
				t.Fatal(err)
			}
			total := probe.writes
			points := map[int]bool{}
			for _, w := range probe.gptWrites {
				points[w-1], points[w] = true, true // before each GPT write, and torn inside it
			}
			for i := 0; i < 24; i++ {
				points[i*total/24] = true
			}
			delete(points, total)
			t.Logf("%d writes, %d of them to the GPT; %d crash points", total, len(probe.gptWrites), len(points))
			for k := range points {
				disk := sc.start(t)
				_, err := installWith(f, disk, sc.payload, &faultyDisk{crashAfter: k})
				if !errors.Is(err, errCrash) {
					t.Fatalf("crash after %d writes: install returned %v", k, err)
				}
				checkNextIsGood(t, f, disk, fmt.Sprintf("crash after %d writes", k))
				res, err := installWith(f, disk, sc.payload, &faultyDisk{crashAfter: -1})
				if err != nil {
					t.Fatalf("crash after %d writes: re-running: %v", k, err)
				}
				if next, ver := checkNextIsGood(t, f, disk, "after the re-run"); next.Label != sc.target || ver != sc.version || res.Slot != sc.target {
					t.Fatalf("crash after %d writes: after the re-run the next slot is %s with %s", k, next.Label, ver)
				}
			}
			for _, w := range probe.gptWrites {
				disk := sc.start(t)
				_, err := installWith(f, disk, sc.payload, &faultyDisk{crashAfter: -1, failAt: w})
				if !errors.Is(err, errEIO) {
					t.Fatalf("EIO at GPT write %d: install returned %v", w, err)
				}
				checkNextIsGood(t, f, disk, fmt.Sprintf("EIO at GPT write %d", w))
				if _, err := installWith(f, disk, sc.payload, &faultyDisk{crashAfter: -1}); err != nil {
					t.Fatalf("EIO at GPT write %d: re-running: %v", w, err)
				}
				if next, ver := checkNextIsGood(t, f, disk, "after the re-run"); next.Label != sc.target || ver != sc.version {
					t.Fatalf("EIO at GPT write %d: after the re-run the next slot is %s with %s", w, next.Label, ver)
				}
			}
		})
	}
}

// markGood does what kiln slot mark-good does on the booted slot e.
func markGood(t *testing.T, e *layout.Entry, disk string) {
	t.Helper()
	d, err := layout.OpenDiskForWriting(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tb, err := d.ReadTable()
	if err != nil {
		t.Fatal(err)
	}
	e, _ = tb.Lookup(e.Label)
	if err := slot.MarkGood(tb, e); err != nil {
		t.Fatal(err)
	}
	if err := d.UpdateAttributes(tb); err != nil {
		t.Fatal(err)
	}
}

// TestRefusedInstallChangesNothing: every refusal comes before the first
// write: the disk stays byte for byte what it was.
func TestRefusedInstallChangesNothing(t *testing.T) {
	f := newFixture(t, "1.0.0", "2.0.0", "3.0.0")
	delta12 := f.payload(t, "1.0.0", "2.0.0")
	delta23 := f.payload(t, "2.0.0", "3.0.0")
	full1 := f.payload(t, "", "1.0.0")

	// A payload whose partition is not "usr": written by the payload
	// writer itself, validly signed.
	root := filepath.Join(f.dir, "root.payload")
	img, fh, err := f.rel["2.0.0"].image()
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	v := f.rel["2.0.0"].Usr.Verity
	rootHash, salt, _ := decodeVerity(v)
	plan, err := payload.NewPlan(context.Background(), payload.Config{New: *img, NewVersion: "2.0.0", Partition: "root", TempDir: f.dir,
		Verity: &payload.Verity{DataBlocks: v.DataBlocks, HashOffset: v.HashOffset, TreeBlocks: uint64(verity.HashTreeSize(v.DataBlocks)/payload.BlockSize) - 1, Salt: salt, RootHash: rootHash}})
	if err != nil {
		t.Fatal(err)
	}
	pf, _ := os.Create(root)
	size, _ := sigSize(f.signer)
	if _, err := payload.Write(pf, plan, Signer{S: f.signer, Size: size}); err != nil {
		t.Fatal(err)
	}
	pf.Close()
	plan.Close()

	onTrial := f.disk(t, "1.0.0")
	if _, err := Install(context.Background(), InstallOptions{Payload: delta12, Disk: onTrial, Verifier: f.verify}); err != nil {
		t.Fatal(err)
	}
	// GRUB's gptprio tries USR-B: its tries drop to 0.
	tryBoot(t, onTrial)

	cases := []struct {
		name, disk, payload, want string
	}{
		{"delta from another source", f.disk(t, "2.0.0"), delta12, "delta from 1.0.0, but the booted slot USR-A holds 2.0.0"},
		{"delta whose source bytes differ", retag(t, f, "1.0.0"), delta12, "source"},
		{"downgrade", f.disk(t, "2.0.0"), full1, "1.0.0 is older than 2.0.0"},
		{"partition named root", f.disk(t, "1.0.0"), root, `partitions ["root"]`},
		{"booted slot on trial", onTrial, delta23, "USR-B booted on trial"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := readAll(t, c.disk)
			_, err := Install(context.Background(), InstallOptions{Payload: c.payload, Disk: c.disk, Verifier: f.verify})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("install: %v, want an error containing %q", err, c.want)
			}
			if string(readAll(t, c.disk)) != string(before) {
				t.Fatal("a refused install changed the disk")
			}
		})
	}
}

// retag returns a copy of a release's disk whose USR-A has one byte of
// file data changed, so a delta's source hash cannot match.
func retag(t *testing.T, f *fixture, ver string) string {
	disk := f.disk(t, ver)
	d, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m := f.rel[ver].Manifest.Partition("USR-A")
	b := []byte{0}
	at := m.Offset + m.FilesystemSize/2
	d.ReadAt(b, at)
	b[0] ^= 0xff
	d.WriteAt(b, at)
	return disk
}

// tryBoot does what GRUB's gptprio.next does before booting: the next
// slot's tries drop by one.
func tryBoot(t *testing.T, disk string) *layout.Entry {
	t.Helper()
	d, err := layout.OpenDiskForWriting(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tb, err := d.ReadTable()
	if err != nil {
		t.Fatal(err)
	}
	e, err := slot.Try(tb)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.UpdateAttributes(tb); err != nil {
		t.Fatal(err)
	}
	return e
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
