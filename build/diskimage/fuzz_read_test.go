package diskimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
)

// sparseInput is a sparse file made from a fuzzer's input: head at its
// start, mid at len(head)+midAt, tail at its end, holes (zeros) between,
// size bytes in all (up to 4 TiB). Later pieces cover earlier ones. It
// records any read outside the file.
type sparseInput struct {
	pieces []piece
	size   int64
	bad    error
}

func newSparseInput(head, mid, tail []byte, midAt, holes uint64) *sparseInput {
	holes %= 4 << 40
	s := &sparseInput{size: int64(len(head)) + int64(holes) + int64(len(tail))}
	s.pieces = []piece{{0, head}}
	if len(mid) > 0 {
		s.pieces = append(s.pieces, piece{int64(len(head)) + int64(midAt%(holes+1)), mid})
	}
	s.pieces = append(s.pieces, piece{s.size - int64(len(tail)), tail})
	return s
}

func (s *sparseInput) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > s.size {
		s.bad = fmt.Errorf("a read of %d bytes at %d, outside the %d-byte file", len(p), off, s.size)
		return 0, errors.New("outside the file")
	}
	n := int(min(int64(len(p)), s.size-off))
	clear(p[:n])
	for _, pc := range s.pieces {
		lo, hi := max(off, pc.off), min(off+int64(n), pc.off+int64(len(pc.data)))
		if lo < hi && lo < s.size {
			copy(p[lo-off:min(hi, s.size)-off], pc.data[lo-pc.off:])
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fuzzRead opens the sparse input in any of formats, then reads 64 KiB
// at 18 places across its disk (the first and last included), whatever
// its size: within 256 MiB of allocations, never outside the file.
func fuzzRead(t *testing.T, formats []Format, s *sparseInput) {
	if f, _ := probe(s, s.size); !slices.Contains(formats, f) {
		return // another format's fuzzer covers it
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	defer func() {
		runtime.ReadMemStats(&after)
		if a := after.TotalAlloc - before.TotalAlloc; a > hostileMaxAlloc {
			t.Errorf("%d bytes allocated for a %d-byte file", a, s.size)
		}
		if s.bad != nil {
			t.Error(s.bad)
		}
	}()
	if _, err := Detect(s, s.size); err != nil {
		if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrUnsupported) {
			t.Errorf("Detect: %v wraps neither ErrFormat nor ErrUnsupported", err)
		}
		return
	}
	im, err := Open(s, s.size)
	if err != nil {
		t.Fatalf("Detect took the file, Open refuses it: %v", err)
	}
	// The reader refused what it should before this point: however
	// large the disk it claims, 18 reads are all it gets.
	buf := make([]byte, 64<<10)
	for i := range int64(18) {
		off := max(min(im.VirtualSize/17*i, im.VirtualSize-int64(len(buf))), 0)
		if _, err := im.ReadAt(buf, off); err != nil && err != io.EOF {
			return
		}
	}
}

// hostileSeed is a hostile header at the start of a sparse file of size
// bytes, tail at its end.
type hostileSeed struct {
	head, tail []byte
	size       int64
}

// fuzzSeeds adds, for each format, the image kiln's writer makes of a
// small disk (data at its start only, or none when empty), as a sparse
// file of its own size: its first bytes in head, the rest in mid, zeros
// as holes; then the hostile headers given.
func fuzzSeeds(f *testing.F, formats []Format, empty bool, hostile ...hostileSeed) {
	dir := f.TempDir()
	raw := filepath.Join(dir, "disk.img")
	var pieces []piece
	if !empty {
		pieces = append(pieces, piece{0, bytes.Repeat([]byte("kiln"), 1024)})
	}
	sparse(f, raw, 4<<20, pieces...)
	for _, fm := range formats {
		out := filepath.Join(dir, fm.FileName())
		convert(f, raw, out, fm, Options{})
		b, err := os.ReadFile(out)
		if err != nil {
			f.Fatal(err)
		}
		head := bytes.TrimRight(b[:min(len(b), 320<<10)], "\x00")
		rest := b[len(head):]
		lead := len(rest) - len(bytes.TrimLeft(rest, "\x00"))
		mid := bytes.TrimRight(rest[lead:], "\x00")
		if len(head)+len(mid) > 1<<20 {
			f.Fatalf("%s: a seed of %d bytes", fm, len(head)+len(mid))
		}
		in := newSparseInput(head, mid, nil, uint64(lead), uint64(len(b)-len(head)))
		got := make([]byte, in.size)
		if _, err := in.ReadAt(got, 0); err != nil || !bytes.Equal(got, b) {
			f.Fatalf("%s: the seed is not the image (%v)", fm, err)
		}
		if _, err := Open(in, in.size); err != nil {
			f.Fatalf("%s: the seed: %v", fm, err)
		}
		f.Add(head, mid, []byte{}, uint64(lead), uint64(len(b)-len(head)))
	}
	for _, h := range hostile {
		f.Add(h.head, []byte{}, h.tail, uint64(0), uint64(h.size-int64(len(h.head))-int64(len(h.tail))))
	}
}

// FuzzQCOW2Read: qcow2 headers and tables in sparse files of up to
// 4 TiB, seeded with kiln's qcow2 and qcow2-zstd and hostile L1 tables.
func FuzzQCOW2Read(f *testing.F) {
	formats := []Format{QCOW2, QCOW2Zstd}
	fuzzSeeds(f, formats, false,
		hostileSeed{hostileQCOW2(9, 32<<20*32<<10, 32<<20, 1024), nil, 1024 + 256<<20},
		hostileSeed{hostileQCOW2(9, 4<<20*32<<10, 4<<20, 1024), nil, 1024 + 32<<20})
	f.Fuzz(func(t *testing.T, head, mid, tail []byte, midAt, holes uint64) {
		fuzzRead(t, formats, newSparseInput(head, mid, tail, midAt, holes))
	})
}

// FuzzVMDKRead: VMDK sparse extents (monolithicSparse and
// streamOptimized) in sparse files, seeded with kiln's and hostile grain
// directories.
func FuzzVMDKRead(f *testing.F) {
	formats := []Format{VMDK, VMDKSparse}
	fuzzSeeds(f, formats, false,
		hostileSeed{hostileVMDK(1<<38, 8, 512, 1), nil, 512 + 256<<20},
		hostileSeed{hostileVMDK(1<<40, 128, 512, 1), nil, 512 + 64<<20})
	f.Fuzz(func(t *testing.T, head, mid, tail []byte, midAt, holes uint64) {
		fuzzRead(t, formats, newSparseInput(head, mid, tail, midAt, holes))
	})
}

// FuzzVHDRead: fixed and dynamic VHDs in sparse files, seeded with
// kiln's and a hostile BAT: head (the footer's copy, the dynamic disk
// header, the BAT, ...) at the start, tail (the footer) at the end. With
// fix, the footers' and the header's checksums are made right, so that
// the fuzzer gets past them.
func FuzzVHDRead(f *testing.F) {
	formats := []Format{VHD, VHDDynamic}
	dir := f.TempDir()
	raw := filepath.Join(dir, "disk.img")
	sparse(f, raw, 4<<20, piece{0, bytes.Repeat([]byte("kiln"), 1024)})
	for _, fm := range formats {
		out := filepath.Join(dir, fm.FileName())
		convert(f, raw, out, fm, Options{})
		b, err := os.ReadFile(out)
		if err != nil {
			f.Fatal(err)
		}
		head := bytes.TrimRight(b[:len(b)-512], "\x00")
		f.Add(head, b[len(b)-512:], uint64(len(b)-512-len(head)), false)
	}
	const size = 2048 + 256<<20
	p := hostileVHD(256<<30, 4096, 1536, size)
	f.Add(append(append([]byte{}, p[0].data...), p[1].data...), p[2].data, uint64(size-2048), false)
	f.Fuzz(func(t *testing.T, head, tail []byte, holes uint64, fix bool) {
		if fix {
			head, tail = bytes.Clone(head), bytes.Clone(tail)
			fixVHD := func(b []byte) {
				if len(b) >= 512 {
					clear(b[64:68])
					binary.BigEndian.PutUint32(b[64:], vhdChecksum(b[:512]))
				}
			}
			fixVHD(head)
			fixVHD(tail)
			if len(head) >= 512+vhdHeaderSize {
				h := head[512 : 512+vhdHeaderSize]
				clear(h[36:40])
				binary.BigEndian.PutUint32(h[36:], vhdChecksum(h))
			}
		}
		fuzzRead(t, formats, newSparseInput(head, nil, tail, 0, holes))
	})
}

// FuzzVHDXRead: VHDXs in sparse files, seeded with kiln's of an empty
// disk and of a disk with data: the file identifier, both headers, both
// region tables, the metadata region and the BAT, each at its place in
// kiln's layout (the region tables may put the last two elsewhere), then
// holes. With fix, the headers' and region tables' CRC-32Cs are made
// right, so that the fuzzer gets past them.
func FuzzVHDXRead(f *testing.F) {
	formats := []Format{VHDX}
	dir := f.TempDir()
	raw := filepath.Join(dir, "disk.img")
	for _, pieces := range [][]piece{nil, {{0, bytes.Repeat([]byte("kiln"), 1024)}}} {
		sparse(f, raw, 4<<20, pieces...)
		out := filepath.Join(dir, "disk.vhdx")
		convert(f, raw, out, VHDX, Options{})
		b, err := os.ReadFile(out)
		if err != nil {
			f.Fatal(err)
		}
		var in [7][]byte
		for i, at := range vhdxPlaces {
			in[i] = bytes.TrimRight(b[at:at+vhdxLens[i]], "\x00")
		}
		if s := vhdxInput(in[:], uint64(len(b)-vhdxBATOffset), false); s.size != int64(len(b)) {
			f.Fatalf("a seed of %d bytes for a %d-byte VHDX", s.size, len(b))
		} else if _, err := Open(s, s.size); err != nil {
			f.Fatalf("the seed: %v", err)
		}
		f.Add(in[0], in[1], in[2], in[3], in[4], in[5], in[6], uint64(len(b)-vhdxBATOffset), false)
	}
	f.Fuzz(func(t *testing.T, ident, h1, h2, r1, r2, meta, bat []byte, holes uint64, fix bool) {
		s := vhdxInput([][]byte{ident, h1, h2, r1, r2, meta, bat}, holes, fix)
		fuzzRead(t, formats, s)
	})
}

// The pieces of FuzzVHDXRead's files: where each goes, and its longest.
var (
	vhdxPlaces = []int64{0, vhdxHeader1, vhdxHeader2, vhdxRegion1, vhdxRegion2, vhdxMetaOffset, vhdxBATOffset}
	vhdxLens   = []int64{64 << 10, 64 << 10, 64 << 10, vhdxRegionSize, vhdxRegionSize, vhdxMetaItems + 4096, 64 << 10}
)

// vhdxInput places FuzzVHDXRead's pieces in a sparse file, holes bytes
// past the BAT's place; with fix, the headers' and region tables'
// CRC-32Cs made right.
func vhdxInput(in [][]byte, holes uint64, fix bool) *sparseInput {
	s := &sparseInput{size: vhdxBATOffset + int64(holes%(4<<40))}
	for i, b := range in {
		b = b[:min(int64(len(b)), vhdxLens[i])]
		if fix && i >= 1 && i <= 4 && len(b) >= 8 {
			n := int64(vhdxHeaderSize)
			if i >= 3 {
				n = vhdxRegionSize
			}
			c := make([]byte, n)
			copy(c, b)
			clear(c[4:8])
			binary.LittleEndian.PutUint32(c[4:], crc32.Checksum(c, castagnoli))
			b = c
		}
		s.pieces = append(s.pieces, piece{vhdxPlaces[i], b})
	}
	s.size = max(s.size, vhdxBATOffset+int64(len(in[6])))
	return s
}
