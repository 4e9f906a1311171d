// Package slot is kiln's one model of the A/B boot rules: which USR slot
// Container Linux GRUB's gptprio boots next, which slot is booted, which
// is on trial and which is the fallback; the changes a slot's state may
// go through (on trial, marked good, rolled back); and each slot's signed
// release record. The CLI, payload apply and the boot path call this
// package; none of them re-derives the rules.
//
// Slot state lives in the GPT attribute bits of the USR partitions (see
// layout.SlotState). gptprio (coreos/grub grub-core/commands/gptprio.c)
// picks, in table order, the USR partition with the highest priority that
// has tries left or booted successfully (a later one wins only with a
// strictly higher priority), and when the chosen slot has tries left it
// lowers them by one and writes the GPT *before* booting it. A slot on
// trial therefore boots with its tries already at 0: "the slot that boots
// next" and "the slot that is booted" differ, and this package keeps them
// apart.
package slot

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kiln-os/kiln/layout"
)

// ErrNoBootableSlot means no slot has a priority above zero together with
// tries left or a successful boot.
var ErrNoBootableSlot = errors.New("slot: no bootable slot")

// Next returns the slot gptprio boots next and why.
func Next(t *layout.Table) (*layout.Entry, string, error) {
	best := choose(t, nil)
	if best == nil {
		return nil, "", fmt.Errorf("%w: every USR slot has priority 0 or neither tries left nor a successful boot", ErrNoBootableSlot)
	}
	s := best.Slot()
	why := fmt.Sprintf("highest priority (%d) among bootable slots, on trial with %d tries left", s.Priority, s.Tries)
	if s.Successful {
		why = fmt.Sprintf("highest priority (%d) among bootable slots, marked successful", s.Priority)
	}
	for _, o := range t.Slots() {
		if o != best && o.Slot().Priority == s.Priority && o.Slot().Bootable() {
			why += fmt.Sprintf("; ties with %s, first in table order wins", o.Label)
		}
	}
	return best, why, nil
}

// choose is gptprio's rule over the slots other than skip.
func choose(t *layout.Table, skip *layout.Entry) *layout.Entry {
	var best *layout.Entry
	for _, e := range t.Slots() {
		if e == skip {
			continue
		}
		s := e.Slot()
		if (s.Tries > 0 || s.Successful) && s.Priority > 0 && (best == nil || s.Priority > best.Slot().Priority) {
			best = e
		}
	}
	return best
}

// Try does what gptprio.next does at boot: it chooses the next slot and,
// when that slot has tries left, lowers them by one. The caller writes the
// table back before booting the slot.
func Try(t *layout.Table) (*layout.Entry, error) {
	e, _, err := Next(t)
	if err != nil {
		return nil, err
	}
	if s := e.Slot(); s.Tries > 0 {
		s.Tries--
		e.Attributes = s.Attributes(e.Attributes)
	}
	return e, nil
}

// OnTrial reports whether a slot is in the boot order without having
// booted successfully: waiting to be tried (tries left) or tried (tries
// used up, not marked good).
func OnTrial(s layout.SlotState) bool { return s.Priority > 0 && !s.Successful }

// InferBooted tells, from the slot bits alone, which slot booted last:
// the slot gptprio tried last — on trial with its tries used up and a
// priority above every successful slot's, which only gptprio's own
// decrement leaves — or else the successful slot with the highest
// priority. It returns nil when no slot is either. A tried slot whose
// boot failed looks the same as one that is running: a running system
// knows better (see System.Booted).
func InferBooted(t *layout.Table) (*layout.Entry, string) {
	var bestGood *layout.Entry
	for _, e := range t.Slots() {
		if s := e.Slot(); s.Successful && s.Priority > 0 && (bestGood == nil || s.Priority > bestGood.Slot().Priority) {
			bestGood = e
		}
	}
	var tried *layout.Entry
	for _, e := range t.Slots() {
		s := e.Slot()
		if OnTrial(s) && s.Tries == 0 && (bestGood == nil || s.Priority > bestGood.Slot().Priority) &&
			(tried == nil || s.Priority > tried.Slot().Priority) {
			tried = e
		}
	}
	switch {
	case tried != nil:
		return tried, fmt.Sprintf("gptprio tried it last (priority %d, tries used up, not marked good): its boot is under way, or failed", tried.Slot().Priority)
	case bestGood != nil:
		return bestGood, fmt.Sprintf("the successful slot with the highest priority (%d)", bestGood.Slot().Priority)
	}
	return nil, "no slot has booted successfully or been tried"
}

