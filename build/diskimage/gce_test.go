package diskimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// holey writes a raw image of size bytes with n runs of data, each one
// 64 KiB unit long and a unit apart, from 1 MiB on: n sparse entries.
func holey(t testing.TB, path string, size int64, n int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	unit := bytes.Repeat([]byte{0}, unitSize)
	for i := range n {
		binary.LittleEndian.PutUint64(unit[100:], uint64(i)+1)
		if _, err := f.WriteAt(unit, 1<<20+int64(i)*2*unitSize); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGCEByGNUTar: GNU tar reads kiln's GCE archive as GCE's documented
// command writes it — one member, disk.raw, an oldgnu sparse member
// (type 'S' behind the "ustar  " magic) of the raw image's size — and
// extracts it (-xS) as the raw image byte for byte, whether the sparse
// map fits the header or needs extension headers (0, 1, 3, 4, 24, 25 and
// 300 runs of data and the empty entry that ends a map at a hole: 4
// entries fill the header, 25 one extension; and the fixture, which ends
// with data); gzip -t passes; Go's archive/tar reads the same content.
func TestGCEByGNUTar(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		make func(path string)
	}{
		{"fixture", func(p string) { fixture(t, p, 40<<20+3*512, 8) }},
	}
	for _, n := range []int{0, 1, 3, 4, 24, 25, 300} {
		cases = append(cases, struct {
			name string
			make func(path string)
		}{"runs-" + strconv.Itoa(n), func(p string) { holey(t, p, 64<<20+512, n) }})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := filepath.Join(dir, "disk.img")
			c.make(raw)
			want, _ := os.ReadFile(raw)
			out := filepath.Join(dir, "disk.tar.gz")
			res := convert(t, raw, out, GCE, Options{Time: time.Unix(1700000000, 0)})
			if res.VirtualSize != int64(len(want)) {
				t.Errorf("virtual size %d, want %d", res.VirtualSize, len(want))
			}
			if b, err := exec.Command("gzip", "-t", out).CombinedOutput(); err != nil {
				t.Fatalf("gzip -t: %v\n%s", err, b)
			}
			list, err := exec.Command("tar", "-tvf", out).CombinedOutput()
			if err != nil {
				t.Fatalf("tar -tvf: %v\n%s", err, list)
			}
			if f := strings.Fields(string(list)); len(f) != 6 || f[0] != "-rw-r--r--" || f[1] != "0/0" || f[2] != strconv.Itoa(len(want)) || f[5] != "disk.raw" {
				t.Errorf("tar -tvf: %q", list)
			}
			// The first tar header: oldgnu magic, type S.
			zr, err := gzip.NewReader(bytes.NewReader(mustRead(t, out)))
			if err != nil {
				t.Fatal(err)
			}
			plain, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if string(plain[257:265]) != "ustar  \x00" || plain[156] != 'S' || len(plain)%tarRecord != 0 {
				t.Errorf("magic %q, type %q, %d bytes: not an oldgnu sparse member in whole records", plain[257:265], plain[156], len(plain))
			}
			x := filepath.Join(dir, "x")
			os.RemoveAll(x)
			os.Mkdir(x, 0o755)
			if b, err := exec.Command("tar", "-xSf", out, "-C", x).CombinedOutput(); err != nil {
				t.Fatalf("tar -xSf: %v\n%s", err, b)
			}
			if got, err := os.ReadFile(filepath.Join(x, "disk.raw")); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("GNU tar extracts %d bytes that differ from the raw image (%d bytes): %v", len(got), len(want), err)
			}
			// Go's reader too.
			tr := tar.NewReader(bytes.NewReader(plain))
			h, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(tr)
			if err != nil || h.Name != "disk.raw" || h.Format != tar.FormatGNU || h.Size != int64(len(want)) || !bytes.Equal(got, want) ||
				h.ModTime.Unix() != 1700000000 || h.Mode != 0o644 || h.Uid != 0 || h.Gid != 0 {
				t.Errorf("archive/tar: %+v, content equal %v, %v", h, bytes.Equal(got, want), err)
			}
			if _, err := tr.Next(); err != io.EOF {
				t.Errorf("a second member: %v", err)
			}
		})
	}
}

// TestGCESparse: a 4 GiB disk with 3 MiB of data makes an archive of
// about its data, in well under the time of reading 4 GiB.
func TestGCESparse(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	holey(t, raw, 4<<30, 48)
	start := time.Now()
	res := convert(t, raw, filepath.Join(dir, "disk.tar.gz"), GCE, Options{})
	if res.Size > 1<<20 || time.Since(start) > 5*time.Second {
		t.Errorf("%d bytes in %v for 3 MiB of data", res.Size, time.Since(start))
	}
}

// TestTarNumber: octal while it fits, base-256 beyond.
func TestTarNumber(t *testing.T) {
	b := make([]byte, 12)
	tarNumber(b, 0o644)
	if string(b) != "00000000644\x00" {
		t.Errorf("%q", b)
	}
	tarNumber(b, 1<<33)
	if b[0] != 0x80 || binary.BigEndian.Uint64(b[4:]) != 1<<33 {
		t.Errorf("%x", b)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
