package diskimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The bounds every reader keeps, whatever a file's tables claim: the
// issue's goal (memory under 256 MiB, time under a second), and what
// opening an image may allocate before any of its disk is read.
const (
	hostileMaxAlloc = 256 << 20
	hostileMaxTime  = time.Second
	openMaxAlloc    = 1 << 20
)

// piece is bytes at an offset of a sparse file.
type piece struct {
	off  int64
	data []byte
}

// sparse writes a file of size bytes that holds pieces and holes.
func sparse(t testing.TB, path string, size int64, pieces ...piece) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, p := range pieces {
		if _, err := f.WriteAt(p.data, p.off); err != nil {
			t.Fatal(err)
		}
	}
}

// hostileQCOW2 is a version 3 qcow2 header: the refcount table one
// cluster at cluster 1, the L1 table (l1Size entries) at l1Off.
func hostileQCOW2(cb uint, vsize, l1Size, l1Off int64) []byte {
	be := binary.BigEndian
	h := make([]byte, 104)
	be.PutUint32(h[0:], qcowMagic)
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], uint32(cb))
	be.PutUint64(h[24:], uint64(vsize))
	be.PutUint32(h[36:], uint32(l1Size))
	be.PutUint64(h[40:], uint64(l1Off))
	be.PutUint64(h[48:], 1<<cb)
	be.PutUint32(h[56:], 1)
	be.PutUint32(h[96:], 4)
	be.PutUint32(h[100:], 104)
	return h
}

// hostileVMDK is a monolithicSparse extent header: capacity sectors in
// grains of grain sectors, gtes entries per grain table, the grain
// directory at sector gd.
func hostileVMDK(capacity, grain uint64, gtes uint32, gd uint64) []byte {
	le := binary.LittleEndian
	h := make([]byte, 512)
	le.PutUint32(h[0:], vmdkMagic)
	le.PutUint32(h[4:], 1)
	le.PutUint32(h[8:], vmdkFlagNewline)
	le.PutUint64(h[12:], capacity)
	le.PutUint64(h[20:], grain)
	le.PutUint32(h[44:], gtes)
	le.PutUint64(h[56:], gd)
	h[73], h[74], h[75], h[76] = '\n', ' ', '\r', '\n'
	return h
}

// hostileVHD is a dynamic VHD of vsize bytes in blocks of blockSize, its
// BAT at batOff: the footer copy, the dynamic disk header at 512, the
// footer at size-512.
func hostileVHD(vsize, blockSize, batOff, size int64) []piece {
	be := binary.BigEndian
	foot := vhdFooter(vsize, vhdTypeDynamic, 512, time.Unix(vhdEpochSeconds, 0), [32]byte{})
	h := make([]byte, vhdHeaderSize)
	copy(h, "cxsparse")
	be.PutUint64(h[8:], ^uint64(0))
	be.PutUint64(h[16:], uint64(batOff))
	be.PutUint32(h[24:], 0x00010000)
	be.PutUint32(h[28:], uint32((vsize+blockSize-1)/blockSize))
	be.PutUint32(h[32:], uint32(blockSize))
	be.PutUint32(h[36:], vhdChecksum(h))
	return []piece{{0, foot}, {512, h}, {size - 512, foot}}
}

// measure runs fn and returns the bytes it allocated and its time.
func measure(fn func()) (uint64, time.Duration) {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	start := time.Now()
	fn()
	d := time.Since(start)
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc, d
}

// openFile opens path through Open, as kiln verify does.
func openFile(t testing.TB, path string) (*Image, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Detect(f, st.Size()); err != nil {
		return nil, err
	}
	return Open(f, st.Size())
}

