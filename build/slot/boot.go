package slot

import (
	"errors"
	"fmt"

	"github.com/kiln-os/kiln/build/version"
	"github.com/kiln-os/kiln/layout"
)

// MaxUnconfirmedBoots is how many boots in a row a good slot may make
// without `kiln slot mark-good` confirming one of them before the boot
// path treats it as failed (when another slot can boot).
//
// Every boot is counted, not only a trial's: for a successful slot the
// boot path uses the tries bits to count boots not yet confirmed
// (gptprio ignores tries of a successful slot, so GRUB and cgpt still
// read the slot as good). The boot path raises the count before booting
// the slot, and mark-good, which the OS runs on every boot once it is up,
// sets it back to 0. A slot whose count is above 0 when it is chosen did
// not come up last time — dm-verity may have found a corrupt block and
// restarted the machine — so the boot path reads its whole verity tree
// first and refuses it if a block is bad: a good slot that went bad falls
// back on the second boot at the latest.
const MaxUnconfirmedBoots = 3

// Unconfirmed returns how many boots of a successful slot mark-good has
// not confirmed (0 for a slot that is not successful).
func Unconfirmed(s layout.SlotState) int {
	if !s.Successful {
		return 0
	}
	return int(s.Tries)
}

// Attempt is what the boot path is about to boot.
type Attempt struct {
	Entry *layout.Entry
	// FullCheck asks for the slot's whole dm-verity tree to be read
	// against its signed root before it boots: a slot on trial, or a good
	// slot whose last boot was not confirmed.
	FullCheck bool
	// Why says in a few words why the slot is booted and checked so.
	Why string
	// Demoted lists the good slots that failed MaxUnconfirmedBoots
	// boots in a row and lost their successful bit on the way.
	Demoted []string
}

// Begin is the boot path's rule, applied to t in memory (the caller
// writes t back before booting): gptprio's choice among the slots skip
// does not exclude; a slot on trial has its tries lowered by one; a good
// slot has its unconfirmed boots raised by one, and when it already has
// MaxUnconfirmedBoots and another slot can boot it loses its successful
// bit (its trial failed) and the choice runs again.
func Begin(t *layout.Table, skip func(*layout.Entry) bool) (*Attempt, error) {
	a := &Attempt{}
	for {
		e := chooseAmong(t, skip)
		if e == nil {
			return a, fmt.Errorf("%w: every USR slot that is left has priority 0 or neither tries left nor a successful boot", ErrNoBootableSlot)
		}
		s := e.Slot()
		a.Entry = e
		if !s.Successful {
			s.Tries--
			e.Attributes = s.Attributes(e.Attributes)
			a.FullCheck, a.Why = true, fmt.Sprintf("on trial, %d tries left after this boot", s.Tries)
			return a, nil
		}
		n := int(s.Tries)
		if n >= MaxUnconfirmedBoots && chooseAmong(t, func(o *layout.Entry) bool { return o == e || skip != nil && skip(o) }) != nil {
			s.Successful, s.Tries = false, 0
			e.Attributes = s.Attributes(e.Attributes)
			a.Demoted = append(a.Demoted, fmt.Sprintf("%s: %d boots in a row without mark-good", e.Label, n))
			continue
		}
		if s.Tries < 15 {
			s.Tries++
		}
		e.Attributes = s.Attributes(e.Attributes)
		a.Why = "good"
		if n > 0 {
			a.FullCheck = true
			a.Why = fmt.Sprintf("good, but its last %d boot(s) were not confirmed by mark-good", n)
		}
		return a, nil
	}
}

// chooseAmong is gptprio's rule over the slots skip does not exclude.
func chooseAmong(t *layout.Table, skip func(*layout.Entry) bool) *layout.Entry {
	var best *layout.Entry
	for _, e := range t.Slots() {
		if skip != nil && skip(e) {
			continue
		}
		s := e.Slot()
		if s.Bootable() && (best == nil || s.Priority > best.Slot().Priority) {
			best = e
		}
	}
	return best
}

// Floor is the boot-time version floor: the chooser refuses a slot whose
// signed version is below it. It is the highest rollback floor that the
// signed record of a good (successful) slot declares, and, where the node
// has a TPM, the floor kept there, which only rises (see docs/boot.md).
// The zero value is no floor.
type Floor struct {
	Version string // "" for none
	From    string // where it comes from, for messages: "USR-B's release 2.0.0", "the TPM"
}

// Raise returns the higher of f and (v, from); v "" is no floor. A
// version that does not parse is an error.
func (f Floor) Raise(v, from string) (Floor, error) {
	if v == "" {
		return f, nil
	}
	nv, err := version.Parse(v)
	if err != nil {
		return f, fmt.Errorf("floor from %s: %w", from, err)
	}
	if f.Version != "" {
		cur, err := version.Parse(f.Version)
		if err != nil {
			return f, fmt.Errorf("floor from %s: %w", f.From, err)
		}
		if nv.Compare(cur) <= 0 {
			return f, nil
		}
	}
	return Floor{Version: v, From: from}, nil
}

// Admits reports whether a release of version v may boot under the
// floor; an error says why not.
func (f Floor) Admits(v string) error {
	if f.Version == "" {
		return nil
	}
	fv, err := version.Parse(f.Version)
	if err != nil {
		return fmt.Errorf("the version floor %q (%s): %w", f.Version, f.From, err)
	}
	rv, err := version.Parse(v)
	if err != nil {
		return fmt.Errorf("release %q cannot be ordered against the version floor %s: %w", v, f.Version, err)
	}
	if rv.Compare(fv) < 0 {
		return fmt.Errorf("%w: release %s is below the version floor %s (%s)", ErrBelowFloor, v, f.Version, f.From)
	}
	return nil
}

// ErrBelowFloor is returned for a release older than the version floor.
var ErrBelowFloor = errors.New("slot: below the version floor")

// DiskFloor returns the floor the good slots of a disk declare: records
// maps each slot to its release record, already verified (nil: none or
// not verified, which declares nothing).
func DiskFloor(t *layout.Table, records map[*layout.Entry]*Record) (Floor, error) {
	var f Floor
	for _, e := range t.Slots() {
		r := records[e]
		if r == nil || !e.Slot().Successful || r.RollbackFloor == "" {
			continue
		}
		var err error
		if f, err = f.Raise(r.RollbackFloor, fmt.Sprintf("declared by %s's release %s, marked good", e.Label, r.Version)); err != nil {
			return Floor{}, err
		}
	}
	return f, nil
}
