package slot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/layout"
)

// System is the running system: where its /sys and /usr are. The
// zero value is this machine; tests point the fields at trees of their
// own.
type System struct {
	Sys, Usr string
}

func (s System) path(field, def string) string {
	if field == "" {
		return def
	}
	return field
}

// Booted returns the slot of table t (read from disk) that the running
// system booted from, or nil when disk is not the running system's disk
// (a disk image, another disk) or the system cannot tell.
//
// The slot is the partition under the filesystem mounted at /usr, through
// any stack of device-mapper targets (dm-verity): /usr's device, then its
// slaves in /sys/dev/block, down to a partition of disk. (The kernel
// command line is not used: Container Linux layouts give every disk's
// USR-A and USR-B the same partition GUIDs, so a PARTUUID= cannot tell
// two disks apart.)
func (s System) Booted(disk *os.File, t *layout.Table) (*layout.Entry, string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(disk.Fd()), &st); err != nil {
		return nil, "", fmt.Errorf("slot: %s: %w", disk.Name(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, "", nil // an image file is never the running disk
	}
	diskDev := devName(st.Rdev)
	usr := s.path(s.Usr, "/usr")
	var ust unix.Stat_t
	if err := unix.Stat(usr, &ust); err == nil {
		n, chain, err := s.partitionOf(devName(ust.Dev), diskDev, 0)
		if err != nil {
			return nil, "", err
		}
		if n > 0 {
			e, err := t.Lookup(strconv.Itoa(n))
			if err != nil {
				return nil, "", fmt.Errorf("slot: %s is mounted from partition %d of %s, which its GPT does not list", usr, n, disk.Name())
			}
			if e.Type != layout.TypeCoreOSUsr {
				return nil, "", fmt.Errorf("slot: %s is mounted from partition %s of %s, which is not a USR slot", usr, e.Name(), disk.Name())
			}
			return e, fmt.Sprintf("the running system's %s is on %s", usr, chain), nil
		}
	}
	return nil, "", nil
}

// devName is the "major:minor" of a device number, as sysfs names it.
func devName(dev uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
}

// partitionOf returns the number of the partition of the disk diskDev
// under block device dev (0: none) and the chain of devices it went
// through.
func (s System) partitionOf(dev, diskDev string, depth int) (int, string, error) {
	dir, chain, err := s.partitionDir(dev, depth)
	if err != nil || dir == "" {
		return 0, "", err
	}
	parent, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "dev"))
	if err != nil || strings.TrimSpace(string(parent)) != diskDev {
		return 0, "", nil
	}
	b, _ := os.ReadFile(filepath.Join(dir, "partition"))
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, "", fmt.Errorf("slot: %s/partition: %w", dir, err)
	}
	return n, chain, nil
}

// ErrNotBooted is returned by BootedDisk when the running system's /usr
// is not on a partition of a disk (no kiln slot is booted here).
var ErrNotBooted = errors.New("slot: the running system's /usr is not on a disk partition")

// BootedDisk returns the device node of the disk the running system
// booted from: the disk holding the partition under /usr, through any
// stack of device-mapper targets (dm-verity).
func (s System) BootedDisk() (string, error) {
	usr := s.path(s.Usr, "/usr")
	var st unix.Stat_t
	if err := unix.Stat(usr, &st); err != nil {
		return "", fmt.Errorf("slot: %s: %w", usr, err)
	}
	part, _, err := s.partitionDir(devName(st.Dev), 0)
	if err != nil {
		return "", err
	}
	if part == "" {
		return "", fmt.Errorf("%w (%s is on device %s); name the disk", ErrNotBooted, usr, devName(st.Dev))
	}
	return "/dev/" + filepath.Base(filepath.Dir(part)), nil
}

// partitionDir follows block device dev down its device-mapper slaves to
// a partition and returns its /sys directory ("" when there is none) and
// the chain of devices it went through ("dm-0 → vda4").
func (s System) partitionDir(dev string, depth int) (string, string, error) {
	if depth > 8 {
		return "", "", errors.New("slot: device-mapper stack deeper than 8 in /sys")
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(s.path(s.Sys, "/sys"), "dev", "block", dev))
	if err != nil {
		return "", "", nil // not a block device (tmpfs, overlay): not ours
	}
	name := filepath.Base(dir)
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		return dir, name, nil
	}
	slaves, _ := os.ReadDir(filepath.Join(dir, "slaves"))
	for _, sl := range slaves {
		b, err := os.ReadFile(filepath.Join(dir, "slaves", sl.Name(), "dev"))
		if err != nil {
			continue
		}
		if p, chain, err := s.partitionDir(strings.TrimSpace(string(b)), depth+1); err != nil || p != "" {
			return p, name + " → " + chain, err
		}
	}
	return "", "", nil
}