// TestHostileTables: images whose tables claim far more than the file
// holds, or more than QEMU's limits, in sparse files of 4 KiB on disk.
// Those past QEMU's limits are refused, naming the format and the field;
// those inside them open without reading their tables, and their disks
// read a page of table at a time. Either way within 256 MiB and a
// second; the old readers read each table whole (a 256 MiB table took
// about 1 GB).
func TestHostileTables(t *testing.T) {
	dir := t.TempDir()
	const mib = 1 << 20
	cases := []struct {
		name   string
		size   int64
		pieces []piece
		err    string // "": it opens
	}{{
		// 32 Mi entries of 8 bytes: 256 MiB, 8 times QEMU's limit.
		name: "qcow2 L1 table filling the file", size: 1024 + 256*mib,
		pieces: []piece{{0, hostileQCOW2(9, 32<<20*32<<10, 32<<20, 1024)}},
		err:    "qcow2: l1_size 33554432 entries (256.0 MiB) exceeds qemu's limit of 32 MiB",
	}, {
		// As found from outside: 256 Mi entries, 2 GiB (the old reader
		// took 3.8 GB and 94 s in kiln verify).
		name: "qcow2 L1 table filling 2 GiB", size: 1024 + 2<<30,
		pieces: []piece{{0, hostileQCOW2(9, 256<<20*32<<10, 256<<20, 1024)}},
		err:    "qcow2: l1_size 268435456 entries (2.0 GiB) exceeds qemu's limit of 32 MiB",
	}, {
		// QEMU's largest L1 table: a disk of 128 GiB in 512-byte clusters.
		name: "qcow2 L1 table of 32 MiB", size: 1024 + 32*mib,
		pieces: []piece{{0, hostileQCOW2(9, 4<<20*32<<10, 4<<20, 1024)}},
	}, {
		name: "qcow2 L1 table past the end", size: 64 * mib,
		pieces: []piece{{0, hostileQCOW2(12, 1<<40, 512<<10, 64*mib-4096)}},
		err:    "the L1 table of 4194304 bytes at 67104768 runs past the end of the 67108864-byte file",
	}, {
		name: "qcow2 refcount table past qemu's limit", size: 64 * mib,
		pieces: []piece{{0, func() []byte {
			h := hostileQCOW2(16, 1<<30, 2, 2<<16)
			binary.BigEndian.PutUint32(h[56:], 129) // 129 clusters of 64 KiB
			return h
		}()}},
		err: "refcount_table_clusters 129 (8.1 MiB) exceeds qemu's limit of 8 MiB",
	}, {
		// 64 Mi grain tables of 512 grains of 4 KiB: a 256 MiB directory.
		name: "VMDK grain directory filling the file", size: 512 + 256*mib,
		pieces: []piece{{0, hostileVMDK(1<<38, 8, 512, 1)}},
		err:    "vmdk-sparse: a grain directory of 67108864 entries (256.0 MiB) exceeds qemu's limit of 33554432 entries",
	}, {
		// 512 TiB in 64 KiB grains: a 64 MiB directory, inside QEMU's limit.
		name: "VMDK of 512 TiB", size: 512 + 64*mib,
		pieces: []piece{{0, hostileVMDK(1<<40, 128, 512, 1)}},
	}, {
		name: "VMDK grain tables of 65536 entries", size: 64 * mib,
		pieces: []piece{{0, hostileVMDK(1<<30, 128, 65536, 1)}},
		err:    "numGTEsPerGT 65536 (qemu takes 1 to 512)",
	}, {
		// 64 Mi blocks of 4 KiB: a 256 MiB BAT (QEMU reads it whole).
		name: "VHD BAT filling the file", size: 2048 + 256*mib,
		pieces: hostileVHD(256<<30, 4096, 1536, 2048+256*mib),
	}, {
		name: "VHD BAT past the end", size: 2048 + 256*mib,
		pieces: hostileVHD(512<<30, 4096, 1536, 2048+256*mib),
		err:    "vhd-dynamic: a BAT of 134217728 entries (512.0 MiB) at 1536 runs past the end",
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, "hostile")
			sparse(t, path, c.size, c.pieces...)
			var im *Image
			var err error
			alloc, d := measure(func() { im, err = openFile(t, path) })
			t.Logf("open: %v, %d bytes allocated, %v", err, alloc, d)
			if c.err != "" {
				if err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("open: %v, want an ErrFormat saying %q", err, c.err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if alloc > openMaxAlloc || d > hostileMaxTime {
				t.Errorf("opening allocated %d bytes in %v; want under %d bytes and %v", alloc, d, openMaxAlloc, hostileMaxTime)
			}
			if im == nil {
				return
			}
			// A MiB at 64 places across the disk, the last one included
			// (what it holds is whatever the holes make of it).
			buf := make([]byte, 1<<20)
			alloc, d = measure(func() {
				for i := range int64(64) {
					off := min(im.VirtualSize/64*i, im.VirtualSize-int64(len(buf)))
					if _, err := im.ReadAt(buf, off); err != nil {
						t.Fatalf("reading at %d: %v", off, err)
					}
				}
			})
			t.Logf("64 MiB of a %d-byte disk read: %d bytes allocated, %v", im.VirtualSize, alloc, d)
			if alloc > hostileMaxAlloc || d > hostileMaxTime {
				t.Errorf("reading allocated %d bytes in %v; want under %d bytes and %v", alloc, d, hostileMaxAlloc, hostileMaxTime)
			}
		})
	}
}

