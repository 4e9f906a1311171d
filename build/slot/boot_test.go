package slot

import (
	"errors"
	"testing"

	"github.com/kiln-os/kiln/layout"
)

// TestBeginCountsEveryBoot follows a good slot through boots that never
// reach mark-good: the first boots it unchecked, the next ones read the
// whole tree, and after MaxUnconfirmedBoots the other good slot takes
// over; mark-good resets the count.
func TestBeginCountsEveryBoot(t *testing.T) {
	tb := slotTable(st(1, 0, true), st(2, 0, true))
	var checks []bool
	for i := 0; i < MaxUnconfirmedBoots; i++ {
		a, err := Begin(tb, nil)
		if err != nil || a.Entry.Label != "USR-B" {
			t.Fatalf("boot %d: %v %v", i+1, a, err)
		}
		checks = append(checks, a.FullCheck)
		if got := Unconfirmed(a.Entry.Slot()); got != i+1 {
			t.Fatalf("boot %d: %d unconfirmed boots, want %d", i+1, got, i+1)
		}
	}
	if checks[0] || !checks[1] || !checks[2] {
		t.Errorf("full checks %v: want none on the first boot of a good slot, then on every unconfirmed one", checks)
	}
	a, err := Begin(tb, nil)
	if err != nil || a.Entry.Label != "USR-A" || len(a.Demoted) != 1 {
		t.Fatalf("after %d unconfirmed boots: %+v %v, want USR-A with USR-B demoted", MaxUnconfirmedBoots, a, err)
	}
	if s := lookup(tb, "USR-B").Slot(); s.Successful || s.Tries != 0 || s.Priority != 2 {
		t.Errorf("demoted USR-B: %v", s)
	}
	// USR-A came up: mark-good resets its count.
	if err := MarkGood(tb, lookup(tb, "USR-A")); err != nil {
		t.Fatal(err)
	}
	if s := lookup(tb, "USR-A").Slot(); Unconfirmed(s) != 0 || !s.Successful {
		t.Errorf("after mark-good USR-A %v", s)
	}
}

// TestBeginKeepsTheOnlySlot: a good slot that never confirms keeps
// booting when no other slot can.
func TestBeginKeepsTheOnlySlot(t *testing.T) {
	tb := slotTable(st(1, 0, true), st(0, 0, false))
	for i := 0; i < 20; i++ {
		a, err := Begin(tb, nil)
		if err != nil || a.Entry.Label != "USR-A" || len(a.Demoted) != 0 {
			t.Fatalf("boot %d: %+v %v", i+1, a, err)
		}
	}
	if s := lookup(tb, "USR-A").Slot(); s.Tries != 15 || !s.Successful {
		t.Errorf("USR-A %v: want the count held at 15, still successful", s)
	}
}

func TestBeginTrialAndSkip(t *testing.T) {
	tb := slotTable(st(1, 0, true), st(2, 1, false))
	a, err := Begin(tb, nil)
	if err != nil || a.Entry.Label != "USR-B" || !a.FullCheck || a.Entry.Slot().Tries != 0 {
		t.Fatalf("trial: %+v %v", a, err)
	}
	skipB := func(e *layout.Entry) bool { return e.Label == "USR-B" }
	tb = slotTable(st(1, 0, true), st(2, 1, false))
	if a, err = Begin(tb, skipB); err != nil || a.Entry.Label != "USR-A" {
		t.Fatalf("with USR-B skipped: %+v %v", a, err)
	}
	if lookup(tb, "USR-B").Slot() != st(2, 1, false) {
		t.Errorf("a skipped slot changed: %v", lookup(tb, "USR-B").Slot())
	}
	skipAll := func(*layout.Entry) bool { return true }
	if _, err = Begin(tb, skipAll); !errors.Is(err, ErrNoBootableSlot) {
		t.Errorf("all skipped: %v", err)
	}
}

func TestFloor(t *testing.T) {
	tb := slotTable(st(1, 0, true), st(2, 0, true))
	a, b := lookup(tb, "USR-A"), lookup(tb, "USR-B")
	recs := map[*layout.Entry]*Record{a: {Version: "1.0.0"}, b: {Version: "2.0.0", RollbackFloor: "2.0.0-rc.10"}}
	f, err := DiskFloor(tb, recs)
	if err != nil || f.Version != "2.0.0-rc.10" {
		t.Fatalf("DiskFloor = %+v, %v", f, err)
	}
	for v, ok := range map[string]bool{"1.0.0": false, "2.0.0-rc.9": false, "2.0.0-rc.10": true, "2.0.0": true, "10.0.0": true} {
		if err := f.Admits(v); (err == nil) != ok || (!ok && !errors.Is(err, ErrBelowFloor)) {
			t.Errorf("Admits(%s) = %v, want ok=%v", v, err, ok)
		}
	}
	// A slot on trial declares nothing yet.
	b.Attributes = st(3, 1, false).Attributes(b.Attributes)
	if f, _ := DiskFloor(tb, recs); f.Version != "" {
		t.Errorf("a trial slot's floor counted: %+v", f)
	}
	// The TPM's floor only rises.
	g, _ := Floor{Version: "3.0.0", From: "the TPM"}.Raise("2.0.0", "x")
	if g.Version != "3.0.0" || g.From != "the TPM" {
		t.Errorf("Raise lowered the floor: %+v", g)
	}
	if _, err := (Floor{}).Raise("2.0", "x"); err == nil {
		t.Error("a floor that is not SemVer was taken")
	}
}
