package tpm2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// DefaultFloorIndex is the NV index kiln keeps its version floor in. It is
// in the range the TCG handle registry leaves to the TPM owner
// (0x01000000–0x013FFFFF), where an OS may define indexes without
// platform auth; its low bytes are "KL"; it keeps clear of the indexes
// others are known to use there: the range's first handles, which
// examples and tools default to, and ChromeOS's rollback indexes
// (0x01001007–0x0100100B).
const DefaultFloorIndex Handle = 0x01004B4C

// MaxFloorLen is the longest value a Floor holds, in bytes.
const MaxFloorLen = 64

// floorSize is the index's size: a big-endian uint16 length, the value,
// zeros to the end.
const floorSize = 2 + MaxFloorLen

// FloorAttributes are the attributes of a floor index:
//   - AUTHREAD, AUTHWRITE: read and written with the index's own auth
//     value, which is empty, so needing no secret at boot;
//   - OWNERREAD, OWNERWRITE: also with owner auth, for tools such as
//     tpm2_nvread that default to it;
//   - NO_DA: a wrong auth value does not count toward the TPM's
//     dictionary-attack lockout, which would otherwise stop the boot;
//   - WRITE_STCLEAR: NV_WriteLock refuses writes until the next TPM Reset
//     or Restart, that is until the next boot, so that the initrd can
//     raise the floor and then lock it for the system it boots.
//
// The type is ordinary (TPM_NT 0).
const FloorAttributes = NVAuthRead | NVAuthWrite | NVOwnerRead | NVOwnerWrite | NVNoDA | NVWriteSTClear

// Floor errors.
var (
	// ErrFloorValue: a value Write refuses, empty or longer than MaxFloorLen.
	ErrFloorValue = errors.New("tpm2: floor value empty or too long")
	// ErrNotFloor: the index exists but is not the shape of a floor index,
	// so was not defined by Floor.Write.
	ErrNotFloor = errors.New("tpm2: not a floor index")
	// ErrFloorData: a floor index whose data is not a length and value
	// followed by zeros.
	ErrFloorData = errors.New("tpm2: malformed floor data")
)

// Floor is a version floor kept in a TPM NV index: a string that an
// offline edit of the disk cannot change. The caller decides the order of
// versions; Floor only stores the string.
type Floor struct {
	TPM   *TPM
	Index Handle // zero means DefaultFloorIndex
}

func (f *Floor) index() Handle {
	if f.Index == 0 {
		return DefaultFloorIndex
	}
	return f.Index
}

// Read returns the floor. ok is false when there is none yet: the index
// is not defined, or was defined and never written.
func (f *Floor) Read() (value string, ok bool, err error) {
	idx := f.index()
	pub, err := f.TPM.NVReadPublic(idx)
	if errors.Is(err, ErrIndexUndefined) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if err := checkFloor(pub); err != nil {
		return "", false, err
	}
	if pub.Attributes&NVWritten == 0 {
		return "", false, nil
	}
	data, err := f.TPM.NVRead(idx, 0, floorSize)
	if err != nil {
		return "", false, err
	}
	v, err := parseFloor(data)
	if err != nil {
		return "", false, fmt.Errorf("%w: index %s: %v", ErrFloorData, idx, err)
	}
	return v, true, nil
}

// parseFloor is the value in a floor index's data.
func parseFloor(data []byte) (string, error) {
	if len(data) != floorSize {
		return "", fmt.Errorf("%d bytes, want %d", len(data), floorSize)
	}
	n := int(binary.BigEndian.Uint16(data))
	if n == 0 || n > MaxFloorLen {
		return "", fmt.Errorf("length %d, want 1 to %d", n, MaxFloorLen)
	}
	for i, c := range data[2+n:] {
		if c != 0 {
			return "", fmt.Errorf("byte %d after the value is 0x%02X, not zero", 2+n+i, c)
		}
	}
	return string(data[2 : 2+n]), nil
}

// checkFloor refuses an index that Write would not have defined: one an
// attacker could have defined to be read as a floor.
func checkFloor(pub NVPublic) error {
	if a := pub.Attributes &^ NVState; a != FloorAttributes {
		return fmt.Errorf("%w: index %s: attributes %s, want %s", ErrNotFloor, pub.Index, a, FloorAttributes)
	}
	if pub.Size != floorSize {
		return fmt.Errorf("%w: index %s: %d bytes, want %d", ErrNotFloor, pub.Index, pub.Size, floorSize)
	}
	if len(pub.AuthPolicy) != 0 {
		return fmt.Errorf("%w: index %s: has an auth policy", ErrNotFloor, pub.Index)
	}
	return nil
}

// Write sets the floor to value, 1 to MaxFloorLen bytes, defining the
// index first if there is none. After Lock it fails with ErrNVLocked until
// the TPM restarts.
func (f *Floor) Write(value string) error {
	idx := f.index()
	if len(value) == 0 || len(value) > MaxFloorLen {
		return fmt.Errorf("%w: %d bytes, want 1 to %d", ErrFloorValue, len(value), MaxFloorLen)
	}
	want := NVPublic{Index: idx, NameAlg: AlgSHA256, Attributes: FloorAttributes, Size: floorSize}
	pub, err := f.TPM.NVReadPublic(idx)
	if errors.Is(err, ErrIndexUndefined) {
		pub, err = want, f.TPM.NVDefineSpace(want)
		if errors.Is(err, ErrIndexDefined) {
			// Defined in the meantime, by kiln or not: check it as found.
			pub, err = f.TPM.NVReadPublic(idx)
		}
	}
	if err != nil {
		return err
	}
	if err := checkFloor(pub); err != nil {
		return err
	}
	data := make([]byte, floorSize)
	binary.BigEndian.PutUint16(data, uint16(len(value)))
	copy(data[2:], value)
	return f.TPM.NVWrite(idx, 0, data)
}

// Lock refuses writes to the floor until the next TPM Reset or Restart
// (the next boot).
func (f *Floor) Lock() error {
	idx := f.index()
	pub, err := f.TPM.NVReadPublic(idx)
	if err != nil {
		return err
	}
	if err := checkFloor(pub); err != nil {
		return err
	}
	return f.TPM.NVWriteLock(idx)
}
