package verity

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// benchImage writes size bytes of random data followed by room for the
// hash area and returns the path and the block count.
func benchImage(b *testing.B, dir string, size int64) (string, uint64) {
	b.Helper()
	path := filepath.Join(dir, "data.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		r.Read(buf)
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), size-off)], off); err != nil {
			b.Fatal(err)
		}
	}
	n := uint64(size / bs)
	if err := f.Truncate(size + HashTreeSize(n)); err != nil {
		b.Fatal(err)
	}
	// Write back now so that no timing below pays for it.
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return path, n
}

func BenchmarkFormat(b *testing.B) {
	const size = 64 << 20
	path, n := benchImage(b, b.TempDir(), size)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	p := Params{DataBlocks: n, Salt: SaltFromSeed(nil)}
	b.SetBytes(size)
	for b.Loop() {
		if _, err := Format(f, 0, size, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	const size = 64 << 20
	path, n := benchImage(b, b.TempDir(), size)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	root, err := Format(f, 0, size, Params{DataBlocks: n, Salt: SaltFromSeed(nil)})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	for b.Loop() {
		if _, err := Verify(f, 0, size, root); err != nil {
			b.Fatal(err)
		}
	}
}

// bestOf runs fn k times and returns the shortest duration.
func bestOf(b *testing.B, k int, fn func()) time.Duration {
	best := time.Duration(1<<63 - 1)
	for range k {
		start := time.Now()
		fn()
		best = min(best, time.Since(start))
	}
	return best
}

// BenchmarkCompare1GiB times Format against `veritysetup format` and
// Verify against `sha256sum` on the same 1 GiB of random data (page
// cache warm, best of 3 each) and reports the ratios.
//
//	go test -run XXX -bench Compare1GiB -benchtime 1x ./build/verity/
func BenchmarkCompare1GiB(b *testing.B) {
	const size = 1 << 30
	dir := b.TempDir()
	path, n := benchImage(b, dir, size)
	salt := SaltFromSeed([]byte("bench"))
	hexRoot := ""
	for b.Loop() {
		tVS := bestOf(b, 3, func() {
			out, err := exec.Command("veritysetup", "format", path, path,
				fmt.Sprintf("--hash-offset=%d", size), fmt.Sprintf("--data-blocks=%d", n),
				"--salt="+hex.EncodeToString(salt), "--uuid="+uuidString(testUUID)).CombinedOutput()
			if err != nil {
				b.Fatalf("veritysetup format: %v\n%s", err, out)
			}
			hexRoot = rootRE.FindStringSubmatch(string(out))[1]
		})
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		var root []byte
		tFormat := bestOf(b, 3, func() {
			root, err = Format(f, 0, size, Params{DataBlocks: n, Salt: salt, UUID: testUUID})
			if err != nil {
				b.Fatal(err)
			}
		})
		if hex.EncodeToString(root) != hexRoot {
			b.Fatalf("root hash %x, veritysetup %s", root, hexRoot)
		}
		tVerify := bestOf(b, 3, func() {
			if _, err := Verify(f, 0, size, root); err != nil {
				b.Fatal(err)
			}
		})
		f.Close()
		tSum := bestOf(b, 3, func() {
			out, err := exec.Command("sha256sum", path).CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte(path)) {
				b.Fatalf("sha256sum: %v %s", err, out)
			}
		})
		tVSVerify := bestOf(b, 1, func() {
			if err := vsVerify(b, path, size, root); err != nil {
				b.Fatal(err)
			}
		})
		// sha256sum reads the hash area too; scale to the data only.
		sumData := time.Duration(float64(tSum) * float64(size) / float64(size+HashTreeSize(n)))
		gbs := func(d time.Duration) float64 { return size / d.Seconds() / 1e9 }
		b.ReportMetric(tVS.Seconds(), "veritysetup-format-s")
		b.ReportMetric(tFormat.Seconds(), "format-s")
		b.ReportMetric(tVS.Seconds()/tFormat.Seconds(), "format-speedup-x")
		b.ReportMetric(gbs(tFormat), "format-GB/s")
		b.ReportMetric(tVerify.Seconds(), "verify-s")
		b.ReportMetric(gbs(tVerify), "verify-GB/s")
		b.ReportMetric(sumData.Seconds()/tVerify.Seconds(), "verify-vs-sha256sum-x")
		b.ReportMetric(tVSVerify.Seconds()/tVerify.Seconds(), "verify-vs-veritysetup-verify-x")
		b.Logf("GOMAXPROCS=%d: veritysetup format %v, Format %v (%.1fx, %.2f GB/s); sha256sum %v (%.2f GB/s), Verify %v (%.2f GB/s, %.1fx); veritysetup verify %v",
			runtime.GOMAXPROCS(0), tVS, tFormat, tVS.Seconds()/tFormat.Seconds(), gbs(tFormat),
			tSum, gbs(sumData), tVerify, gbs(tVerify), sumData.Seconds()/tVerify.Seconds(), tVSVerify)
	}
}
