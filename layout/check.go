package layout

import (
	"fmt"
)

// Difference is one way a disk does not match a layout.
type Difference struct {
	Partition string `json:"partition"` // "3 (USR-A)"
	Field     string `json:"field"`     // "start", "size", "type", "label", "guid", "presence"
	Want      string `json:"want"`
	Got       string `json:"got"`
}

func (d Difference) String() string {
	return fmt.Sprintf("partition %s: %s: want %s, got %s", d.Partition, d.Field, d.Want, d.Got)
}

// Check compares a table read from a disk with the layout placed on a disk
// of the same size: every layout partition must exist with its number,
// label, type, start, size and fixed GUID (derived GUIDs depend on the
// seed and are not compared); blank numbers and numbers the layout does
// not name must be unused. Slot attributes are state, not layout, and are
// not compared.
func (l *Layout) Check(disk *Table) ([]Difference, error) {
	want, err := l.Plan(disk.Size(), "check")
	if err != nil {
		// The layout does not fit this disk at all.
		own, ownErr := l.Plan(0, "check")
		if ownErr != nil {
			return nil, ownErr
		}
		return []Difference{{Partition: "(disk)", Field: "size",
			Want: fmt.Sprintf("at least %s for layout %s", FormatSize(own.Size()), l.Name),
			Got:  fmt.Sprintf("%s (%v)", FormatSize(disk.Size()), err)}}, nil
	}
	var diffs []Difference
	got := map[int]*Entry{}
	for i := range disk.Partitions {
		got[disk.Partitions[i].Number] = &disk.Partitions[i]
	}
	for _, p := range l.Partitions {
		g := got[p.Number]
		delete(got, p.Number)
		if p.Blank {
			if g != nil {
				diffs = append(diffs, Difference{p.Name(), "presence", "blank (no entry)", "partition " + g.Name()})
			}
			continue
		}
		if g == nil {
			diffs = append(diffs, Difference{p.Name(), "presence", "present", "missing"})
			continue
		}
		var w *Entry
		for i := range want.Partitions {
			if want.Partitions[i].Number == p.Number {
				w = &want.Partitions[i]
			}
		}
		add := func(field, wantV, gotV string) {
			if wantV != gotV {
				diffs = append(diffs, Difference{p.Name(), field, wantV, gotV})
			}
		}
		add("label", w.Label, g.Label)
		add("type", TypeName(w.Type), TypeName(g.Type))
		add("start", fmt.Sprintf("sector %d", w.Start), fmt.Sprintf("sector %d", g.Start))
		add("size", fmt.Sprintf("%d sectors (%s)", w.Sectors, FormatSize(w.Size())), fmt.Sprintf("%d sectors (%s)", g.Sectors, FormatSize(g.Size())))
		if !p.GUID.IsZero() {
			add("guid", p.GUID.String(), g.GUID.String())
		}
	}
	for n := 1; n <= 128; n++ {
		if g := got[n]; g != nil {
			diffs = append(diffs, Difference{g.Name(), "presence", "absent (not in the layout)", "present"})
		}
	}
	return diffs, nil
}
