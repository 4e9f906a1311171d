package diskimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// readAll reads the whole virtual disk of an image file through Open.
func readAll(t testing.TB, path string) (*Image, []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	im, err := Open(f, st.Size())
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	data := make([]byte, im.VirtualSize)
	// In odd pieces, so that reads straddle clusters, grains and chunks.
	for off := int64(0); off < im.VirtualSize; {
		n := min(int64(3<<20+4608), im.VirtualSize-off)
		if _, err := im.ReadAt(data[off:off+n], off); err != nil {
			t.Fatalf("%s: reading %d bytes at %d: %v", path, n, off, err)
		}
		off += n
	}
	return im, data
}

// TestOpenReadsWhatWriteWrote: every format reads back, through Open, as
// the raw image (then zeros to the virtual size), and Detect names it.
func TestOpenReadsWhatWriteWrote(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	fixture(t, raw, 40<<20+3*512, 3)
	want, _ := os.ReadFile(raw)
	for _, f := range Formats() {
		t.Run(f.String(), func(t *testing.T) {
			out := filepath.Join(dir, f.FileName()+".out")
			res := convert(t, raw, out, f, Options{})
			if f == GCE {
				// A gzip stream: Detect names it, Open refuses it, and
				// ExpandGCE gives back the disk.
				checkGCE(t, out, want, res.VirtualSize)
				return
			}
			im, got := readAll(t, out)
			if im.Format != f || im.VirtualSize != res.VirtualSize {
				t.Fatalf("Open: %s, %d bytes; wrote %s, %d bytes", im.Format, im.VirtualSize, f, res.VirtualSize)
			}
			if !bytes.Equal(got[:len(want)], want) || !allZeros(got[len(want):]) {
				t.Fatal("the image reads back other than the raw image")
			}
		})
	}
}

// TestOpenReadsQEMUImages: what qemu-img convert writes, Open reads as
// the raw image — the readers follow the formats, not only kiln's layout.
func TestOpenReadsQEMUImages(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	const size = 2 * 258048 * 512
	fixture(t, raw, size, 4)
	want, _ := os.ReadFile(raw)
	for _, c := range []struct {
		f    Format
		args []string
	}{
		{QCOW2, []string{"-O", "qcow2"}},
		{QCOW2, []string{"-O", "qcow2", "-c"}}, // deflate clusters
		{QCOW2Zstd, []string{"-O", "qcow2", "-c", "-o", "compression_type=zstd"}},
		{VMDK, []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}},
		{VMDKSparse, []string{"-O", "vmdk", "-o", "subformat=monolithicSparse"}},
		{VHD, []string{"-O", "vpc", "-o", "subformat=fixed,force_size"}},
		{VHDDynamic, []string{"-O", "vpc", "-o", "subformat=dynamic,force_size"}},
		{VHDX, []string{"-O", "vhdx", "-o", "subformat=dynamic"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			out := filepath.Join(dir, "q")
			qemuImg(t, append(append([]string{"convert", "-f", "raw"}, c.args...), raw, out)...)
			im, got := readAll(t, out)
			if im.Format != c.f {
				t.Errorf("Detect: %s, want %s", im.Format, c.f)
			}
			if int64(len(got)) < size || !bytes.Equal(got[:size], want) || !allZeros(got[size:]) {
				t.Fatalf("reads back other than the raw image (%d bytes)", len(got))
			}
		})
	}
	// zstd and xz read every zero: a smaller image.
	raw = filepath.Join(dir, "small.img")
	fixture(t, raw, 40<<20, 5)
	want, _ = os.ReadFile(raw)
	for _, c := range [][]string{{"zstd", "-q", "-T2", "-f", raw, "-o"}, {"sh", "-c", "xz -T2 -c \"$0\" > \"$1\"", raw}} {
		t.Run(c[0], func(t *testing.T) {
			out := filepath.Join(dir, "c")
			if b, err := exec.Command(c[0], append(c[1:], out)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", c, err, b)
			}
			_, got := readAll(t, out)
			if !bytes.Equal(got, want) {
				t.Fatal("reads back other than the raw image")
			}
		})
	}
}

