package layout

import (
	"errors"
	"fmt"
	"sort"
)

// Table is a concrete GPT partition table: what a layout gives for one disk
// size and seed, or what was read from a disk.
type Table struct {
	DiskGUID GUID
	// Sectors is the disk size in 512-byte sectors.
	Sectors uint64
	// Partitions are the used entries, sorted by Number.
	Partitions []Entry
	// Copies says, for a table read from a disk, whether each GPT copy
	// was valid; the zero value for a table that was planned.
	Copies Copies
}

// FromBackup reports whether the table was read from the backup GPT
// because the primary was damaged.
func (t *Table) FromBackup() bool { return t.Copies.Primary != nil }

// Entry is one used GPT entry.
type Entry struct {
	Number     int
	Label      string
	Type       GUID
	GUID       GUID
	Start      uint64 // first sector
	Sectors    uint64 // length in sectors
	Attributes uint64 // the 64 attribute bits; 48–56 hold the slot state
}

// Size returns the disk size in bytes.
func (t *Table) Size() int64 { return int64(t.Sectors) * SectorSize }

// Offset returns the partition's first byte on the disk.
func (e *Entry) Offset() int64 { return int64(e.Start) * SectorSize }

// Size returns the partition's length in bytes.
func (e *Entry) Size() int64 { return int64(e.Sectors) * SectorSize }

// End returns the sector after the partition's last.
func (e *Entry) End() uint64 { return e.Start + e.Sectors }

// Name returns "3 (USR-A)".
func (e *Entry) Name() string { return partName(e.Number, e.Label) }

// Slot returns the A/B state held in the attribute bits.
func (e *Entry) Slot() SlotState { return SlotFromAttributes(e.Attributes) }

// ErrNoPartition is returned when a label or number is not in the table.
var ErrNoPartition = errors.New("layout: no such partition")

