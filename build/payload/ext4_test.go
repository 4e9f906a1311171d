package payload

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/blockmap"
)

// writeTree writes a generated release tree: nFiles files of about
// avg bytes. Release 2 (next=true) changes every fifth file, drops every
// eleventh, renames every thirteenth and adds a few.
func writeTree(t testing.TB, dir string, nFiles, avg int, next bool) {
	t.Helper()
	r := mrand.New(mrand.NewPCG(21, 22))
	er := mrand.New(mrand.NewPCG(23, 24))
	for i := 0; i < nFiles; i++ {
		name := filepath.Join(dir, fmt.Sprintf("usr/lib/pkg%02d/file%04d.bin", i%37, i))
		data := content(r, avg/2+r.IntN(avg))
		if next {
			switch {
			case i%11 == 0:
				continue
			case i%13 == 0:
				name = strings.Replace(name, ".bin", ".renamed", 1)
			case i%5 == 0:
				data = edit(er, data, 10)
			}
		}
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if next {
		for i := 0; i < nFiles/20; i++ {
			name := filepath.Join(dir, fmt.Sprintf("usr/share/new/added%03d.dat", i))
			os.MkdirAll(filepath.Dir(name), 0o755)
			if err := os.WriteFile(name, content(er, avg), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// mkfsExt4 builds a read-only-style, reproducible ext4 image of dir.
func mkfsExt4(t testing.TB, dir, img string, size string) {
	t.Helper()
	cmd := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal",
		"-U", "6f2ab0d2-9f5b-4b5c-8f3c-1b1f2b3c4d5e", "-E", "hash_seed=0b7a2e4c-1111-4222-8333-944455556666,root_owner=0:0",
		"-d", dir, img, size)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

func ext4Pair(t testing.TB, nFiles, avg int, size string) (oldImg, newImg []byte, oldPath, newPath string) {
	dir := t.TempDir()
	for i, next := range []bool{false, true} {
		tree := filepath.Join(dir, fmt.Sprintf("tree%d", i))
		writeTree(t, tree, nFiles, avg, next)
		mkfsExt4(t, tree, filepath.Join(dir, fmt.Sprintf("v%d.img", i+1)), size)
	}
	oldPath, newPath = filepath.Join(dir, "v1.img"), filepath.Join(dir, "v2.img")
	var err error
	if oldImg, err = os.ReadFile(oldPath); err != nil {
		t.Fatal(err)
	}
	if newImg, err = os.ReadFile(newPath); err != nil {
		t.Fatal(err)
	}
	return
}

// Real ext4 images (mkfs.ext4 -d), with block maps read by debugfs and
// without (the planner falls back to block hashing): the delta reproduces
// the new image.
func TestExt4Delta(t *testing.T) {
	oldImg, newImg, oldPath, newPath := ext4Pair(t, 120, 40000, "16M")
	dir := filepath.Dir(oldPath)
	om, nm := debugfsMap(t, filepath.Join(dir, "tree0"), oldPath), debugfsMap(t, filepath.Join(dir, "tree1"), newPath)
	for _, maps := range []bool{false, true} {
		o := Image{R: bytes.NewReader(oldImg), Size: int64(len(oldImg))}
		n := Image{R: bytes.NewReader(newImg), Size: int64(len(newImg))}
		if maps {
			o.Map, n.Map = om, nm
		}
		testExt4Delta(t, o, n, oldImg, newImg, maps)
	}
}

func testExt4Delta(t *testing.T, o, n Image, oldImg, newImg []byte, maps bool) {
	plan := mustPlan(t, Config{Old: &o, New: n, NewVersion: "2", Compression: CompressionZstd})
	payload := mustWrite(t, plan, RSASigner{testKey()})
	p, err := Open(bytes.NewReader(payload), int64(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	dst := &memImage{}
	if _, err := Apply(context.Background(), p, bytes.NewReader(oldImg), dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.b, newImg) {
		t.Fatal("apply(delta, old) differs from the new ext4 image")
	}
	t.Logf("ext4 16 MiB, block maps %v: delta %d bytes, %d operations", maps, len(payload), len(p.Partitions[0].Ops))
}

// debugfsMap builds the block map of an ext4 image from its tree with
// `debugfs -R blocks`, standing in for the map kiln's own ext4 writer
// records.
func debugfsMap(t testing.TB, tree, img string) *blockmap.Map {
	t.Helper()
	var paths []string
	filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(tree, p)
			paths = append(paths, filepath.ToSlash(rel))
		}
		return nil
	})
	var cmds bytes.Buffer
	for _, p := range paths {
		fmt.Fprintf(&cmds, "blocks /%s\n", p)
	}
	cmdFile := img + ".cmds"
	if err := os.WriteFile(cmdFile, cmds.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-f", cmdFile, img).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	m := &blockmap.Map{Filesystem: "ext4", BlockSize: BlockSize, ImageSize: st.Size()}
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		p, ok := strings.CutPrefix(l, "debugfs: blocks /")
		if !ok || i+1 >= len(lines) {
			continue
		}
		fi, err := os.Stat(filepath.Join(tree, p))
		if err != nil {
			t.Fatal(err)
		}
		f := blockmap.File{Path: p, Size: fi.Size()}
		left := fi.Size()
		for _, w := range strings.Fields(lines[i+1]) {
			var b int64
			fmt.Sscan(w, &b)
			n := min(left, BlockSize)
			if k := len(f.Extents) - 1; k >= 0 && f.Extents[k].Offset+f.Extents[k].Length == b*BlockSize {
				f.Extents[k].Length += n
			} else {
				f.Extents = append(f.Extents, blockmap.Extent{Offset: b * BlockSize, Length: n})
			}
			left -= n
		}
		m.Files = append(m.Files, f)
	}
	m.Sort()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m
}

// sampleHeap samples the Go heap in use until the returned function is
// called, which returns the peak.
func sampleHeap() func() uint64 {
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if v := ms.HeapInuse + ms.StackInuse; v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); return peak.Load() }
}

// changedFiles lists the files of tree1 that are new or differ from tree0,
// in a file for tar -T.
func changedFiles(t testing.TB, dir string) string {
	var list []string
	root := filepath.Join(dir, "tree1")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		a, _ := os.ReadFile(p)
		o, err := os.ReadFile(filepath.Join(dir, "tree0", rel))
		if err != nil || !bytes.Equal(a, o) {
			list = append(list, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "changed.list")
	if err := os.WriteFile(name, []byte(strings.Join(list, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// BenchmarkDeltaVsTools compares kiln's delta of two ~160 MiB ext4 images
// (no block maps: the fallback) with zstd --patch-from, xdelta3 and bsdiff
// on the same images (with KILN_BENCH_TOOLS=1), and with the floor: the
// changed and added files alone, tar | xz -9. Run:
//
//	KILN_BENCH_TOOLS=1 go test -run X -bench DeltaVsTools -benchtime 1x
func BenchmarkDeltaVsTools(b *testing.B) {
	oldImg, newImg, oldPath, newPath := ext4Pair(b, 700, 200000, "160M")
	dir := filepath.Dir(oldPath)
	of, err := os.Open(oldPath)
	if err != nil {
		b.Fatal(err)
	}
	defer of.Close()
	nf, err := os.Open(newPath)
	if err != nil {
		b.Fatal(err)
	}
	defer nf.Close()
	om := debugfsMap(b, filepath.Join(dir, "tree0"), oldPath)
	nm := debugfsMap(b, filepath.Join(dir, "tree1"), newPath)
	for b.Loop() {
		for _, maps := range []*blockmap.Map{nil, om} {
			runtime.GC()
			stop := sampleHeap()
			start := time.Now()
			o := Image{R: of, Size: int64(len(oldImg))}
			n := Image{R: nf, Size: int64(len(newImg))}
			if maps != nil {
				o.Map, n.Map = om, nm
			}
			plan, err := NewPlan(context.Background(), Config{Old: &o, New: n, NewVersion: "2"})
			if err != nil {
				b.Fatal(err)
			}
			var buf bytes.Buffer
			if _, err := Write(&buf, plan, RSASigner{testKey()}); err != nil {
				b.Fatal(err)
			}
			plan.Close()
			gen := time.Since(start)
			fmt.Fprintf(os.Stderr, "block maps %v: peak Go heap while planning and writing: %d MiB\n", maps != nil, stop()>>20)
			p, err := Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
			if err != nil {
				b.Fatal(err)
			}
			start = time.Now()
			dst := &memImage{}
			if _, err := Apply(context.Background(), p, bytes.NewReader(oldImg), dst, ApplyOptions{Verifier: RSAVerifier{&testKey().PublicKey}}); err != nil {
				b.Fatal(err)
			}
			apply := time.Since(start)
			fmt.Fprintf(os.Stderr, "image %d MiB; kiln delta %d bytes, generate %v, apply %v\n", len(newImg)>>20, buf.Len(), gen.Round(time.Millisecond), apply.Round(time.Millisecond))
			for _, s := range Inspect(context.Background(), p, nil).Partitions[0].OpsByType {
				fmt.Fprintf(os.Stderr, "  %-13s %5d ops %10d data bytes %11d dst bytes\n", s.Type, s.Count, s.DataBytes, s.DstBytes)
			}
		}
	}
	if os.Getenv("KILN_BENCH_TOOLS") == "" {
		return
	}
	tools := []struct{ name, cmd string }{
		{"zstd --patch-from -19 --long=31", fmt.Sprintf("zstd -q -f --patch-from=%s -19 --long=31 %s -o %s/z.patch && stat -c %%s %s/z.patch", oldPath, newPath, dir, dir)},
		{"xdelta3 -9", fmt.Sprintf("xdelta3 -f -9 -e -s %s %s %s/x.patch && stat -c %%s %s/x.patch", oldPath, newPath, dir, dir)},
		{"bsdiff (whole image)", fmt.Sprintf("timeout 300 bsdiff %s %s %s/b.patch && stat -c %%s %s/b.patch", oldPath, newPath, dir, dir)},
		{"floor: changed+added files, tar | xz -9", fmt.Sprintf("tar -C %s/tree1 -cf - -T %s | xz -9 -c | wc -c", dir, changedFiles(b, dir))},
	}
	for _, tl := range tools {
		start := time.Now()
		out, err := exec.Command("sh", "-c", tl.cmd).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		fmt.Fprintf(os.Stderr, "%-40s %s (%v) %v\n", tl.name, lines[len(lines)-1], time.Since(start).Round(time.Millisecond), err)
	}
}
