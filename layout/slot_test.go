package layout

import "testing"

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