// Roles are what a slot is to the boot order.
type Roles struct {
	// Booted: the slot the system runs from (known on the running
	// system, else inferred: see InferBooted).
	Booted bool `json:"booted"`
	// Next: the slot gptprio boots next.
	Next bool `json:"next"`
	// OnTrial: in the boot order but not yet marked good.
	OnTrial bool `json:"on_trial"`
	// Fallback: the successful slot that boots when the booted (or
	// next) slot is abandoned.
	Fallback bool `json:"fallback"`
	// TrialFailed: on a running system, a slot on trial whose tries are
	// used up while another slot runs: its boot failed and the firmware
	// path fell back.
	TrialFailed bool `json:"trial_failed"`
}

// RolesOf returns the roles of every USR slot, in table order, given the
// booted slot (nil when unknown). The fallback is the successful slot that
// boots when the slot on trial (booted or next) fails, or, with no slot on
// trial, the one a rollback would boot.
func RolesOf(t *layout.Table, booted *layout.Entry) []Roles {
	next, _, _ := Next(t)
	current := booted
	switch {
	case booted != nil && OnTrial(booted.Slot()):
	case next != nil && OnTrial(next.Slot()):
		current = next
	case current == nil:
		current = next
	}
	var fallback *layout.Entry
	for _, e := range t.Slots() {
		if s := e.Slot(); e != current && s.Successful && s.Priority > 0 && (fallback == nil || s.Priority > fallback.Slot().Priority) {
			fallback = e
		}
	}
	var out []Roles
	for _, e := range t.Slots() {
		out = append(out, Roles{Booted: e == booted, Next: e == next, OnTrial: OnTrial(e.Slot()), Fallback: e == fallback})
	}
	return out
}

// Other returns the A/B partner of slot e, or an error when the table
// does not have exactly two slots.
func Other(t *layout.Table, e *layout.Entry) (*layout.Entry, error) {
	slots := t.Slots()
	if len(slots) != 2 {
		return nil, fmt.Errorf("slot: want 2 USR slots, the table has %d", len(slots))
	}
	if slots[0] == e {
		return slots[1], nil
	}
	return slots[0], nil
}

// MarkGood records that slot e booted successfully: successful=1,
// tries=0. When e is the slot with the highest priority (as after a good
// trial boot), it also keeps priorities from climbing towards the ceiling
// of 15 over many updates: e gets priority 2 and every other slot in the
// boot order priority 1, which keeps the order, so the next update's trial
// slot gets 3. A slot that outranks e (an update waiting for its trial)
// keeps its priority, and so does e.
func MarkGood(t *layout.Table, e *layout.Entry) error {
	if e.Type != layout.TypeCoreOSUsr {
		return fmt.Errorf("slot: partition %s is not a USR slot", e.Name())
	}
	s := e.Slot()
	if s.Priority == 0 {
		return fmt.Errorf("slot: %s has priority 0 (out of the boot order); it cannot have booted", e.Label)
	}
	highest := true
	for _, o := range t.Slots() {
		if o != e && o.Slot().Priority >= s.Priority {
			highest = false
		}
	}
	if highest {
		for _, o := range t.Slots() {
			if os := o.Slot(); o != e && os.Priority > 0 {
				os.Priority = 1
				o.Attributes = os.Attributes(o.Attributes)
			}
		}
		s.Priority = 2
	}
	s.Successful, s.Tries = true, 0
	e.Attributes = s.Attributes(e.Attributes)
	return nil
}

// ErrRollback is returned when there is nothing to roll back to.
var ErrRollback = errors.New("slot: cannot roll back")

// ErrUnproven is returned when a command needs to know which slot booted
// and the disk cannot tell: an image with two slots either of which may
// have booted last.
var ErrUnproven = errors.New("slot: the booted slot cannot be told")

