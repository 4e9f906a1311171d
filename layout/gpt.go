package layout

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"syscall"
	"unicode/utf16"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// ErrNoGPT is returned when a disk has no valid GPT.
var ErrNoGPT = errors.New("layout: no valid GPT")

// ErrTooLarge is returned when a disk image cannot be created at its size.
var ErrTooLarge = errors.New("layout: disk too large")

// FormatError is a malformed GPT structure, with the byte offset where it
// was found.
type FormatError struct {
	Offset int64
	Msg    string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("GPT: %s at byte 0x%x", e.Msg, e.Offset)
}

// Unwrap lets errors.Is(err, ErrNoGPT) match.
func (e *FormatError) Unwrap() error { return ErrNoGPT }

// Device is a disk image or block device as the GPT code reads and writes
// it. *os.File is one; tests wrap one to inject I/O errors and crashes.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Copies is the state of a disk's two GPT copies when its table was read.
type Copies struct {
	// Primary is nil when the primary header (LBA 1) and its entry array
	// are valid, else what is wrong with them.
	Primary error
	// Backup is the same for the backup copy in the disk's last sectors.
	Backup error
	// Differ is set when both copies are valid but hold different tables
	// (a write was interrupted between the two copies). The primary is
	// the one read, as firmware and GRUB do.
	Differ bool
}

