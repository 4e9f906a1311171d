package layout

import (
	"errors"
	"fmt"
)

// GPT attribute bits of the ChromeOS / CoreOS gptprio convention, as cgpt
// and GRUB's gptprio.next read them.
const (
	attrPriorityShift   = 48 // bits 48–51
	attrTriesShift      = 52 // bits 52–55
	attrSuccessfulShift = 56 // bit 56
	attrSlotMask        = uint64(0x1ff) << attrPriorityShift
)

// SlotState is the A/B boot state of a partition.
type SlotState struct {
	Priority   uint8 `json:"priority"`   // 0 (never boot) .. 15
	Tries      uint8 `json:"tries"`      // boot attempts left, 0 .. 15
	Successful bool  `json:"successful"` // booted successfully before
}

// SlotFromAttributes extracts the slot state from GPT attribute bits.
func SlotFromAttributes(attrs uint64) SlotState {
	return SlotState{
		Priority:   uint8(attrs >> attrPriorityShift & 0xf),
		Tries:      uint8(attrs >> attrTriesShift & 0xf),
		Successful: attrs>>attrSuccessfulShift&1 == 1,
	}
}

// Attributes returns attrs with the slot bits replaced by s; the other
// bits are kept.
func (s SlotState) Attributes(attrs uint64) uint64 {
	attrs &^= attrSlotMask
	attrs |= uint64(s.Priority&0xf) << attrPriorityShift
	attrs |= uint64(s.Tries&0xf) << attrTriesShift
	if s.Successful {
		attrs |= 1 << attrSuccessfulShift
	}
	return attrs
}

// Bootable reports whether GRUB's gptprio would consider the slot at all.
func (s SlotState) Bootable() bool { return s.Priority > 0 && (s.Tries > 0 || s.Successful) }

// String renders the state as cgpt does: "priority=1 tries=0 successful=1".
func (s SlotState) String() string {
	succ := 0
	if s.Successful {
		succ = 1
	}
	return fmt.Sprintf("priority=%d tries=%d successful=%d", s.Priority, s.Tries, succ)
}

// Slots returns the entries that are A/B slots: those of the CoreOS USR
// type, in table order, as gptprio scans them.
func (t *Table) Slots() []*Entry {
	var out []*Entry
	for i := range t.Partitions {
		if t.Partitions[i].Type == TypeCoreOSUsr {
			out = append(out, &t.Partitions[i])
		}
	}
	return out
}

// ErrNoBootableSlot means no slot has a priority above zero together with
// tries left or a successful boot.
var ErrNoBootableSlot = errors.New("layout: no bootable slot")

// NextSlot returns the slot that boots next and why, by GRUB gptprio's
// rule: among the USR partitions in table order, the one with the highest
// priority that has tries left or has booted successfully; on a tie the
// first wins.
func (t *Table) NextSlot() (*Entry, string, error) {
	var best *Entry
	for _, e := range t.Slots() {
		s := e.Slot()
		if (s.Tries > 0 || s.Successful) && (best == nil && s.Priority > 0 || best != nil && s.Priority > best.Slot().Priority) {
			best = e
		}
	}
	if best == nil {
		return nil, "", fmt.Errorf("%w: every USR slot has priority 0 or neither tries left nor a successful boot", ErrNoBootableSlot)
	}
	s := best.Slot()
	var why string
	switch {
	case s.Successful:
		why = fmt.Sprintf("highest priority (%d) among bootable slots, marked successful", s.Priority)
	default:
		why = fmt.Sprintf("highest priority (%d) among bootable slots, on trial with %d tries left", s.Priority, s.Tries)
	}
	for _, o := range t.Slots() {
		if o != best && o.Slot().Priority == s.Priority && o.Slot().Bootable() {
			why += fmt.Sprintf("; ties with %s, first in table order wins", o.Label)
		}
	}
	return best, why, nil
}

// ActiveSlot returns the slot an update must never write: the slot the
// system runs from. Offline, that is the highest-priority slot that has
// booted successfully (a slot on trial has not proved itself, and the one
// it would fall back to must survive); with no successful slot, the slot
// that boots next.
func (t *Table) ActiveSlot() (*Entry, error) {
	var best *Entry
	for _, e := range t.Slots() {
		s := e.Slot()
		if s.Successful && s.Priority > 0 && (best == nil || s.Priority > best.Slot().Priority) {
			best = e
		}
	}
	if best != nil {
		return best, nil
	}
	e, _, err := t.NextSlot()
	return e, err
}

// other returns the slot that is not e (the A/B partner), or an error when
// the table does not have exactly two slots.
func (t *Table) other(e *Entry) (*Entry, error) {
	slots := t.Slots()
	if len(slots) != 2 {
		return nil, fmt.Errorf("layout: want 2 USR slots, the table has %d", len(slots))
	}
	if slots[0] == e {
		return slots[1], nil
	}
	return slots[0], nil
}

// MarkGood records that the slot that boots next booted successfully:
// successful=1, tries=0, priority kept. It returns that slot.
func (t *Table) MarkGood() (*Entry, error) {
	e, _, err := t.NextSlot()
	if err != nil {
		return nil, err
	}
	s := e.Slot()
	s.Successful, s.Tries = true, 0
	e.Attributes = s.Attributes(e.Attributes)
	return e, nil
}

// ErrRollback is returned when the other slot cannot be made to boot.
var ErrRollback = errors.New("layout: cannot roll back")

// Rollback makes the other slot boot next, if it booted successfully
// before: it gets a priority above the current slot's. It returns the slot
// that now boots next.
func (t *Table) Rollback() (*Entry, error) {
	cur, _, err := t.NextSlot()
	if err != nil {
		return nil, err
	}
	o, err := t.other(cur)
	if err != nil {
		return nil, err
	}
	os := o.Slot()
	if !os.Successful {
		return nil, fmt.Errorf("%w: %s has never booted successfully", ErrRollback, o.Label)
	}
	cs := cur.Slot()
	if cs.Priority >= 15 {
		cs.Priority = 14
		cur.Attributes = cs.Attributes(cur.Attributes)
	}
	os.Priority = cs.Priority + 1
	o.Attributes = os.Attributes(o.Attributes)
	return o, nil
}

// MarkTrial makes slot e boot next, on trial: a priority above every other
// slot's (the others step down if e would need more than 15), one try,
// not yet successful. It is what an updated slot gets once it verified.
func (t *Table) MarkTrial(e *Entry) error {
	if e.Type != TypeCoreOSUsr {
		return fmt.Errorf("layout: partition %s is not a USR slot", e.Name())
	}
	top := uint8(0)
	for _, o := range t.Slots() {
		if o != e {
			top = max(top, o.Slot().Priority)
		}
	}
	if top >= 15 {
		for _, o := range t.Slots() {
			if s := o.Slot(); o != e && s.Priority >= 15 {
				s.Priority = 14
				o.Attributes = s.Attributes(o.Attributes)
			}
		}
		top = 14
	}
	e.Attributes = SlotState{Priority: top + 1, Tries: 1}.Attributes(e.Attributes)
	return nil
}

// MarkUnbootable takes slot e out of the boot order (priority 0, no tries,
// not successful), as a slot must be while it is being rewritten.
func (t *Table) MarkUnbootable(e *Entry) {
	e.Attributes = SlotState{}.Attributes(e.Attributes)
}
