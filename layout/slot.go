package layout

import "fmt"

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