// TestHostileVHDXMetadata: a VHDX whose metadata region claims 256 MiB
// (the largest the old reader took, and read whole), moved past the
// payload, opens reading only its table and items; one that overlaps the
// BAT is refused, as QEMU refuses it.
func TestHostileVHDXMetadata(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	sparse(t, raw, 8<<20, piece{4096, []byte("kiln")})
	path := filepath.Join(dir, "disk.vhdx")
	convert(t, raw, path, VHDX, Options{})
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	for _, move := range []bool{true, false} {
		b := bytes.Clone(orig)
		metaAt := roundUp(int64(len(b))+vhdxMiB, vhdxMiB)
		if move {
			b = append(b, make([]byte, metaAt+vhdxMetaItems+4096-int64(len(b)))...)
			copy(b[metaAt:], b[vhdxMetaOffset:vhdxMetaOffset+vhdxMetaItems+4096])
		} else {
			metaAt = vhdxMetaOffset
		}
		for _, at := range []int{vhdxRegion1, vhdxRegion2} {
			r := b[at : at+vhdxRegionSize]
			for i := range int(le.Uint32(r[8:])) {
				e := r[16+i*32:]
				if guidFromMS(e[:16]) == vhdxMetadataRegion {
					le.PutUint64(e[16:], uint64(metaAt))
					le.PutUint32(e[24:], 256<<20)
				}
			}
			clear(r[4:8])
			le.PutUint32(r[4:], crc32.Checksum(r, castagnoli))
		}
		sparse(t, path, metaAt+256<<20, piece{0, b})
		var im *Image
		alloc, d := measure(func() { im, err = openFile(t, path) })
		t.Logf("moved %v: open: %v, %d bytes allocated, %v", move, err, alloc, d)
		if alloc > openMaxAlloc || d > hostileMaxTime {
			t.Errorf("opening allocated %d bytes in %v; want under %d bytes and %v", alloc, d, openMaxAlloc, hostileMaxTime)
		}
		if !move {
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "overlap") {
				t.Errorf("overlapping regions: %v, want an ErrFormat saying they overlap", err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 4)
		if _, err := im.ReadAt(p, 4096); err != nil || string(p) != "kiln" {
			t.Errorf("the disk reads %q (%v), want kiln", p, err)
		}
	}
}

// TestHostileXZBlock: an xz whose index gives its one block 1 GiB of the
// file (a hole) for 64 KiB of disk is refused when opened; the old
// reader read the block whole when the disk was first read.
func TestHostileXZBlock(t *testing.T) {
	le := binary.LittleEndian
	const size = 1<<30 + 4096
	head := append(append([]byte{}, 0xfd, '7', 'z', 'X', 'Z', 0), 0, 1) // CRC32 check
	head = le.AppendUint32(head, crc32.ChecksumIEEE(head[6:8]))
	// The index: one record (unpadded size, uncompressed size), padding, CRC32.
	idx := []byte{0, 1}
	idx = binary.AppendUvarint(idx, size-12-16-12) // up to the 16-byte index
	idx = binary.AppendUvarint(idx, 64<<10)
	for len(idx)%4 != 0 {
		idx = append(idx, 0)
	}
	idx = le.AppendUint32(idx, crc32.ChecksumIEEE(idx))
	if len(idx) != 16 {
		t.Fatalf("an index of %d bytes", len(idx))
	}
	foot := le.AppendUint32(nil, uint32(len(idx)/4-1))
	foot = append(foot, 0, 1)
	foot = append(le.AppendUint32(nil, crc32.ChecksumIEEE(foot)), append(foot, 'Y', 'Z')...)
	tail := append(idx, foot...)
	path := filepath.Join(t.TempDir(), "disk.img.xz")
	sparse(t, path, size, piece{0, head}, piece{size - int64(len(tail)), tail})
	var im *Image
	var err error
	alloc, d := measure(func() {
		if im, err = openFile(t, path); err == nil {
			_, err = im.ReadAt(make([]byte, 1), 0)
		}
	})
	t.Logf("open and read a byte: %v, %d bytes allocated, %v", err, alloc, d)
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "bytes of content") {
		t.Errorf("open: %v, want an ErrFormat for the block's size", err)
	}
	if alloc > openMaxAlloc || d > hostileMaxTime {
		t.Errorf("allocated %d bytes in %v; want under %d bytes and %v", alloc, d, openMaxAlloc, hostileMaxTime)
	}
}