// Err returns nil when both copies are valid and the same, else an error
// that says which copy is damaged and how.
func (c Copies) Err() error {
	var msgs []string
	if c.Primary != nil {
		msgs = append(msgs, "primary GPT damaged: "+c.Primary.Error())
	}
	if c.Backup != nil {
		msgs = append(msgs, "backup GPT damaged: "+c.Backup.Error())
	}
	if c.Differ {
		msgs = append(msgs, "the backup GPT differs from the primary (an interrupted write)")
	}
	if msgs == nil {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}

// gptCopy is one parsed, validated GPT copy.
type gptCopy struct {
	lba, alternate        uint64
	firstUsable, lastUse  uint64
	disk                  GUID
	arrayLBA              uint64
	entries               uint32
	array                 []byte // the raw entry array
	arrayCRC, headerBytes uint32
}

// maxEntries bounds the partition array a header may declare, so a hostile
// header cannot make the reader allocate without bound (the standard is
// 128).
const maxEntries = 1024

// readCopy reads and validates the GPT header at lba and its entry array:
// signature, revision, header size and CRC, its own and the alternate
// LBA, the usable area, the array's place (inside the disk, clear of the
// header and the usable area) and the array's CRC.
func readCopy(r io.ReaderAt, lba, sectors uint64) (*gptCopy, error) {
	off := int64(lba) * SectorSize
	hdr := make([]byte, SectorSize)
	if _, err := r.ReadAt(hdr, off); err != nil {
		return nil, fmt.Errorf("reading the header at LBA %d: %w", lba, err)
	}
	if !bytes.Equal(hdr[0:8], []byte("EFI PART")) {
		return nil, &FormatError{off, "missing \"EFI PART\" signature"}
	}
	if rev := binary.LittleEndian.Uint32(hdr[8:12]); rev != 0x00010000 {
		return nil, &FormatError{off + 8, fmt.Sprintf("revision 0x%08x, want 0x00010000", rev)}
	}
	size := binary.LittleEndian.Uint32(hdr[12:16])
	if size < 92 || size > SectorSize {
		return nil, &FormatError{off + 12, fmt.Sprintf("header size %d outside 92..512", size)}
	}
	sum := binary.LittleEndian.Uint32(hdr[16:20])
	h := append([]byte(nil), hdr[:size]...)
	clear(h[16:20])
	if crc32.ChecksumIEEE(h) != sum {
		return nil, &FormatError{off + 16, "header CRC mismatch"}
	}
	c := &gptCopy{
		lba:         binary.LittleEndian.Uint64(hdr[24:32]),
		alternate:   binary.LittleEndian.Uint64(hdr[32:40]),
		firstUsable: binary.LittleEndian.Uint64(hdr[40:48]),
		lastUse:     binary.LittleEndian.Uint64(hdr[48:56]),
		arrayLBA:    binary.LittleEndian.Uint64(hdr[72:80]),
		entries:     binary.LittleEndian.Uint32(hdr[80:84]),
		arrayCRC:    binary.LittleEndian.Uint32(hdr[88:92]),
		headerBytes: size,
	}
	c.disk = guidFromDisk(hdr[56:72])
	if c.lba != lba {
		return nil, &FormatError{off + 24, fmt.Sprintf("header says it is at LBA %d, it was read from LBA %d", c.lba, lba)}
	}
	wantAlt := sectors - 1
	if lba != 1 {
		wantAlt = 1
	}
	if c.alternate != wantAlt {
		return nil, &FormatError{off + 32, fmt.Sprintf("alternate header LBA %d, want %d (on a disk of %d sectors; was the disk resized?)", c.alternate, wantAlt, sectors)}
	}
	if c.firstUsable > c.lastUse || c.lastUse >= sectors-1 || c.firstUsable < 2 {
		return nil, &FormatError{off + 40, fmt.Sprintf("usable area %d..%d outside a disk of %d sectors", c.firstUsable, c.lastUse, sectors)}
	}
	entrySize := binary.LittleEndian.Uint32(hdr[84:88])
	if c.entries == 0 || c.entries > maxEntries {
		return nil, &FormatError{off + 80, fmt.Sprintf("%d partition entries, outside 1..%d", c.entries, maxEntries)}
	}
	if entrySize != 128 {
		return nil, &FormatError{off + 84, fmt.Sprintf("partition entry size %d, only 128 is supported", entrySize)}
	}
	arraySectors := (uint64(c.entries)*128 + SectorSize - 1) / SectorSize
	// The array lies between the header and the usable area: after the
	// primary header, or before the backup header.
	inPlace := c.arrayLBA >= 2 && c.arrayLBA <= c.firstUsable && arraySectors <= c.firstUsable-c.arrayLBA
	if lba != 1 {
		inPlace = c.arrayLBA > c.lastUse && c.arrayLBA < lba && arraySectors <= lba-c.arrayLBA
	}
	if !inPlace {
		return nil, &FormatError{off + 72, fmt.Sprintf("partition array at LBA %d (+%d sectors) overlaps the header or the usable area %d..%d", c.arrayLBA, arraySectors, c.firstUsable, c.lastUse)}
	}
	c.array = make([]byte, int(c.entries)*128)
	if _, err := r.ReadAt(c.array, int64(c.arrayLBA)*SectorSize); err != nil {
		return nil, fmt.Errorf("reading the partition array at LBA %d: %w", c.arrayLBA, err)
	}
	if crc32.ChecksumIEEE(c.array) != c.arrayCRC {
		return nil, &FormatError{int64(c.arrayLBA) * SectorSize, "partition array CRC mismatch"}
	}
	return c, nil
}

// sameTable reports whether two valid copies describe the same table.
func sameTable(a, b *gptCopy) bool {
	return a.disk == b.disk && a.firstUsable == b.firstUsable && a.lastUse == b.lastUse && bytes.Equal(a.array, b.array)
}

// table decodes a copy's used entries.
func (c *gptCopy) table(sectors uint64) (*Table, error) {
	t := &Table{DiskGUID: c.disk, Sectors: sectors}
	for i := 0; i < int(c.entries); i++ {
		raw := c.array[i*128 : (i+1)*128]
		typ := guidFromDisk(raw[0:16])
		if typ.IsZero() {
			continue
		}
		off := int64(c.arrayLBA)*SectorSize + int64(i)*128
		e := Entry{
			Number:     i + 1,
			Type:       typ,
			GUID:       guidFromDisk(raw[16:32]),
			Start:      binary.LittleEndian.Uint64(raw[32:40]),
			Attributes: binary.LittleEndian.Uint64(raw[48:56]),
			Label:      decodeName(raw[56:128]),
		}
		last := binary.LittleEndian.Uint64(raw[40:48])
		if last < e.Start {
			return nil, &FormatError{off + 32, fmt.Sprintf("partition %d ends (LBA %d) before it starts (LBA %d)", e.Number, last, e.Start)}
		}
		if e.Start < c.firstUsable || last > c.lastUse {
			return nil, &FormatError{off + 32, fmt.Sprintf("partition %d (LBA %d..%d) outside the usable area %d..%d", e.Number, e.Start, last, c.firstUsable, c.lastUse)}
		}
		if e.Number > 128 {
			return nil, &FormatError{off, fmt.Sprintf("partition %d: kiln handles entries 1..128", e.Number)}
		}
		e.Sectors = last - e.Start + 1
		t.Partitions = append(t.Partitions, e)
	}
	byStart := append([]Entry(nil), t.Partitions...)
	sort.Slice(byStart, func(i, j int) bool { return byStart[i].Start < byStart[j].Start })
	for i := 1; i < len(byStart); i++ {
		if a, b := byStart[i-1], byStart[i]; a.End() > b.Start {
			return nil, &FormatError{int64(c.arrayLBA) * SectorSize, fmt.Sprintf("partition %s overlaps partition %s", b.Name(), a.Name())}
		}
	}
	return t, nil
}

// decodeName decodes a GPT partition name: UTF-16LE up to the first NUL.
func decodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// guidFromDisk converts GPT's on-disk GUID byte order to a GUID.
func guidFromDisk(b []byte) GUID {
	var g GUID
	copy(g[:], b)
	return g.mixedEndian()
}

// ReadTableAt reads the GPT of a disk of size bytes through r. Both copies
// are validated; the table comes from the primary when it is valid, else
// from the backup, and Table.Copies says what was wrong with either. It
// fails, wrapping ErrNoGPT, only when neither copy is valid. Every header
// field is bounds-checked before it is used; name labels the disk in
// errors.
func ReadTableAt(r io.ReaderAt, size int64, name string) (*Table, error) {
	sectors := uint64(size / SectorSize)
	if size < 0 || sectors < 2*gptReservedSectors+1 {
		return nil, fmt.Errorf("%w: %s: %d bytes is too small for a GPT disk", ErrNoGPT, name, size)
	}
	p, perr := readCopy(r, 1, sectors)
	b, berr := readCopy(r, sectors-1, sectors)
	var c *gptCopy
	var cp Copies
	switch {
	case perr == nil:
		c = p
		cp.Backup = berr
		cp.Differ = berr == nil && !sameTable(p, b)
	case berr == nil:
		c, cp.Primary = b, perr
	default:
		return nil, fmt.Errorf("%w: %s: primary: %v; backup: %v", ErrNoGPT, name, perr, berr)
	}
	t, err := c.table(sectors)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	t.Copies = cp
	return t, nil
}

// ReadTable reads the GPT of a disk image or block device; see
// ReadTableAt.
func ReadTable(f *os.File) (*Table, error) {
	size, err := fileSize(f)
	if err != nil {
		return nil, fmt.Errorf("layout: %s: %w", f.Name(), err)
	}
	return ReadTableAt(f, size, f.Name())
}

// fileSize returns the size of an image file or block device.
func fileSize(f *os.File) (int64, error) {
	return f.Seek(0, io.SeekEnd)
}

// WriteTable writes a protective MBR and both GPT copies of t to dev, a
// disk image or device of exactly t.Size() bytes. Partition contents and
// the MBR's boot code are not touched.
//
// The writes are ordered so that a crash or an I/O error at any point
// leaves at least one valid copy holding either the old or the new table:
// the backup copy (entry array, then header) first, a sync, then the
// primary copy (entry array, then header), a sync, then the protective
// MBR. Until the primary header is written, readers (firmware, GRUB, kiln)
// read the old primary; once it is, the new one. A damaged copy is
// repaired by the next write, which always writes both.
func WriteTable(dev Device, t *Table) error {
	if err := t.Validate(); err != nil {
		return err
	}
	g := &gpt.Table{
		LogicalSectorSize:  SectorSize,
		PhysicalSectorSize: SectorSize,
		ProtectiveMBR:      true, // without it sector 0 stays zero and sgdisk reports a corrupt MBR
		GUID:               t.DiskGUID.String(),
	}
	for _, e := range t.Partitions {
		g.Partitions = append(g.Partitions, &gpt.Partition{
			Index:      e.Number,
			Start:      e.Start,
			End:        e.End() - 1,
			Size:       uint64(e.Size()),
			Type:       gpt.Type(e.Type.String()),
			Name:       e.Label,
			GUID:       e.GUID.String(),
			Attributes: e.Attributes,
		})
	}
	// go-diskfs encodes the table; kiln orders the writes itself.
	var enc encodedWrites
	if err := g.Write(&enc, t.Size()); err != nil {
		return fmt.Errorf("layout: encoding GPT: %w", err)
	}
	primaryEnd := int64(gptReservedSectors) * SectorSize
	var mbr, primary, backup []encodedWrite
	for _, w := range enc.writes {
		switch {
		case w.off < SectorSize:
			mbr = append(mbr, w)
		case w.off < primaryEnd:
			primary = append(primary, w)
		default:
			backup = append(backup, w)
		}
	}
	if len(mbr) != 1 || len(primary) != 2 || len(backup) != 2 {
		return fmt.Errorf("layout: encoding GPT: unexpected writes (%d MBR, %d primary, %d backup)", len(mbr), len(primary), len(backup))
	}
	// go-diskfs stores the disk's last LBA in the protective MBR's 32-bit
	// size field, truncated for disks of 2 TiB and more; the UEFI
	// specification asks for 0xFFFFFFFF there.
	if t.Sectors-1 > 0xffffffff {
		at := 446 + 12 - mbr[0].off
		binary.LittleEndian.PutUint32(mbr[0].data[at:at+4], 0xffffffff)
	}
	for _, phase := range []struct {
		name   string
		writes []encodedWrite
	}{{"backup GPT", backup}, {"primary GPT", primary}, {"protective MBR", mbr}} {
		for _, w := range phase.writes {
			if _, err := dev.WriteAt(w.data, w.off); err != nil {
				return fmt.Errorf("layout: writing the %s: %w", phase.name, err)
			}
		}
		if err := dev.Sync(); err != nil {
			return fmt.Errorf("layout: syncing the %s: %w", phase.name, err)
		}
	}
	return nil
}

// encodedWrite is one write go-diskfs asked for.
type encodedWrite struct {
	off  int64
	data []byte
}

// encodedWrites records what go-diskfs writes, in order, instead of
// writing it: the file go-diskfs's Write takes.
type encodedWrites struct{ writes []encodedWrite }

func (e *encodedWrites) WriteAt(p []byte, off int64) (int, error) {
	e.writes = append(e.writes, encodedWrite{off, append([]byte(nil), p...)})
	return len(p), nil
}
func (e *encodedWrites) ReadAt(p []byte, off int64) (int, error) { return 0, io.EOF }
func (e *encodedWrites) Read(p []byte) (int, error)              { return 0, io.EOF }
func (e *encodedWrites) Seek(int64, int) (int64, error)          { return 0, nil }
func (e *encodedWrites) Stat() (fs.FileInfo, error) {
	return nil, errors.New("layout: no file behind the GPT encoder")
}
func (e *encodedWrites) Close() error { return nil }

// CreateDisk writes a new sparse disk image at path holding table t and no
// data. It writes to a temporary file beside path and renames it at the
// end, so a failure leaves nothing behind.
func CreateDisk(path string, t *Table) error {
	if err := t.Validate(); err != nil {
		return err
	}
	dir, base := splitPath(path)
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("layout: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Truncate(t.Size()); err != nil {
		if errors.Is(err, syscall.EFBIG) {
			return fmt.Errorf("%w: a disk of %s is larger than a file may be on this filesystem", ErrTooLarge, FormatSize(t.Size()))
		}
		return fmt.Errorf("layout: %s: %w", path, err)
	}
	if err := WriteTable(tmp, t); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("layout: %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("layout: %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("layout: %w", err)
	}
	ok = true
	return nil
}

func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ".", p
	}
	return p[:i+1], p[i+1:]
}

// UpdateAttributes rewrites both GPT copies of the disk dev (of size
// bytes, named name in errors) with the attribute bits of t's entries.
// t must have been read from dev: only attributes may differ. Both copies
// are written whole, so a copy damaged before is repaired.
func UpdateAttributes(dev Device, size int64, name string, t *Table) error {
	cur, err := ReadTableAt(dev, size, name)
	if err != nil {
		return err
	}
	if len(cur.Partitions) != len(t.Partitions) || cur.DiskGUID != t.DiskGUID || cur.Sectors != t.Sectors {
		return fmt.Errorf("layout: %s: partition table changed since it was read", name)
	}
	for i := range cur.Partitions {
		a, b := cur.Partitions[i], t.Partitions[i]
		a.Attributes = b.Attributes
		if a != b {
			return fmt.Errorf("layout: %s: partition %s changed since it was read", name, b.Name())
		}
	}
	if err := WriteTable(dev, t); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