// TestReproducible: every format gives the same bytes for the same
// content, whatever the number of workers and whether the raw image's
// zeros are holes or written zeros.
func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	fixture(t, raw, 40<<20+3*512, 6)
	dense := filepath.Join(dir, "dense.img")
	if b, err := exec.Command("cp", "--sparse=never", raw, dense).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, b)
	}
	for _, f := range Formats() {
		t.Run(f.String(), func(t *testing.T) {
			o := Options{Time: time.Unix(1700000000, 0), Name: "disk"}
			var first []byte
			for i, c := range []struct {
				raw     string
				workers int
			}{{raw, 1}, {raw, 3}, {dense, 2}} {
				o.Workers = c.workers
				out := filepath.Join(dir, fmt.Sprintf("%s.%d", f.FileName(), i))
				res := convert(t, c.raw, out, f, o)
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					first = got
					if d, _ := Digest(bytes.NewReader(got), int64(len(got)), 1); d != res.Digest {
						t.Errorf("digest %s, the file's is %s", res.Digest, d)
					}
					continue
				}
				if !bytes.Equal(got, first) {
					t.Errorf("%s with %d workers differs from %s with 1", filepath.Base(c.raw), c.workers, filepath.Base(raw))
				}
			}
		})
	}
}

// TestVHDRules checks the footers kiln writes against the VHD
// specification and Azure's rules: cookie, features 2, version 1.0, data
// offset (none for a fixed disk, the header for a dynamic one), disk type,
// a virtual size of whole MiB and whole CHS cylinders, original size =
// current size, the one's complement checksum, the CHS geometry of the
// specification's algorithm, the timestamp from the given time; a dynamic
// disk's header checksum and BAT.
func TestVHDRules(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int64{2 * 258048 * 512, 70<<20 + 3*512, 3 << 20} {
		raw := filepath.Join(dir, "disk.img")
		fixture(t, raw, size, 7)
		for _, f := range []Format{VHD, VHDDynamic} {
			out := filepath.Join(dir, f.FileName())
			when := time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)
			res := convert(t, raw, out, f, Options{Time: when})
			b, _ := os.ReadFile(out)
			foot, _ := ParseVHDFooter(b[len(b)-512:])
			wantType, wantOffset := uint32(2), ^uint64(0)
			if f == VHDDynamic {
				wantType, wantOffset = 3, 512
				if !bytes.Equal(b[:512], b[len(b)-512:]) {
					t.Errorf("%s: the footer's copy at 0 differs from the footer", f)
				}
			} else if int64(len(b)) != int64(foot.CurrentSize)+512 {
				t.Errorf("%s: %d bytes for a %d-byte disk", f, len(b), foot.CurrentSize)
			}
			vs := int64(foot.CurrentSize)
			c, h, s := int64(foot.Cylinders), int64(foot.Heads), int64(foot.Sectors)
			// The specification's algorithm, written out again.
			total := vs / 512
			var wc, wh, ws int64
			if total >= 65535*16*63 {
				ws, wh = 255, 16
			} else {
				ws = 17
				cth := total / ws
				wh = max((cth+1023)/1024, 4)
				if cth >= wh*1024 || wh > 16 {
					ws, wh = 31, 16
				}
				if total/ws >= wh*1024 {
					ws, wh = 63, 16
				}
			}
			wc = total / ws / wh
			for _, c := range []struct {
				what      string
				got, want any
			}{
				{"cookie", foot.Cookie, "conectix"},
				{"features", foot.Features, uint32(2)},
				{"version", foot.FileFormatVersion, uint32(0x00010000)},
				{"data offset", foot.DataOffset, wantOffset},
				{"disk type", foot.DiskType, wantType},
				{"checksum", foot.ChecksumOK, true},
				{"original size = current size", foot.OriginalSize, foot.CurrentSize},
				{"virtual size", vs, res.VirtualSize},
				{"whole MiB", vs%(1<<20) == 0 && vs >= size, true},
				{"geometry", [3]int64{c, h, s}, [3]int64{wc, wh, ws}},
				{"whole cylinders", c * h * s * 512, vs},
				{"timestamp", foot.TimeStamp, uint32(when.Unix() - 946684800)},
				{"saved state", foot.SavedState, uint8(0)},
			} {
				if c.got != c.want {
					t.Errorf("%s of %d bytes: %s: %v, want %v", f, size, c.what, c.got, c.want)
				}
			}
			if f == VHDDynamic {
				hd := b[512:1536]
				sum := binary.BigEndian.Uint32(hd[36:])
				cp := append([]byte(nil), hd...)
				clear(cp[36:40])
				var n uint32
				for _, x := range cp {
					n += uint32(x)
				}
				if string(hd[:8]) != "cxsparse" || ^n != sum || binary.BigEndian.Uint64(hd[8:]) != ^uint64(0) {
					t.Errorf("%s: dynamic header cookie, checksum or data offset wrong", f)
				}
				entries := binary.BigEndian.Uint32(hd[28:])
				if int64(entries) != (vs+2<<20-1)/(2<<20) || binary.BigEndian.Uint32(hd[32:]) != 2<<20 {
					t.Errorf("%s: %d BAT entries of %d bytes", f, entries, binary.BigEndian.Uint32(hd[32:]))
				}
				for i := range entries {
					e := binary.BigEndian.Uint32(b[1536+i*4:])
					if e != 0xffffffff && (int64(e)*512+512+2<<20 > int64(len(b))-512 || (int64(e)*512+512)%4096 != 0) {
						t.Errorf("%s: BAT entry %d: sector %d", f, i, e)
					}
				}
			}
		}
	}
	// A time before VHD's epoch is its epoch.
	if ts := binary.BigEndian.Uint32(vhdFooter(1<<20, 2, 0, time.Unix(0, 0), [32]byte{})[24:]); ts != 0 {
		t.Errorf("timestamp of 1970: %d", ts)
	}
}