// TestHostileL2Tables: a qcow2 whose 4096 L1 entries point at 4096
// distinct L2 tables across a sparse file; reading a byte under each
// keeps at most the cache's bound of them (the old reader kept every
// table it read: 256 MiB here, without bound in general).
func TestHostileL2Tables(t *testing.T) {
	const cs = 1 << 16
	const n = 4096
	l1 := make([]byte, n*8)
	for i := range n {
		binary.BigEndian.PutUint64(l1[i*8:], uint64(3+i)*cs)
	}
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	sparse(t, path, (3+n)*cs, piece{0, hostileQCOW2(16, n*cs*cs/8, n, 2*cs)}, piece{2 * cs, l1})
	im, err := openFile(t, path)
	if err != nil {
		t.Fatal(err)
	}
	var p [1]byte
	_, d := measure(func() {
		for i := range int64(n) {
			if _, err := im.ReadAt(p[:], i*cs*cs/8); err != nil {
				t.Fatal(err)
			}
		}
	})
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	runtime.KeepAlive(im)
	t.Logf("%d L2 tables read in %v; %d bytes of heap in use after", n, d, m.HeapAlloc)
	if m.HeapAlloc > 80<<20 || d > 3*hostileMaxTime {
		t.Errorf("%d bytes of heap kept after reading %d L2 tables (in %v); want under 80 MiB", m.HeapAlloc, n, d)
	}
}

// TestHostileZstdHoles: a zstd frame whose blocks are a 1 GiB hole
// (zeros parse as empty raw blocks, none the last) is refused at once;
// the old reader read the whole hole, 3 bytes at a time.
func TestHostileZstdHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img.zst")
	// Magic, a frame header with a 4-byte content size of 4 MiB.
	hdr := append(append([]byte{}, zstdMagic...), 0xa0, 0, 0, 0x40, 0)
	sparse(t, path, 1<<30, piece{0, hdr})
	var err error
	alloc, d := measure(func() { _, err = openFile(t, path) })
	t.Logf("open: %v, %d bytes allocated, %v", err, alloc, d)
	if err == nil || !strings.Contains(err.Error(), "blocks") {
		t.Errorf("open: %v, want a refusal of the frame's blocks", err)
	}
	if alloc > openMaxAlloc || d > hostileMaxTime {
		t.Errorf("opening allocated %d bytes in %v; want under %d bytes and %v", alloc, d, openMaxAlloc, hostileMaxTime)
	}
}

// TestTruncatedImages: the first bytes of an image kiln writes are that
// format and malformed, never a raw disk (a 100-byte qcow2 was taken for
// raw: kiln convert converted it).
func TestTruncatedImages(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	sparse(t, raw, 8<<20, piece{0, []byte("kiln")})
	for _, f := range []Format{QCOW2, QCOW2Zstd, VMDK, VMDKSparse, VHDDynamic, VHDX} {
		path := filepath.Join(dir, f.FileName())
		convert(t, raw, path, f, Options{})
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{8, 100, 511, 600, 4096} {
			got, err := Detect(readerOf(b[:n]), int64(n))
			if err == nil || !errors.Is(err, ErrFormat) || got.QEMUFormat() != f.QEMUFormat() {
				t.Errorf("%s, first %d bytes: Detect says %s, %v; want %s and an ErrFormat", f, n, got, err, f)
			}
		}
	}
	// A VMDK descriptor names files kiln does not read.
	d := []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n")
	if _, err := Detect(readerOf(d), int64(len(d))); !errors.Is(err, ErrUnsupported) {
		t.Errorf("a VMDK descriptor: %v, want ErrUnsupported", err)
	}
}

func readerOf(b []byte) io.ReaderAt { return strings.NewReader(string(b)) }
