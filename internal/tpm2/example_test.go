package tpm2_test

import (
	"fmt"

	"github.com/kiln-os/kiln/internal/tpm2"
)

// less orders versions; kiln's is build/version.Less (SemVer 2.0.0).
func less(a, b string) bool { return a < b }

// The boot path's use: refuse a slot older than the floor, raise the
// floor to the slot it boots, and lock it so that the system it boots
// cannot change it before the next boot.
func ExampleFloor() {
	tpm, err := tpm2.Open("") // /dev/tpmrm0, else /dev/tpm0
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tpm.Close()
	floor := &tpm2.Floor{TPM: tpm} // at DefaultFloorIndex
	slot := "1.4.0"
	have, ok, err := floor.Read()
	switch {
	case err != nil:
		fmt.Println(err)
		return
	case ok && less(slot, have):
		fmt.Printf("slot %s is older than the floor %s\n", slot, have)
		return
	case !ok || less(have, slot):
		if err := floor.Write(slot); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := floor.Lock(); err != nil {
		fmt.Println(err)
	}
}
