//go:build linux

package boot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/kiln-os/kiln/internal/tpm2"
)

// tpmFloor is the version floor in the TPM's NV index.
type tpmFloor struct{ *tpm2.Floor }

func (f tpmFloor) String() string {
	return fmt.Sprintf("the TPM (NV index %#08x)", uint32(tpm2.DefaultFloorIndex))
}

// openFloorStore opens the TPM's version floor, or returns nil when the
// machine has no TPM (said on the console).
func openFloorStore(log io.Writer) FloorStore {
	t, err := tpm2.Open("")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(log, "kiln: no TPM: the version floor is what the disk's good slots declare\n")
		} else {
			fmt.Fprintf(log, "kiln: TPM: %v; the version floor is what the disk's good slots declare\n", err)
		}
		return nil
	}
	return tpmFloor{&tpm2.Floor{TPM: t}}
}