// Lookup returns the entry with the given label, or with the given number
// when name is a number.
func (t *Table) Lookup(name string) (*Entry, error) {
	for i := range t.Partitions {
		e := &t.Partitions[i]
		if e.Label == name || fmt.Sprint(e.Number) == name {
			return e, nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrNoPartition, name)
}

// firstUsable and lastUsable are the bounds of the data area with the
// standard 128-entry GPT.
func firstUsable() uint64 { return gptReservedSectors }

func (t *Table) lastUsable() uint64 { return t.Sectors - gptReservedSectors }

// Validate checks that every entry lies in the usable area, has a
// non-zero type, and that no two overlap or share a number.
func (t *Table) Validate() error {
	if t.Sectors < 2*gptReservedSectors+1 {
		return fmt.Errorf("layout: disk of %d sectors is too small for a GPT", t.Sectors)
	}
	seen := map[int]bool{}
	parts := append([]Entry(nil), t.Partitions...)
	sort.Slice(parts, func(i, j int) bool { return parts[i].Start < parts[j].Start })
	for i, e := range parts {
		if e.Number < 1 || e.Number > 128 {
			return fmt.Errorf("layout: partition %s: number outside 1..128", e.Name())
		}
		if seen[e.Number] {
			return fmt.Errorf("layout: partition %s: duplicate number", e.Name())
		}
		seen[e.Number] = true
		if e.Type.IsZero() {
			return fmt.Errorf("layout: partition %s: zero type GUID", e.Name())
		}
		if e.Sectors == 0 {
			return fmt.Errorf("layout: partition %s: empty", e.Name())
		}
		if e.Start < firstUsable() || e.End()-1 > t.lastUsable() || e.End() < e.Start {
			return fmt.Errorf("layout: partition %s: sectors %d..%d outside the usable area %d..%d",
				e.Name(), e.Start, e.End()-1, firstUsable(), t.lastUsable())
		}
		if i > 0 && parts[i-1].End() > e.Start {
			return fmt.Errorf("layout: partition %s overlaps partition %s", e.Name(), parts[i-1].Name())
		}
	}
	return nil
}

// Plan places the layout on a disk of diskSize bytes (0: the layout's own
// size, rounded up to DiskAlignment) and derives the disk GUID and every
// partition GUID that the layout does not fix from seed.
func (l *Layout) Plan(diskSize int64, seed string) (*Table, error) {
	fail := func(p *Partition, field string, err error) error {
		e := &Error{Source: l.Source, Field: field, Err: err}
		if p != nil {
			e.Line, e.Partition = p.line, p.Name()
		}
		return e
	}
	align := uint64(l.Alignment / SectorSize)
	alignUp := func(n, a uint64) uint64 { return (n + a - 1) / a * a }

	// Place every partition, the rest partition at its minimum size.
	type placed struct {
		p          *Partition
		start, len uint64
	}
	var parts []placed
	cursor := firstUsable()
	var restIdx = -1
	for i := range l.Partitions {
		p := &l.Partitions[i]
		if p.Blank {
			continue
		}
		start := alignUp(cursor, align)
		if p.Start != 0 {
			start = uint64(p.Start / SectorSize)
		}
		n := uint64(p.Size / SectorSize)
		if p.Rest {
			n = uint64(p.MinSize / SectorSize)
			restIdx = len(parts)
		}
		parts = append(parts, placed{p, start, n})
		cursor = start + n
	}
	if restIdx >= 0 {
		r := parts[restIdx]
		for _, o := range parts {
			if o.p != r.p && o.start >= r.start {
				return nil, fail(r.p, "size", fmt.Errorf("\"rest\" must be the last partition on the disk, but %s starts after it", o.p.Name()))
			}
		}
	}
	end := uint64(0)
	for _, pp := range parts {
		end = max(end, pp.start+pp.len)
	}
	var sectors uint64
	if diskSize == 0 {
		sectors = alignUp(end+gptReservedSectors, uint64(l.DiskAlignment/SectorSize))
	} else {
		if diskSize%SectorSize != 0 {
			return nil, fail(nil, "size", fmt.Errorf("disk size %d is not a multiple of %d", diskSize, SectorSize))
		}
		sectors = uint64(diskSize / SectorSize)
	}
	t := &Table{DiskGUID: DeriveGUID(seed, "disk"), Sectors: sectors}
	if sectors < 2*gptReservedSectors+1 {
		return nil, fail(nil, "size", fmt.Errorf("disk of %d bytes is too small for a GPT", sectors*SectorSize))
	}
	last := t.lastUsable()
	for i, pp := range parts {
		p := pp.p
		if i == restIdx {
			// Grow to the end of the usable area, the end aligned down.
			restEnd := (last + 1) / align * align
			if restEnd <= pp.start || restEnd-pp.start < pp.len {
				return nil, fail(p, "size", fmt.Errorf("a %s disk leaves %s for the rest partition, less than its min-size %s",
					FormatSize(t.Size()), FormatSize(int64(max(restEnd, pp.start)-pp.start)*SectorSize), FormatSize(p.MinSize)))
			}
			pp.len = restEnd - pp.start
		}
		if pp.start+pp.len-1 > last {
			return nil, fail(p, "size", fmt.Errorf("ends at sector %d, beyond the last usable sector %d of a %s disk (layout larger than the disk)",
				pp.start+pp.len-1, last, FormatSize(t.Size())))
		}
		g := p.GUID
		if g.IsZero() {
			g = DeriveGUID(seed, "partition", fmt.Sprint(p.Number), p.Label)
		}
		var attrs uint64
		if p.Slot != nil {
			attrs = p.Slot.Attributes(0)
		}
		t.Partitions = append(t.Partitions, Entry{
			Number: p.Number, Label: p.Label, Type: p.Type, GUID: g,
			Start: pp.start, Sectors: pp.len, Attributes: attrs,
		})
	}
	// Overlaps, in disk order.
	sorted := append([]placed(nil), parts...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].start < sorted[j].start })
	for i := 1; i < len(sorted); i++ {
		a, b := sorted[i-1], sorted[i]
		if a.start+a.len > b.start {
			return nil, fail(b.p, "start", fmt.Errorf("overlaps partition %s (sectors %d..%d)", a.p.Name(), a.start, a.start+a.len-1))
		}
	}
	return t, t.Validate()
}
