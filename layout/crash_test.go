package layout

import (
	"errors"
	"testing"
)

// attrsOf returns the attribute bits of every entry, in table order.
func attrsOf(t *Table) []uint64 {
	var a []uint64
	for _, e := range t.Partitions {
		a = append(a, e.Attributes)
	}
	return a
}

func equalAttrs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// smallTable is the coreos layout's first four partitions on a 2 MiB disk,
// small enough to copy for every crash point: each partition 256 KiB.
func smallTable(t testing.TB) *Table { return tinyTable(t, 4096, 512) }

// tinyTable is smallTable on a disk of sectors sectors, partitions of
// part sectors.
func tinyTable(t testing.TB, sectors, part uint64) *Table {
	t.Helper()
	l, err := Load("coreos")
	if err != nil {
		t.Fatal(err)
	}
	full, err := l.Plan(0, "crash")
	if err != nil {
		t.Fatal(err)
	}
	tb := &Table{DiskGUID: full.DiskGUID, Sectors: sectors}
	start := uint64(gptReservedSectors)
	for _, e := range full.Partitions[:4] {
		e.Start, e.Sectors = start, part
		start += part
		tb.Partitions = append(tb.Partitions, e)
	}
	if err := tb.Validate(); err != nil {
		t.Fatal(err)
	}
	return tb
}

// crashDisk returns a disk holding the coreos table, and that table with
// USR-B's slot bits changed.
func crashDisk(t *testing.T) (*memDisk, *Table, *Table) {
	t.Helper()
	old := smallTable(t)
	d := newMemDisk(old.Size())
	if err := WriteTable(d, old); err != nil {
		t.Fatal(err)
	}
	changed, err := ReadTableAt(d, old.Size(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := changed.Lookup("USR-B")
	b.Attributes = SlotState{Priority: 2, Tries: 1}.Attributes(b.Attributes)
	return d, old, changed
}

// TestGPTWriteCrashPoints cuts the power after every write of a GPT
// update (the last write torn in half): the disk must read as the old
// table or the new one, never fail and never mix them; the next update
// repairs whatever copy is damaged.
func TestGPTWriteCrashPoints(t *testing.T) {
	d0, old, changed := crashDisk(t)
	size := old.Size()
	probe := &memDisk{b: append([]byte(nil), d0.b...)}
	if err := UpdateAttributes(probe, size, "disk", changed); err != nil {
		t.Fatal(err)
	}
	total := probe.writes
	if total != 5 {
		t.Fatalf("an update made %d writes, want 5 (backup array and header, primary array and header, MBR)", total)
	}
	sawDamage := false
	for k := 0; k < total; k++ {
		d := &memDisk{b: append([]byte(nil), d0.b...), crash: true, crashAfter: k}
		UpdateAttributes(d, size, "disk", changed)
		d.crash = false
		got, err := ReadTableAt(d, size, "disk")
		if err != nil {
			t.Fatalf("crash after %d writes: the disk has no readable GPT: %v", k, err)
		}
		if !equalAttrs(attrsOf(got), attrsOf(old)) && !equalAttrs(attrsOf(got), attrsOf(changed)) {
			t.Fatalf("crash after %d writes: the table read is neither the old nor the new one", k)
		}
		if got.Copies.Err() != nil {
			sawDamage = true
			t.Logf("crash after %d writes: %v", k, got.Copies.Err())
		}
		// The next writer repairs the damaged copy from the valid one.
		if err := UpdateAttributes(d, size, "disk", got); err != nil {
			t.Fatalf("crash after %d writes: repairing update: %v", k, err)
		}
		again, err := ReadTableAt(d, size, "disk")
		if err != nil || again.Copies.Err() != nil {
			t.Fatalf("crash after %d writes: after the next update: %v %v", k, err, again.Copies.Err())
		}
		if !equalAttrs(attrsOf(again), attrsOf(got)) {
			t.Fatalf("crash after %d writes: the repairing update changed the table", k)
		}
	}
	if !sawDamage {
		t.Fatal("no crash point left a damaged copy: the test does not test what it says")
	}
}

// TestGPTWriteIOErrors fails each write of a GPT update once: the update
// reports the error, and the disk reads as the old or the new table.
func TestGPTWriteIOErrors(t *testing.T) {
	d0, old, changed := crashDisk(t)
	size := old.Size()
	for k := 1; k <= 5; k++ {
		d := &memDisk{b: append([]byte(nil), d0.b...), failAt: k}
		err := UpdateAttributes(d, size, "disk", changed)
		if !errors.Is(err, errInjected) {
			t.Fatalf("I/O error at write %d: update returned %v", k, err)
		}
		got, err := ReadTableAt(d, size, "disk")
		if err != nil {
			t.Fatalf("I/O error at write %d: %v", k, err)
		}
		if !equalAttrs(attrsOf(got), attrsOf(old)) && !equalAttrs(attrsOf(got), attrsOf(changed)) {
			t.Fatalf("I/O error at write %d: mixed table", k)
		}
	}
}

// TestCopiesReportDamage: each kind of damage to either copy is named,
// and the table still reads from the other.
func TestCopiesReportDamage(t *testing.T) {
	d0, old, changed := crashDisk(t)
	size := old.Size()
	last := size - SectorSize
	cases := []struct {
		name            string
		edit            func(d *memDisk)
		primary, backup bool
		differ          bool
	}{
		{"primary header byte", func(d *memDisk) { d.b[SectorSize+40] ^= 1 }, true, false, false},
		{"primary array byte", func(d *memDisk) { d.b[2*SectorSize+200] ^= 1 }, true, false, false},
		{"backup header byte", func(d *memDisk) { d.b[last+40] ^= 1 }, false, true, false},
		{"backup zeroed", func(d *memDisk) { clear(d.b[size-gptReservedSectors*SectorSize:]) }, false, true, false},
		{"backup from another table", func(d *memDisk) {
			other := &memDisk{b: append([]byte(nil), d.b...)}
			WriteTable(other, changed)
			copy(d.b[size-gptReservedSectors*SectorSize:], other.b[size-gptReservedSectors*SectorSize:])
		}, false, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &memDisk{b: append([]byte(nil), d0.b...)}
			c.edit(d)
			got, err := ReadTableAt(d, size, "disk")
			if err != nil {
				t.Fatal(err)
			}
			if (got.Copies.Primary != nil) != c.primary || (got.Copies.Backup != nil) != c.backup || got.Copies.Differ != c.differ {
				t.Fatalf("copies %+v", got.Copies)
			}
			if got.Copies.Err() == nil {
				t.Fatal("no damage reported")
			}
			if !equalAttrs(attrsOf(got), attrsOf(old)) {
				t.Fatal("the table read is not the intact copy's")
			}
		})
	}
}