// TestVHDSize: for every size in whole MiB up to 200 GiB, VHDSize is a
// whole number of MiB not smaller, whole CHS cylinders below the largest
// geometry, and at most 255 MiB larger.
func TestVHDSize(t *testing.T) {
	for mib := int64(1); mib <= 200<<10; mib++ {
		size := mib << 20
		for _, s := range []int64{size, size - 511} {
			v := VHDSize(s)
			c, h, spt := VHDGeometry(v)
			if v%(1<<20) != 0 || v < s || v-s > 255<<20 || (v/512 <= 65535*16*255 && int64(c)*int64(h)*int64(spt)*512 != v) {
				t.Fatalf("VHDSize(%d) = %d (CHS %d/%d/%d)", s, v, c, h, spt)
			}
		}
	}
}

// FuzzOpen: Open and ReadAt never panic and never read outside the file,
// whatever it holds; seeded with every format kiln writes (of a small
// disk, so that the inputs stay small).
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	raw := filepath.Join(dir, "disk.img")
	b := make([]byte, 1<<20)
	copy(b[1000:], "kiln")
	copy(b[700<<10:], bytes.Repeat([]byte("data"), 5000))
	if err := os.WriteFile(raw, b, 0o644); err != nil {
		f.Fatal(err)
	}
	for _, fm := range Formats() {
		out := filepath.Join(dir, fm.FileName())
		convert(f, raw, out, fm, Options{})
		b, err := os.ReadFile(out)
		if err != nil {
			f.Fatal(err)
		}
		if len(b) <= 1<<20+512 { // not VHDX, whose header section alone is 3 MiB
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		im, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		buf := make([]byte, 1<<20)
		for off := int64(0); off < min(im.VirtualSize, 16<<20); off += int64(len(buf)) {
			if _, err := im.ReadAt(buf, off); err != nil && err != io.EOF {
				return
			}
		}
	})
}

// checkGCE: Detect names the GCE archive path, Open refuses it as a
// stream, and ExpandGCE gives back want, sparse.
func checkGCE(t *testing.T, path string, want []byte, virtualSize int64) {
	t.Helper()
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	st, _ := in.Stat()
	if f, err := Detect(in, st.Size()); f != GCE || err != nil {
		t.Fatalf("Detect: %s, %v", f, err)
	}
	if _, err := Open(in, st.Size()); !errors.Is(err, ErrGCEStream) {
		t.Errorf("Open: %v, want ErrGCEStream", err)
	}
	if virtualSize != int64(len(want)) {
		t.Errorf("virtual size %d, want %d", virtualSize, len(want))
	}
	dst, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := ExpandGCE(in, st.Size(), dst, virtualSize+512); err == nil || !strings.Contains(err.Error(), "want") {
		t.Errorf("ExpandGCE with the wrong size: %v", err)
	}
	dst.Truncate(0)
	if err := ExpandGCE(in, st.Size(), dst, virtualSize); err != nil {
		t.Fatalf("ExpandGCE: %v", err)
	}
	got, _ := os.ReadFile(dst.Name())
	if !bytes.Equal(got, want) {
		t.Fatal("ExpandGCE gives other bytes than the raw image")
	}
	var sst syscall.Stat_t
	if err := syscall.Stat(dst.Name(), &sst); err == nil && sst.Blocks*512 >= int64(len(want)) {
		t.Errorf("ExpandGCE wrote %d bytes for a sparse disk of %d", sst.Blocks*512, len(want))
	}
}
