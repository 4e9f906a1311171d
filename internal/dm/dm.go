//go:build linux

// Package dm creates and removes device-mapper devices through the
// kernel's ioctl interface (/dev/mapper/control), as dmsetup and
// veritysetup do, without their libraries: enough for kiln's boot path to
// set up a dm-verity device.
package dm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Control is the device-mapper control node.
const Control = "/dev/mapper/control"

const (
	ioctlSize  = 312 // sizeof(struct dm_ioctl)
	targetSize = 40  // sizeof(struct dm_target_spec)
	nameLen    = 128
	uuidLen    = 129

	cmdDevCreate  = 3
	cmdDevRemove  = 4
	cmdDevSuspend = 6
	cmdTableLoad  = 9

	flagReadOnly = 1 << 0
)

// ioctlNumber is _IOWR(0xfd, cmd, struct dm_ioctl).
func ioctlNumber(cmd uintptr) uintptr {
	return 3<<30 | ioctlSize<<16 | 0xfd<<8 | cmd
}

// Target is one line of a device-mapper table.
type Target struct {
	Start, Length uint64 // in 512-byte sectors
	Type          string // "verity", "linear", ...
	Params        string
}

// header builds a struct dm_ioctl for name, with room for data after it.
func header(name string, flags uint32, targets uint32, data []byte) ([]byte, error) {
	if len(name) == 0 || len(name) >= nameLen {
		return nil, fmt.Errorf("dm: device name %q", name)
	}
	b := make([]byte, ioctlSize+len(data))
	le := binary.LittleEndian
	le.PutUint32(b[0:], 4) // interface version 4.0.0
	le.PutUint32(b[12:], uint32(len(b)))
	le.PutUint32(b[16:], ioctlSize)
	le.PutUint32(b[20:], targets)
	le.PutUint32(b[28:], flags)
	copy(b[48:48+nameLen], name)
	copy(b[ioctlSize:], data)
	return b, nil
}

func call(cmd uintptr, b []byte) error {
	f, err := os.OpenFile(Control, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("dm: %w (is dm-mod loaded?)", err)
	}
	defer f.Close()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlNumber(cmd), uintptr(unsafe.Pointer(&b[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// Create makes device name with table targets and activates it; it
// returns the device's number (its node is /dev/dm-MINOR).
func Create(name string, readOnly bool, targets []Target) (major, minor uint32, err error) {
	var flags uint32
	if readOnly {
		flags = flagReadOnly
	}
	b, err := header(name, flags, 0, nil)
	if err != nil {
		return 0, 0, err
	}
	if err := call(cmdDevCreate, b); err != nil {
		return 0, 0, fmt.Errorf("dm: creating %s: %w", name, err)
	}
	ok := false
	defer func() {
		if !ok {
			Remove(name)
		}
	}()
	var data []byte
	for i, t := range targets {
		params := append([]byte(t.Params), 0)
		size := (targetSize + len(params) + 7) / 8 * 8
		spec := make([]byte, size)
		le := binary.LittleEndian
		le.PutUint64(spec[0:], t.Start)
		le.PutUint64(spec[8:], t.Length)
		if i < len(targets)-1 {
			le.PutUint32(spec[20:], uint32(size)) // next, relative to this spec
		}
		if len(t.Type) >= 16 {
			return 0, 0, fmt.Errorf("dm: target type %q", t.Type)
		}
		copy(spec[24:40], t.Type)
		copy(spec[targetSize:], params)
		data = append(data, spec...)
	}
	if b, err = header(name, flags, uint32(len(targets)), data); err != nil {
		return 0, 0, err
	}
	if err := call(cmdTableLoad, b); err != nil {
		return 0, 0, fmt.Errorf("dm: loading the table of %s: %w", name, err)
	}
	if b, err = header(name, flags, 0, nil); err != nil {
		return 0, 0, err
	}
	if err := call(cmdDevSuspend, b); err != nil { // no SUSPEND flag: resume
		return 0, 0, fmt.Errorf("dm: activating %s: %w", name, err)
	}
	dev := binary.LittleEndian.Uint64(b[40:48])
	ok = true
	return unix.Major(dev), unix.Minor(dev), nil
}

// Remove removes device name.
func Remove(name string) error {
	b, err := header(name, 0, 0, nil)
	if err != nil {
		return err
	}
	if err := call(cmdDevRemove, b); err != nil {
		return fmt.Errorf("dm: removing %s: %w", name, err)
	}
	return nil
}

// ErrNoControl is returned when the control node is missing.
var ErrNoControl = errors.New("dm: no " + Control)
