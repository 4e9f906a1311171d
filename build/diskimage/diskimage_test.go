package diskimage

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fixture writes a sparse raw image of size bytes: random and repetitive
// data, written zeros, holes, a lone byte inside a hole, data across block
// boundaries and in the last sector.
func fixture(t testing.TB, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	text := bytes.Repeat([]byte("kiln writes every format from the raw image. "), 50000)
	writes := []struct {
		off  int64
		data []byte
	}{
		{0, random(300 << 10)},
		{1 << 20, make([]byte, 512<<10)},          // written zeros: not a hole
		{5 << 20, text[:2<<20]},                   // compresses well
		{17<<20 + 12345, []byte{0x5a}},            // one byte in a hole
		{8<<20 - 1000, random(3000)},              // across 2 MiB and 64 KiB boundaries
		{32<<20 - 70<<10, random(200 << 10)},      // across a 32 MiB VMDK grain table
		{size - 4096, random(4096)},               // the last sector
		{size / 2, bytes.Repeat([]byte{1}, 4096)}, // a run of one byte value
	}
	for _, w := range writes {
		if w.off+int64(len(w.data)) > size {
			continue
		}
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
}

func qemuImg(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("qemu-img", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s (make test installs qemu-img: qemu-utils)", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func convert(t testing.TB, raw, out string, f Format, o Options) *Result {
	t.Helper()
	in, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	st, _ := in.Stat()
	src, err := NewSource(in, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	res, err := WriteFile(context.Background(), out, src, f, o)
	if err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	return res
}

// TestQEMUReadsEveryFormat converts an image whose size is a whole number
// of VHD cylinders (as kiln's layouts are) to each format QEMU reads:
// qemu-img check finds no errors, compare finds the same disk, info the
// format and the virtual size.
func TestQEMUReadsEveryFormat(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	const size = 2 * 258048 * 512 // 252 MiB: whole VHD cylinders
	fixture(t, raw, size, 1)
	for _, f := range Formats() {
		if f.QEMUFormat() == "" || f == Raw {
			continue
		}
		t.Run(f.String(), func(t *testing.T) {
			out := filepath.Join(dir, f.FileName())
			res := convert(t, raw, out, f, Options{Time: time.Unix(1700000000, 0)})
			if st, err := os.Stat(out); err != nil || st.Size() != res.Size {
				t.Fatalf("file size %v, result %d (%v)", st.Size(), res.Size, err)
			}
			var info struct {
				Format      string `json:"format"`
				VirtualSize int64  `json:"virtual-size"`
			}
			if err := json.Unmarshal([]byte(qemuImg(t, "info", "--output=json", "-f", f.QEMUFormat(), out)), &info); err != nil {
				t.Fatal(err)
			}
			if info.Format != f.QEMUFormat() || info.VirtualSize != res.VirtualSize || res.VirtualSize != size {
				t.Errorf("qemu-img info: %+v; kiln: virtual size %d", info, res.VirtualSize)
			}
			if f != VHD && f != VHDDynamic { // QEMU checks no VHD
				if out := qemuImg(t, "check", "-f", f.QEMUFormat(), out); !strings.Contains(out, "No errors were found") {
					t.Errorf("qemu-img check: %s", out)
				}
			}
			if out := qemuImg(t, "compare", "-f", "raw", "-F", f.QEMUFormat(), raw, out); !strings.Contains(out, "Images are identical") {
				t.Errorf("qemu-img compare: %s", out)
			}
		})
	}
}

// TestCompressedRaw: zstd and xz decompress raw.zst and raw.xz to the raw
// image exactly, and their own checks (-t) pass.
func TestCompressedRaw(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	fixture(t, raw, 40<<20+3*512, 2) // not a whole chunk
	want, _ := os.ReadFile(raw)
	for _, c := range []struct {
		f    Format
		tool string
	}{{RawZstd, "zstd"}, {RawXZ, "xz"}} {
		t.Run(c.f.String(), func(t *testing.T) {
			out := filepath.Join(dir, c.f.FileName())
			res := convert(t, raw, out, c.f, Options{})
			if res.VirtualSize != int64(len(want)) {
				t.Errorf("virtual size %d, want %d", res.VirtualSize, len(want))
			}
			if b, err := exec.Command(c.tool, "-t", out).CombinedOutput(); err != nil {
				t.Fatalf("%s -t: %v\n%s", c.tool, err, b)
			}
			got, err := exec.Command(c.tool, "-dc", out).Output()
			if err != nil {
				t.Fatalf("%s -dc: %v", c.tool, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s -dc gives %d bytes that differ from the raw image (%d bytes)", c.tool, len(got), len(want))
			}
		})
	}
}
