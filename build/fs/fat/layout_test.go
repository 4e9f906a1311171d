package fat

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// memImage is an io.WriterAt over a byte slice.
type memImage []byte

func (m memImage) WriteAt(p []byte, off int64) (int, error) {
	return copy(m[off:], p), nil
}

// TestOnDiskFields checks the boot sector, FSInfo, backups, FAT and the
// "." and ".." entries byte by byte.
func TestOnDiskFields(t *testing.T) {
	mtime := time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC)
	tr := tree.New(mtime)
	data := bytes.Repeat([]byte("x"), 3000)
	if err := tr.Put("EFI/BOOT/BOOTX64.EFI", &tree.Inode{Type: tree.Regular, Mtime: mtime, Size: int64(len(data)), Content: tree.Bytes(data)}); err != nil {
		t.Fatal(err)
	}
	const size = 300 << 20
	img := make(memImage, size)
	// Garbage where metadata and the file go: Write must overwrite it all.
	for i := range 4 << 20 {
		img[i] = 0xAA
	}
	opts := Options{Size: size, VolumeID: 0xdeadbeef, Mtime: mtime, HiddenSectors: 4096}
	if _, err := Write(img, tr, opts); err != nil {
		t.Fatal(err)
	}
	g, _ := computeGeometry(size)
	le := binary.LittleEndian
	b := img[:512]
	for _, f := range []struct {
		name      string
		got, want uint32
	}{
		{"jump", uint32(b[0]), 0xEB},
		{"BytsPerSec", uint32(le.Uint16(b[11:])), 512},
		{"SecPerClus", uint32(b[13]), 8},
		{"RsvdSecCnt", uint32(le.Uint16(b[14:])), 32},
		{"NumFATs", uint32(b[16]), 2},
		{"RootEntCnt", uint32(le.Uint16(b[17:])), 0},
		{"TotSec16", uint32(le.Uint16(b[19:])), 0},
		{"Media", uint32(b[21]), 0xF8},
		{"FATSz16", uint32(le.Uint16(b[22:])), 0},
		{"HiddSec", le.Uint32(b[28:]), 4096},
		{"TotSec32", le.Uint32(b[32:]), size / 512},
		{"FATSz32", le.Uint32(b[36:]), g.fatSectors},
		{"RootClus", le.Uint32(b[44:]), 2},
		{"FSInfo", uint32(le.Uint16(b[48:])), 1},
		{"BkBootSec", uint32(le.Uint16(b[50:])), 6},
		{"BootSig", uint32(b[66]), 0x29},
		{"VolID", le.Uint32(b[67:]), 0xdeadbeef},
		{"Signature", uint32(le.Uint16(b[510:])), 0xAA55},
	} {
		if f.got != f.want {
			t.Errorf("%s = %#x, want %#x", f.name, f.got, f.want)
		}
	}
	if string(b[71:82]) != "EFI-SYSTEM " || string(b[82:90]) != "FAT32   " {
		t.Errorf("label %q type %q", b[71:82], b[82:90])
	}
	if !bytes.Equal(img[6*512:7*512], b) || !bytes.Equal(img[7*512:8*512], img[512:1024]) {
		t.Error("backup boot sector or FSInfo differs")
	}
	// Used clusters: root, EFI, BOOT, and one 4 KiB cluster of data.
	fsi := img[512:1024]
	if le.Uint32(fsi[0:]) != 0x41615252 || le.Uint32(fsi[484:]) != 0x61417272 || le.Uint32(fsi[508:]) != 0xAA550000 {
		t.Error("FSInfo signatures")
	}
	if free, next := le.Uint32(fsi[488:]), le.Uint32(fsi[492:]); free != g.clusters-4 || next != 5 {
		t.Errorf("FSInfo free %d next %d, want %d 5", free, next, g.clusters-4)
	}
	fat0 := img[g.fatOffset(0):g.fatOffset(1)]
	fat1 := img[g.fatOffset(1) : g.fatOffset(1)+int64(g.fatSectors)*512]
	if !bytes.Equal(fat0, fat1) {
		t.Error("the FAT copies differ")
	}
	for i, want := range []uint32{0x0FFFFFF8, 0x0FFFFFFF, fatEOC, fatEOC, fatEOC, fatEOC, 0} {
		if got := le.Uint32(fat0[4*i:]); got != want {
			t.Errorf("FAT[%d] = %#x, want %#x", i, got, want)
		}
	}
	if g.dataStart()*512%4096 != 0 {
		t.Errorf("data region at sector %d is not 4 KiB aligned", g.dataStart())
	}
	// EFI is cluster 3: "." is 3, ".." is 0 (the root). BOOT is cluster 4:
	// ".." is 3.
	efi, boot := img[g.clusterOffset(3):], img[g.clusterOffset(4):]
	cluster := func(e []byte) uint32 { return uint32(le.Uint16(e[20:]))<<16 | uint32(le.Uint16(e[26:])) }
	if string(efi[0:11]) != ".          " || cluster(efi) != 3 || string(efi[32:43]) != "..         " || cluster(efi[32:]) != 0 {
		t.Errorf("EFI's . and ..: %q %d %q %d", efi[0:11], cluster(efi), efi[32:43], cluster(efi[32:]))
	}
	if cluster(boot[32:]) != 3 || string(boot[64:75]) != "BOOTX64 EFI" || cluster(boot[64:]) != 5 || le.Uint32(boot[64+28:]) != 3000 {
		t.Errorf("BOOT's entries: % x", boot[:96])
	}
	if reserved := img[2*512 : 6*512]; !bytes.Equal(reserved, make([]byte, len(reserved))) {
		t.Error("reserved sectors 2-5 are not zero")
	}
	// The root holds the volume label first.
	root := img[g.clusterOffset(2):]
	if string(root[0:11]) != "EFI-SYSTEM " || root[11] != attrVolumeID {
		t.Errorf("root's first entry % x", root[:32])
	}
	// The file's last cluster tail is zero.
	tail := img[g.clusterOffset(5)+3000 : g.clusterOffset(6)]
	if !bytes.Equal(tail, make([]byte, len(tail))) {
		t.Error("the tail of the file's last cluster is not zero")
	}
}
