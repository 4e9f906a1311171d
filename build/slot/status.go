package slot

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// Booted is the booted slot of a disk and how it was found.
type Booted struct {
	Entry *layout.Entry // nil: none
	How   string
	// Running is set when the running system booted from it, not inferred
	// from the slot bits.
	Running bool
	// Guess is set when it was inferred from the slot bits and another
	// slot could as well have booted last (two good slots).
	Guess bool
}

// FindBooted returns the booted slot of disk: the running system's when
// disk is its disk, else the one the slot bits tell (InferBooted).
func FindBooted(sys System, disk *os.File, t *layout.Table) (Booted, error) {
	e, how, err := sys.Booted(disk, t)
	if err != nil {
		return Booted{}, err
	}
	if e != nil {
		return Booted{Entry: e, How: how, Running: true}, nil
	}
	e, how = InferBooted(t)
	b := Booted{Entry: e, How: how}
	if e != nil && e.Slot().Successful {
		for _, o := range t.Slots() {
			if o != e && o.Slot().Successful && o.Slot().Priority > 0 {
				b.Guess = true
			}
		}
	}
	return b, nil
}

// Info is one USR slot as Status reports it.
type Info struct {
	Label  string           `json:"label"`
	Number int              `json:"number"`
	GUID   layout.GUID      `json:"guid"`
	State  layout.SlotState `json:"state"`
	Roles
	// Version is the release in the slot's record ("" when it has none).
	Version string `json:"version,omitempty"`
	// Record says whether the record is there and its signature good:
	// "verified", "not checked (no key)", "unsigned", "none" or
	// "INVALID: …".
	Record string `json:"record"`
	// RollbackFloor is the floor the release declares ("" for none).
	RollbackFloor string `json:"rollback_floor,omitempty"`
	// Unconfirmed counts the boots of a good slot that mark-good has not
	// confirmed (see MaxUnconfirmedBoots).
	Unconfirmed int `json:"unconfirmed_boots,omitempty"`
	// BelowFloor is set when the release is below the version floor: the
	// boot path refuses it.
	BelowFloor bool `json:"below_floor,omitempty"`
	// Empty is set when the slot holds no release (no filesystem with a
	// verity tree and record): a blank disk's slots, or a slot never
	// written.
	Empty bool `json:"empty,omitempty"`
}

// Status is the A/B state of a disk.
type Status struct {
	Booted    string `json:"booted,omitempty"`
	BootedHow string `json:"booted_how"`
	Running   bool   `json:"running"`
	Next      string `json:"next,omitempty"`
	NextWhy   string `json:"next_why"`
	// Floor is the version floor the disk's good slots declare (a TPM may
	// hold a higher one, which only the node's boot path reads).
	Floor     string `json:"floor,omitempty"`
	FloorFrom string `json:"floor_from,omitempty"`
	Slots     []Info `json:"slots"`
}

// ReadStatus reads every slot's release record from the disk r laid out as
// t and checks its signature with v (nil: not checked).
func ReadStatus(r io.ReaderAt, t *layout.Table, b Booted, v sign.Verifier) *Status {
	s := &Status{BootedHow: b.How, Running: b.Running, Slots: []Info{}}
	if b.Entry != nil {
		s.Booted = b.Entry.Label
	}
	next, why, err := Next(t)
	if err != nil {
		s.NextWhy = err.Error()
	} else {
		s.Next, s.NextWhy = next.Label, why
	}
	roles := RolesOf(t, b.Entry)
	declared := map[*layout.Entry]*Record{}
	for i, e := range t.Slots() {
		in := Info{Label: e.Label, Number: e.Number, GUID: e.GUID, State: e.Slot(), Roles: roles[i], Unconfirmed: Unconfirmed(e.Slot())}
		in.TrialFailed = b.Running && e != b.Entry && OnTrial(e.Slot()) && e.Slot().Tries == 0
		rec, err := Read(io.NewSectionReader(r, e.Offset(), e.Size()), e.Size())
		switch {
		case errors.Is(err, ErrNoVerity) || errors.Is(err, ErrNoRecord):
			in.Record, in.Empty = "none", true
		case err != nil:
			in.Record = "INVALID: " + err.Error()
		default:
			in.Version, in.RollbackFloor = rec.Record.Version, rec.Record.RollbackFloor
			switch {
			case len(rec.Signature) == 0:
				in.Record = "unsigned"
			case v == nil:
				in.Record = "not checked (no key)"
			default:
				if err := rec.Verify(v); err != nil {
					in.Record = fmt.Sprintf("INVALID: %v", err)
				} else {
					in.Record = "verified"
				}
			}
			if in.Record == "verified" || in.Record == "not checked (no key)" {
				declared[e] = &rec.Record
			}
		}
		s.Slots = append(s.Slots, in)
	}
	// An empty slot is not what booted, whatever its bits say (a blank
	// disk's layout marks USR-A good): only the running system can say it
	// booted from one.
	for i := range s.Slots {
		if in := &s.Slots[i]; in.Empty && in.Booted && !b.Running {
			in.Booted = false
			s.Booted, s.BootedHow = "", "no slot holds a release yet"
		}
	}
	if f, err := DiskFloor(t, declared); err == nil && f.Version != "" {
		s.Floor, s.FloorFrom = f.Version, f.From
		if v == nil {
			s.FloorFrom += " (signature not checked: no key)"
		}
		for i := range s.Slots {
			in := &s.Slots[i]
			in.BelowFloor = in.Version != "" && errors.Is(f.Admits(in.Version), ErrBelowFloor)
		}
	}
	return s
}
