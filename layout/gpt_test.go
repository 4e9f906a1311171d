package layout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
)

func newDisk(t *testing.T, size int64) (string, *Table) {
	t.Helper()
	l, err := Load("coreos")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := l.Plan(size, "test")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := CreateDisk(p, tb); err != nil {
		t.Fatal(err)
	}
	return p, tb
}

func readBack(t *testing.T, p string) *Table {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tb, err := ReadTable(f)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestWriteReadRoundTrip(t *testing.T) {
	p, want := newDisk(t, 0)
	got := readBack(t, p)
	if got.DiskGUID != want.DiskGUID || got.Sectors != want.Sectors || got.FromBackup() || got.Copies.Err() != nil {
		t.Fatalf("disk: got %v %d %v, want %v %d", got.DiskGUID, got.Sectors, got.Copies.Err(), want.DiskGUID, want.Sectors)
	}
	if len(got.Partitions) != len(want.Partitions) {
		t.Fatalf("%d partitions, want %d", len(got.Partitions), len(want.Partitions))
	}
	for i := range want.Partitions {
		if got.Partitions[i] != want.Partitions[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got.Partitions[i], want.Partitions[i])
		}
	}
	st, _ := os.Stat(p)
	if st.Size() != want.Size() {
		t.Errorf("file size %d, want %d", st.Size(), want.Size())
	}
}

func TestSameInputsSameBytes(t *testing.T) {
	a, tb := newDisk(t, 0)
	b, _ := newDisk(t, 0)
	// The GPT areas at both ends hold every byte written; the rest is a
	// hole in both sparse files.
	ends := func(p string) []byte {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 2*gptReservedSectors*SectorSize)
		f.ReadAt(buf[:len(buf)/2], 0)
		f.ReadAt(buf[len(buf)/2:], tb.Size()-gptReservedSectors*SectorSize)
		return buf
	}
	if string(ends(a)) != string(ends(b)) {
		t.Fatal("two disks from the same layout and seed differ")
	}
}

func TestPrimaryDamagedReadsBackup(t *testing.T) {
	p, want := newDisk(t, 0)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("XXXX"), SectorSize+100); err == nil {
		// byte 100 of the header is outside the CRC'd 92 bytes: damage the CRC'd part instead
		f.WriteAt([]byte{0xff}, SectorSize+40)
	}
	got, err := ReadTable(f)
	if err != nil {
		t.Fatal(err)
	}
	if !got.FromBackup() || got.Copies.Backup != nil || len(got.Partitions) != len(want.Partitions) {
		t.Fatalf("copies %+v, %d partitions", got.Copies, len(got.Partitions))
	}
}

func TestHostileHeaders(t *testing.T) {
	// Each edit to the primary header (with the CRC fixed up, and the
	// backup destroyed) must give a clear error, never a huge allocation.
	cases := []struct {
		name string
		edit func(h []byte)
	}{
		{"signature", func(h []byte) { copy(h, "NOT PART") }},
		{"header size", func(h []byte) { binary.LittleEndian.PutUint32(h[12:], 4096) }},
		{"entry count", func(h []byte) { binary.LittleEndian.PutUint32(h[80:], 0xffffffff) }},
		{"entry size", func(h []byte) { binary.LittleEndian.PutUint32(h[84:], 1<<20) }},
		{"array past end", func(h []byte) { binary.LittleEndian.PutUint64(h[72:], 1<<40) }},
		{"usable area", func(h []byte) { binary.LittleEndian.PutUint64(h[48:], 1<<50) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, tb := newDisk(t, 0)
			_ = tb
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			h := make([]byte, 512)
			f.ReadAt(h, SectorSize)
			c.edit(h)
			binary.LittleEndian.PutUint32(h[16:], 0)
			binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
			f.WriteAt(h, SectorSize)
			f.WriteAt(make([]byte, 512), (int64(tb.Sectors)-1)*SectorSize) // no backup
			_, err = ReadTable(f)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrNoGPT) {
				t.Errorf("error does not wrap ErrNoGPT: %v", err)
			}
			t.Log(err)
		})
	}
}

func TestUpdateAttributes(t *testing.T) {
	p, _ := newDisk(t, 0)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tb, err := ReadTable(f)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := tb.Lookup("USR-B")
	b.Attributes = SlotState{Priority: 2, Tries: 1}.Attributes(b.Attributes)
	if err := UpdateAttributes(f, tb.Size(), p, tb); err != nil {
		t.Fatal(err)
	}
	got := readBack(t, p)
	gb, _ := got.Lookup("USR-B")
	if gb.Slot() != (SlotState{Priority: 2, Tries: 1}) {
		t.Fatalf("USR-B %v", gb.Slot())
	}
	// A table that differs in more than attributes is refused.
	gb.Start += 4096
	if err := UpdateAttributes(f, got.Size(), p, got); err == nil {
		t.Fatal("moved partition accepted")
	}
}

// FuzzReadTable feeds damaged GPT areas to ReadTableAt, in memory: it
// may refuse them, never panic or allocate without bound. The seed is the
// first and last 34 sectors of a real kiln disk.
func FuzzReadTable(f *testing.F) {
	small := tinyTable(f, 256, 32)
	img := newMemDisk(small.Size())
	if err := WriteTable(img, small); err != nil {
		f.Fatal(err)
	}
	// The fuzzed bytes: the MBR, the primary header and the first two
	// sectors of its array; the backup header and the last two sectors of
	// its array. The disk is only its two GPT ends (zeros between), so an
	// execution copies 34 KiB, not the whole disk.
	const n = 4 * SectorSize
	f.Add(img.b[:n], img.b[len(img.b)-3*SectorSize:])
	end := gptReservedSectors * SectorSize
	f.Fuzz(func(t *testing.T, head, tail []byte) {
		d := &endsDisk{size: int64(len(img.b)), head: append([]byte(nil), img.b[:end]...), tail: append([]byte(nil), img.b[len(img.b)-end:]...)}
		copy(d.head, head[:min(len(head), n)])
		copy(d.tail[end-3*SectorSize:], tail[:min(len(tail), 3*SectorSize)])
		tb, err := ReadTableAt(d, d.size, "fuzz.img")
		if err != nil {
			return
		}
		if err := tb.Validate(); err != nil {
			t.Fatalf("ReadTableAt returned a table that does not validate: %v", err)
		}
		// What was read writes back and reads again the same.
		out := newMemDisk(d.size)
		if err := WriteTable(out, tb); err != nil {
			t.Fatal(err)
		}
		again, err := ReadTableAt(out, int64(len(out.b)), "again")
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(again.Partitions) != fmt.Sprint(tb.Partitions) || again.DiskGUID != tb.DiskGUID {
			t.Fatalf("round trip changed the table:\n%v\n%v", tb.Partitions, again.Partitions)
		}
	})
}
