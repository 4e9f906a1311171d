package layout

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// ErrNoGPT is returned when a disk has no valid GPT.
var ErrNoGPT = errors.New("layout: no valid GPT")

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

// WriteTable writes a protective MBR and the primary and backup GPT of t
// to f, a disk image or device of exactly t.Size() bytes. Partition
// contents are not touched; the boot code area of the MBR is kept.
func WriteTable(f *os.File, t *Table) error {
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
	if err := g.Write(f, t.Size()); err != nil {
		return fmt.Errorf("layout: writing GPT: %w", err)
	}
	// go-diskfs stores the disk's last LBA in the protective MBR's 32-bit
	// size field, truncated for disks of 2 TiB and more; the UEFI
	// specification asks for 0xFFFFFFFF there.
	if t.Sectors-1 > 0xffffffff {
		var size [4]byte
		binary.LittleEndian.PutUint32(size[:], 0xffffffff)
		if _, err := f.WriteAt(size[:], 446+12); err != nil {
			return fmt.Errorf("layout: writing protective MBR: %w", err)
		}
	}
	return nil
}

// maxEntries bounds the partition array a header may declare, so a hostile
// header cannot make the reader allocate gigabytes (the standard is 128).
const maxEntries = 1024

// checkHeader validates a GPT header sector read from offset off before
// go-diskfs is allowed to act on it.
func checkHeader(hdr []byte, off int64, diskSectors uint64) error {
	if !bytes.Equal(hdr[0:8], []byte("EFI PART")) {
		return &FormatError{off, "missing \"EFI PART\" signature"}
	}
	size := binary.LittleEndian.Uint32(hdr[12:16])
	if size < 92 || size > SectorSize {
		return &FormatError{off + 12, fmt.Sprintf("header size %d outside 92..512", size)}
	}
	sum := binary.LittleEndian.Uint32(hdr[16:20])
	h := append([]byte(nil), hdr[:size]...)
	copy(h[16:20], []byte{0, 0, 0, 0})
	if crc32.ChecksumIEEE(h) != sum {
		return &FormatError{off + 16, "header CRC mismatch"}
	}
	entries := binary.LittleEndian.Uint32(hdr[80:84])
	entrySize := binary.LittleEndian.Uint32(hdr[84:88])
	if entries == 0 || entries > maxEntries {
		return &FormatError{off + 80, fmt.Sprintf("%d partition entries, outside 1..%d", entries, maxEntries)}
	}
	if entrySize != 128 {
		return &FormatError{off + 84, fmt.Sprintf("partition entry size %d, only 128 is supported", entrySize)}
	}
	arrayLBA := binary.LittleEndian.Uint64(hdr[72:80])
	arraySectors := (uint64(entries)*uint64(entrySize) + SectorSize - 1) / SectorSize
	if arrayLBA < 1 || arrayLBA > diskSectors || arraySectors > diskSectors-arrayLBA {
		return &FormatError{off + 72, fmt.Sprintf("partition array at LBA %d (+%d sectors) outside a disk of %d sectors", arrayLBA, arraySectors, diskSectors)}
	}
	first := binary.LittleEndian.Uint64(hdr[40:48])
	last := binary.LittleEndian.Uint64(hdr[48:56])
	if first > last || last >= diskSectors {
		return &FormatError{off + 40, fmt.Sprintf("usable area %d..%d outside a disk of %d sectors", first, last, diskSectors)}
	}
	return nil
}

// diskSize returns the size of an image file or block device.
func diskSize(f *os.File) (int64, error) {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	_, err = f.Seek(0, io.SeekStart)
	return end, err
}

// ReadTable reads the GPT of a disk image or block device, falling back to
// the backup GPT when the primary is damaged (Table.FromBackup is then
// set). Every header field is bounds-checked before it is used.
func ReadTable(f *os.File) (*Table, error) {
	size, err := diskSize(f)
	if err != nil {
		return nil, fmt.Errorf("layout: %s: %w", f.Name(), err)
	}
	sectors := uint64(size / SectorSize)
	if sectors < 2*gptReservedSectors+1 {
		return nil, fmt.Errorf("%w: %s: %d bytes is too small for a GPT disk", ErrNoGPT, f.Name(), size)
	}
	hdr := make([]byte, SectorSize)
	if _, err := f.ReadAt(hdr, SectorSize); err != nil {
		return nil, fmt.Errorf("layout: %s: reading primary GPT header: %w", f.Name(), err)
	}
	primaryErr := checkHeader(hdr, SectorSize, sectors)
	if primaryErr != nil {
		backupOff := int64(sectors-1) * SectorSize
		if _, err := f.ReadAt(hdr, backupOff); err != nil {
			return nil, fmt.Errorf("layout: %s: reading backup GPT header: %w", f.Name(), err)
		}
		if err := checkHeader(hdr, backupOff, sectors); err != nil {
			return nil, fmt.Errorf("%w: %s: primary: %v; backup: %v", ErrNoGPT, f.Name(), primaryErr, err)
		}
	}
	g, err := gpt.Read(f, SectorSize, SectorSize)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoGPT, f.Name(), err)
	}
	disk, err := ParseGUID(g.GUID)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: disk GUID: %v", ErrNoGPT, f.Name(), err)
	}
	t := &Table{DiskGUID: disk, Sectors: sectors, FromBackup: g.RecoveredFromBackup || primaryErr != nil}
	for _, p := range g.Partitions {
		if p == nil || p.Type == gpt.Unused || strings.Trim(string(p.Type), "0-") == "" {
			continue
		}
		typ, err := ParseGUID(string(p.Type))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: partition %d type: %v", ErrNoGPT, f.Name(), p.Index, err)
		}
		id, err := ParseGUID(p.GUID)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: partition %d GUID: %v", ErrNoGPT, f.Name(), p.Index, err)
		}
		if p.End < p.Start {
			return nil, &FormatError{SectorSize * 2, fmt.Sprintf("partition %d ends (LBA %d) before it starts (LBA %d)", p.Index, p.End, p.Start)}
		}
		t.Partitions = append(t.Partitions, Entry{
			Number: p.Index, Label: p.Name, Type: typ, GUID: id,
			Start: p.Start, Sectors: p.End - p.Start + 1, Attributes: p.Attributes,
		})
	}
	return t, nil
}

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

// UpdateAttributes rewrites both GPT copies of the disk at f with the
// attribute bits of t's entries. t must have been read from f: only
// attributes may differ.
func UpdateAttributes(f *os.File, t *Table) error {
	cur, err := ReadTable(f)
	if err != nil {
		return err
	}
	if len(cur.Partitions) != len(t.Partitions) || cur.DiskGUID != t.DiskGUID || cur.Sectors != t.Sectors {
		return fmt.Errorf("layout: %s: partition table changed since it was read", f.Name())
	}
	for i := range cur.Partitions {
		a, b := cur.Partitions[i], t.Partitions[i]
		a.Attributes = b.Attributes
		if a != b {
			return fmt.Errorf("layout: %s: partition %s changed since it was read", f.Name(), b.Name())
		}
	}
	if err := WriteTable(f, t); err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	return f.Sync()
}
