package slot

import (
	"errors"
	"fmt"
	"testing"

	"github.com/kiln-os/kiln/layout"
)

// st is a slot state: priority, tries, successful.
func st(priority, tries uint8, successful bool) layout.SlotState {
	return layout.SlotState{Priority: priority, Tries: tries, Successful: successful}
}

func slotTable(a, b layout.SlotState) *layout.Table {
	return &layout.Table{Sectors: 1 << 20, Partitions: []layout.Entry{
		{Number: 1, Label: "EFI-SYSTEM", Type: layout.TypeESP, Start: 2048, Sectors: 2048},
		{Number: 3, Label: "USR-A", Type: layout.TypeCoreOSUsr, Start: 4096, Sectors: 2048, Attributes: a.Attributes(0)},
		{Number: 4, Label: "USR-B", Type: layout.TypeCoreOSUsr, Start: 6144, Sectors: 2048, Attributes: b.Attributes(0)},
	}}
}

func lookup(t *layout.Table, label string) *layout.Entry {
	e, err := t.Lookup(label)
	if err != nil {
		panic(err)
	}
	return e
}

func TestNextFollowsGptprio(t *testing.T) {
	cases := []struct {
		a, b layout.SlotState
		want string // "" = none
	}{
		{st(1, 0, true), st(0, 0, false), "USR-A"},
		{st(1, 0, true), st(2, 1, false), "USR-B"}, // new update on trial
		{st(1, 0, true), st(2, 0, false), "USR-A"}, // trial used up: fall back
		{st(2, 0, true), st(2, 0, true), "USR-A"},  // tie: first in table order
		{st(0, 5, true), st(0, 0, true), ""},       // priority 0 never boots
		{st(1, 0, false), st(3, 0, false), ""},     // nothing bootable
		{st(15, 0, true), st(14, 15, false), "USR-A"},
	}
	for _, c := range cases {
		tb := slotTable(c.a, c.b)
		e, why, err := Next(tb)
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

// TestTryIsGptprioNext: Try picks as Next does and lowers the tries of a
// slot on trial, so its second boot falls back.
func TestTryIsGptprioNext(t *testing.T) {
	tb := slotTable(st(1, 0, true), st(2, 2, false))
	for i, want := range []string{"USR-B", "USR-B", "USR-A", "USR-A"} {
		e, err := Try(tb)
		if err != nil || e.Label != want {
			t.Fatalf("boot %d: %v %v, want %s", i+1, e, err, want)
		}
	}
	if b := lookup(tb, "USR-B").Slot(); b != (st(2, 0, false)) {
		t.Fatalf("USR-B after its tries: %v", b)
	}
	if a := lookup(tb, "USR-A").Slot(); a != (st(1, 0, true)) {
		t.Fatalf("a successful slot's bits changed: %v", a)
	}
}

func TestInferBootedAndRoles(t *testing.T) {
	cases := []struct {
		a, b   layout.SlotState
		booted string
		roles  string // roles of A, then B
	}{
		// Fresh image.
		{st(1, 0, true), st(0, 0, false), "USR-A", "booted next | "},
		// Update installed, not yet tried: A runs, B boots next.
		{st(1, 0, true), st(2, 1, false), "USR-A", "booted fallback | next on-trial"},
		// gptprio tried B: B is booted (or failed), A boots next.
		{st(1, 0, true), st(2, 0, false), "USR-B", "next fallback | booted on-trial"},
		// B marked good.
		{st(1, 0, true), st(2, 0, true), "USR-B", "fallback | booted next"},
		// A failed trial long ago, outranked by a good slot: not booted.
		{st(3, 0, true), st(2, 0, false), "USR-A", "booted next | on-trial"},
		// Nothing has booted.
		{st(0, 0, false), st(0, 0, false), "", " | "},
	}
	for _, c := range cases {
		tb := slotTable(c.a, c.b)
		e, how := InferBooted(tb)
		got := ""
		if e != nil {
			got = e.Label
		}
		if got != c.booted || how == "" {
			t.Errorf("%v %v: booted %q (%s), want %q", c.a, c.b, got, how, c.booted)
		}
		r := RolesOf(tb, e)
		if s := roleString(r[0]) + " | " + roleString(r[1]); s != c.roles {
			t.Errorf("%v %v: roles %q, want %q", c.a, c.b, s, c.roles)
		}
	}
}

func roleString(r Roles) string {
	s := ""
	for _, x := range []struct {
		on   bool
		name string
	}{{r.Booted, "booted"}, {r.Next, "next"}, {r.OnTrial, "on-trial"}, {r.Fallback, "fallback"}} {
		if x.on {
			if s != "" {
				s += " "
			}
			s += x.name
		}
	}
	return s
}

func TestMarkGood(t *testing.T) {
	cases := []struct {
		a, b   layout.SlotState
		mark   string
		wa, wb layout.SlotState
	}{
		// After B's trial boot: B good, priorities back to 1 and 2.
		{st(1, 0, true), st(2, 0, false), "USR-B", st(1, 0, true), st(2, 0, true)},
		// Priorities climbed: brought down, order kept.
		{st(9, 0, true), st(10, 0, false), "USR-B", st(1, 0, true), st(2, 0, true)},
		// The booted A is marked while B waits for its trial: B keeps
		// outranking A.
		{st(1, 0, true), st(2, 1, false), "USR-A", st(1, 0, true), st(2, 1, false)},
		// A slot out of the boot order stays out.
		{st(1, 0, true), st(0, 0, false), "USR-A", st(2, 0, true), st(0, 0, false)},
	}
	for _, c := range cases {
		tb := slotTable(c.a, c.b)
		if err := MarkGood(tb, lookup(tb, c.mark)); err != nil {
			t.Fatal(err)
		}
		if a, b := lookup(tb, "USR-A").Slot(), lookup(tb, "USR-B").Slot(); a != c.wa || b != c.wb {
			t.Errorf("%v %v mark %s: got %v %v, want %v %v", c.a, c.b, c.mark, a, b, c.wa, c.wb)
		}
	}
	// Over many updates priorities never reach the ceiling.
	tb := slotTable(st(1, 0, true), st(0, 0, false))
	target := "USR-B"
	for i := range 40 {
		e := lookup(tb, target)
		MarkUnbootable(e)
		if err := MarkTrial(tb, e); err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		booted, err := Try(tb)
		if err != nil || booted != e {
			t.Fatalf("update %d: booted %v %v", i, booted, err)
		}
		if err := MarkGood(tb, booted); err != nil {
			t.Fatal(err)
		}
		target = map[string]string{"USR-A": "USR-B", "USR-B": "USR-A"}[target]
	}
	if p := max(lookup(tb, "USR-A").Slot().Priority, lookup(tb, "USR-B").Slot().Priority); p > 3 {
		t.Fatalf("priority %d after 40 updates", p)
	}
	if err := MarkGood(tb, &tb.Partitions[0]); err == nil {
		t.Fatal("a non-USR partition was marked good")
	}
	if err := MarkGood(slotTable(st(1, 0, true), st(0, 0, false)), &slotTable(layout.SlotState{}, layout.SlotState{}).Partitions[2]); err == nil {
		t.Fatal("a slot with priority 0 was marked good")
	}
}

func TestRollback(t *testing.T) {
	running := func(tb *layout.Table, label string) Booted {
		if label == "" {
			return Booted{}
		}
		return Booted{Entry: lookup(tb, label), Running: true}
	}
	// Good booted slot: the other good slot gets a higher priority.
	tb := slotTable(st(1, 0, true), st(2, 0, true))
	n, changed, err := Rollback(tb, running(tb, "USR-B"))
	if err != nil || !changed || n.Label != "USR-A" || lookup(tb, "USR-A").Slot().Priority != 3 {
		t.Fatalf("rollback: %v %v %v %v", n, changed, err, lookup(tb, "USR-A").Slot())
	}
	// At the ceiling the booted slot steps down instead.
	tb = slotTable(st(3, 0, true), st(15, 0, true))
	n, _, err = Rollback(tb, running(tb, "USR-B"))
	if err != nil || n.Label != "USR-A" || lookup(tb, "USR-B").Slot().Priority != 14 || lookup(tb, "USR-A").Slot().Priority != 15 {
		t.Fatal(n, err)
	}
	// A booted trial slot is abandoned: out of the boot order.
	tb = slotTable(st(1, 0, true), st(2, 0, false))
	n, _, err = Rollback(tb, running(tb, "USR-B"))
	if err != nil || n.Label != "USR-A" || lookup(tb, "USR-B").Slot() != (layout.SlotState{}) {
		t.Fatalf("abandon trial: %v %v %v", n, err, lookup(tb, "USR-B").Slot())
	}
	// Nothing to go back to.
	tb = slotTable(st(1, 0, true), st(0, 0, false))
	if _, _, err := Rollback(tb, running(tb, "USR-A")); !errors.Is(err, ErrRollback) {
		t.Fatalf("rollback to a slot that never booted: %v", err)
	}
	tb = slotTable(st(0, 0, true), st(2, 0, false))
	if _, _, err := Rollback(tb, running(tb, "USR-B")); !errors.Is(err, ErrRollback) {
		t.Fatalf("abandoning a trial with the fallback out of the boot order: %v", err)
	}
	if _, _, err := Rollback(tb, Booted{}); !errors.Is(err, ErrRollback) {
		t.Fatalf("rollback with nothing booted: %v", err)
	}
}

// TestRollbackIsIdempotent runs rollback twice from each starting state,
// as the running system (the booted slot proven) and on an image (the
// booted slot inferred from the bits): the second run changes nothing
// and does not fail.
func TestRollbackIsIdempotent(t *testing.T) {
	for _, c := range []struct {
		name string
		a, b layout.SlotState
	}{
		{"good booted", st(1, 0, true), st(2, 0, true)},
		{"trial booted", st(1, 0, true), st(2, 0, false)},
		{"trial failed", st(2, 0, true), st(3, 0, false)},
		{"at the ceiling", st(3, 0, true), st(15, 0, true)},
	} {
		for _, image := range []bool{false, true} {
			tb := slotTable(c.a, c.b)
			booted := func() Booted {
				if !image {
					return Booted{Entry: lookup(tb, "USR-B"), Running: true}
				}
				return Booted{Entry: lookup(tb, "USR-B"), How: "named"}
			}
			if _, _, err := Rollback(tb, booted()); err != nil {
				t.Fatalf("%s (image %v): %v", c.name, image, err)
			}
			after := fmt.Sprint(tb.Partitions)
			runs := []Booted{booted()}
			if image && !c.b.Successful {
				// Unnamed, a re-run on the image infers the booted slot
				// anew (only two good slots need the name).
				e, how := InferBooted(tb)
				runs = append(runs, Booted{Entry: e, How: how})
			}
			for _, b := range runs {
				n, changed, err := Rollback(tb, b)
				if err != nil || changed || n.Label != "USR-A" || fmt.Sprint(tb.Partitions) != after {
					t.Errorf("%s (image %v), run again as %s: %v changed=%v %v\n%s\n%s", c.name, image, b.Entry.Label, n, changed, err, after, fmt.Sprint(tb.Partitions))
				}
			}
		}
	}
	// An image where both slots are good and nothing named: refused, not
	// guessed.
	tb := slotTable(st(1, 0, true), st(2, 0, true))
	e, how := InferBooted(tb)
	if _, _, err := Rollback(tb, Booted{Entry: e, How: how, Guess: true}); !errors.Is(err, ErrUnproven) {
		t.Errorf("a guess was rolled back: %v", err)
	}
}

// TestCheckSpare: the only slot that booted successfully, or the only
// bootable one, may not be written, taken out of the boot order or lose
// its successful bit.
func TestCheckSpare(t *testing.T) {
	for _, c := range []struct {
		a, b layout.SlotState
		ok   bool
	}{
		{st(1, 0, true), st(2, 0, true), true},    // two good slots
		{st(1, 0, true), st(0, 0, false), false},  // A the only good one
		{st(1, 0, true), st(0, 0, true), false},   // B good but out of the boot order
		{st(1, 0, true), st(2, 1, false), false},  // B on trial only: A the only good one
		{st(0, 0, false), st(2, 0, true), true},   // A empty
		{st(3, 1, false), st(0, 0, false), false}, // A the only bootable one
		{st(3, 0, false), st(2, 0, true), true},   // A's trial failed
	} {
		tb := slotTable(c.a, c.b)
		err := CheckSpare(tb, lookup(tb, "USR-A"), "writing it")
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrOnlyGood)) {
			t.Errorf("A %v, B %v: %v, want ok=%v", c.a, c.b, err, c.ok)
		}
	}
}

func TestMarkTrialChangesOnlyItsSlot(t *testing.T) {
	tb := slotTable(st(1, 0, true), st(0, 0, false))
	b := lookup(tb, "USR-B")
	if err := MarkTrial(tb, b); err != nil {
		t.Fatal(err)
	}
	if b.Slot() != (st(2, 1, false)) || lookup(tb, "USR-A").Slot() != (st(1, 0, true)) {
		t.Fatalf("after MarkTrial: %v %v", lookup(tb, "USR-A").Slot(), b.Slot())
	}
	// At the ceiling it refuses, and changes nothing.
	tb = slotTable(st(15, 0, true), st(0, 0, false))
	before := fmt.Sprint(tb.Partitions)
	if err := MarkTrial(tb, lookup(tb, "USR-B")); !errors.Is(err, ErrPriorityCeiling) {
		t.Fatalf("at the ceiling: %v", err)
	}
	if fmt.Sprint(tb.Partitions) != before {
		t.Fatal("a refused MarkTrial changed the table")
	}
	if err := MarkTrial(tb, &tb.Partitions[0]); err == nil {
		t.Fatal("a non-USR partition was put on trial")
	}
}
