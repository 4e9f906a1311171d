package layout

import (
	"errors"
	"testing"
)

func TestSlotAttributesRoundTrip(t *testing.T) {
	for p := uint8(0); p < 16; p++ {
		for tr := uint8(0); tr < 16; tr++ {
			for _, s := range []bool{false, true} {
				st := SlotState{p, tr, s}
				// Other bits (required, legacy-boot, 57..63) survive.
				other := uint64(0x5) | uint64(0xfe)<<56
				a := st.Attributes(other)
				if got := SlotFromAttributes(a); got != st {
					t.Fatalf("%v -> %#x -> %v", st, a, got)
				}
				if a&^attrSlotMask != other&^attrSlotMask {
					t.Fatalf("%v clobbered other bits: %#x", st, a)
				}
			}
		}
	}
	// The exact bits: priority 5 tries 3 successful -> 0x0135 << 48.
	if a := (SlotState{5, 3, true}).Attributes(0); a != 0x0135<<48 {
		t.Fatalf("attributes %#x", a)
	}
}

func slotTable(a, b SlotState) *Table {
	return &Table{Sectors: 1 << 20, Partitions: []Entry{
		{Number: 1, Label: "EFI-SYSTEM", Type: TypeESP, Start: 2048, Sectors: 2048},
		{Number: 3, Label: "USR-A", Type: TypeCoreOSUsr, Start: 4096, Sectors: 2048, Attributes: a.Attributes(0)},
		{Number: 4, Label: "USR-B", Type: TypeCoreOSUsr, Start: 6144, Sectors: 2048, Attributes: b.Attributes(0)},
	}}
}

func TestNextSlotFollowsGptprio(t *testing.T) {
	cases := []struct {
		a, b SlotState
		want string // "" = none
	}{
		{SlotState{1, 0, true}, SlotState{0, 0, false}, "USR-A"},
		{SlotState{1, 0, true}, SlotState{2, 1, false}, "USR-B"}, // new update on trial
		{SlotState{1, 0, true}, SlotState{2, 0, false}, "USR-A"}, // trial used up: fall back
		{SlotState{2, 0, true}, SlotState{2, 0, true}, "USR-A"},  // tie: first in table order
		{SlotState{0, 5, true}, SlotState{0, 0, true}, ""},       // priority 0 never boots
		{SlotState{1, 0, false}, SlotState{3, 0, false}, ""},     // nothing bootable
		{SlotState{15, 0, true}, SlotState{14, 15, false}, "USR-A"},
	}
	for _, c := range cases {
		tb := slotTable(c.a, c.b)
		e, why, err := tb.NextSlot()
		if c.want == "" {
			if !errors.Is(err, ErrNoBootableSlot) {
				t.Errorf("%v %v: got %v %v, want no bootable slot", c.a, c.b, e, err)
			}
			continue
		}
		if err != nil || e.Label != c.want || why == "" {
			t.Errorf("%v %v: got %v %q %v, want %s", c.a, c.b, e, why, err, c.want)
		}
	}
}

func TestMarkGoodAndRollback(t *testing.T) {
	tb := slotTable(SlotState{1, 0, true}, SlotState{2, 1, false})
	e, err := tb.MarkGood()
	if err != nil || e.Label != "USR-B" {
		t.Fatalf("mark-good: %v %v", e, err)
	}
	if s := e.Slot(); s != (SlotState{2, 0, true}) {
		t.Fatalf("USR-B after mark-good: %v", s)
	}
	e, err = tb.Rollback()
	if err != nil || e.Label != "USR-A" {
		t.Fatalf("rollback: %v %v", e, err)
	}
	if n, _, _ := tb.NextSlot(); n.Label != "USR-A" || n.Slot().Priority != 3 {
		t.Fatalf("after rollback next is %v", n)
	}
	// Rolling back to a slot that never booted is refused.
	tb = slotTable(SlotState{1, 0, true}, SlotState{0, 0, false})
	if _, err := tb.Rollback(); !errors.Is(err, ErrRollback) {
		t.Fatalf("rollback to unbooted slot: %v", err)
	}
	// Priority 15 is the ceiling: the current slot steps down instead.
	tb = slotTable(SlotState{15, 0, true}, SlotState{3, 0, true})
	e, err = tb.Rollback()
	if err != nil || e.Label != "USR-B" {
		t.Fatal(e, err)
	}
	if a, _ := tb.Lookup("USR-A"); a.Slot().Priority != 14 || e.Slot().Priority != 15 {
		t.Fatalf("priorities %v %v", a.Slot(), e.Slot())
	}
}

func TestMarkTrialAndUnbootable(t *testing.T) {
	tb := slotTable(SlotState{1, 0, true}, SlotState{0, 0, false})
	b, _ := tb.Lookup("USR-B")
	if err := tb.MarkTrial(b); err != nil {
		t.Fatal(err)
	}
	if s := b.Slot(); s != (SlotState{2, 1, false}) {
		t.Fatalf("USR-B on trial: %v", s)
	}
	if n, _, _ := tb.NextSlot(); n != b {
		t.Fatalf("next is %v", n)
	}
	tb.MarkUnbootable(b)
	if n, _, _ := tb.NextSlot(); n.Label != "USR-A" || b.Slot() != (SlotState{}) {
		t.Fatalf("after unbootable: next %v, USR-B %v", n, b.Slot())
	}
	// At the ceiling the other slot steps down.
	tb = slotTable(SlotState{15, 0, true}, SlotState{0, 0, false})
	b, _ = tb.Lookup("USR-B")
	tb.MarkTrial(b)
	a, _ := tb.Lookup("USR-A")
	if a.Slot().Priority != 14 || b.Slot().Priority != 15 {
		t.Fatalf("A %v B %v", a.Slot(), b.Slot())
	}
	e, _ := tb.Lookup("EFI-SYSTEM")
	if err := tb.MarkTrial(e); err == nil {
		t.Fatal("a non-USR partition was marked")
	}
}

func TestActiveSlot(t *testing.T) {
	cases := []struct {
		a, b SlotState
		want string
	}{
		{SlotState{1, 0, true}, SlotState{0, 0, false}, "USR-A"},
		{SlotState{1, 0, true}, SlotState{2, 1, false}, "USR-A"},  // B on trial: A is what runs
		{SlotState{1, 0, true}, SlotState{2, 0, true}, "USR-B"},   // B marked good
		{SlotState{0, 0, false}, SlotState{2, 1, false}, "USR-B"}, // nothing good yet: the next boot
	}
	for _, c := range cases {
		e, err := slotTable(c.a, c.b).ActiveSlot()
		if err != nil || e.Label != c.want {
			t.Errorf("%v %v: %v %v, want %s", c.a, c.b, e, err, c.want)
		}
	}
}