// Rollback abandons the booted slot b.Entry so that the other slot boots
// next. A slot on trial leaves the boot order (priority 0); a good slot
// yields: the other slot, which must have booted successfully, gets a
// priority above it. It returns the slot that boots next and whether
// anything changed: running it again, or after a kill whose write had
// landed, changes nothing. A booted slot already out of the boot order,
// with the other slot good and next, is that state: nothing to do. When
// the booted slot is only inferred from the bits and both slots could
// have booted last, it refuses (ErrUnproven) rather than guess.
func Rollback(t *layout.Table, b Booted) (*layout.Entry, bool, error) {
	booted := b.Entry
	if booted == nil {
		return nil, false, fmt.Errorf("%w: no slot is booted", ErrRollback)
	}
	o, err := Other(t, booted)
	if err != nil {
		return nil, false, err
	}
	bs, os := booted.Slot(), o.Slot()
	good := func(s layout.SlotState) bool { return s.Successful && s.Priority > 0 }
	next, _, _ := Next(t)
	switch {
	case bs.Priority == 0 && good(os) && next == o:
		return o, false, nil // abandoned already
	case !b.Running && good(bs) && next == booted && !os.Bootable():
		// An image whose only bootable slot is good: the state a
		// rollback leaves (or nothing to roll back); either way, nothing
		// to do.
		return booted, false, nil
	case !b.Running && b.Guess:
		return nil, false, fmt.Errorf("%w: %s and %s both booted successfully and the disk is not the running system's; name the slot to abandon", ErrUnproven, booted.Label, o.Label)
	case !os.Successful:
		return nil, false, fmt.Errorf("%w: %s has never booted successfully", ErrRollback, o.Label)
	case OnTrial(bs):
		if os.Priority == 0 {
			return nil, false, fmt.Errorf("%w: %s is out of the boot order (priority 0); abandoning %s would leave nothing to boot", ErrRollback, o.Label, booted.Label)
		}
		booted.Attributes = layout.SlotState{}.Attributes(booted.Attributes)
	case os.Priority > bs.Priority:
		return o, false, nil // yielded already
	default:
		if bs.Priority >= 15 {
			bs.Priority = 14
			booted.Attributes = bs.Attributes(booted.Attributes)
		}
		os.Priority = bs.Priority + 1
		o.Attributes = os.Attributes(o.Attributes)
	}
	next, _, err = Next(t)
	if err != nil {
		return nil, false, err
	}
	return next, true, nil
}

// ErrOnlyGood is returned for a change that would write, take out of the
// boot order or clear the successful bit of the only slot that booted
// successfully, or of the only slot the boot order allows.
var ErrOnlyGood = errors.New("slot: the only good slot")

// CheckSpare reports whether slot e may be overwritten, taken out of the
// boot order or lose its successful bit (doing says which, for the
// message): not when it is the only slot in the boot order that booted
// successfully, nor the only slot the boot order allows at all. The error
// says which slot would be left and how to go on.
func CheckSpare(t *layout.Table, e *layout.Entry, doing string) error {
	s := e.Slot()
	var others []string
	otherGood, otherBootable := false, false
	for _, o := range t.Slots() {
		if o == e {
			continue
		}
		os := o.Slot()
		otherGood = otherGood || os.Successful && os.Priority > 0
		otherBootable = otherBootable || os.Bootable()
		others = append(others, fmt.Sprintf("%s: %s", o.Label, os))
	}
	switch {
	case s.Successful && s.Priority > 0 && !otherGood:
		return fmt.Errorf("%w: %s is the only slot in the boot order that has booted successfully (%s); %s would leave no slot known to boot. Boot %s, mark it good if it is not, and update the other slot from it",
			ErrOnlyGood, e.Label, strings.Join(others, "; "), doing, e.Label)
	case s.Bootable() && !otherBootable:
		return fmt.Errorf("%w: %s is the only slot the boot order allows (%s); %s would leave nothing to boot. Boot %s and mark it good first",
			ErrOnlyGood, e.Label, strings.Join(others, "; "), doing, e.Label)
	}
	return nil
}

// ErrPriorityCeiling is returned when a slot cannot get a priority above
// another slot's 15.
var ErrPriorityCeiling = errors.New("slot: priority ceiling")

// CheckTrial reports whether slot e can be put on trial without changing
// any other slot: another slot at priority 15 leaves no higher priority.
func CheckTrial(t *layout.Table, e *layout.Entry) error {
	if e.Type != layout.TypeCoreOSUsr {
		return fmt.Errorf("slot: partition %s is not a USR slot", e.Name())
	}
	for _, o := range t.Slots() {
		if o != e && o.Slot().Priority >= 15 {
			return fmt.Errorf("%w: %s has priority 15, so %s cannot boot before it (kiln slot mark-good lowers priorities to 1 and 2)", ErrPriorityCeiling, o.Label, e.Label)
		}
	}
	return nil
}

// MarkTrial makes slot e boot next, on trial: a priority one above every
// other slot's, one try, not yet successful. It changes no other slot; see
// CheckTrial for when it cannot.
func MarkTrial(t *layout.Table, e *layout.Entry) error {
	if err := CheckTrial(t, e); err != nil {
		return err
	}
	top := uint8(0)
	for _, o := range t.Slots() {
		if o != e {
			top = max(top, o.Slot().Priority)
		}
	}
	e.Attributes = layout.SlotState{Priority: top + 1, Tries: 1}.Attributes(e.Attributes)
	return nil
}

// MarkUnbootable takes slot e out of the boot order (priority 0, no tries,
// not successful), as a slot must be while it is being rewritten.
func MarkUnbootable(e *layout.Entry) {
	e.Attributes = layout.SlotState{}.Attributes(e.Attributes)
}
