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

// partitionOf follows block device dev down its device-mapper slaves to a
// partition of the disk diskDev and returns its number (0: none) and the
// chain of devices it went through.
func (s System) partitionOf(dev, diskDev string, depth int) (int, string, error) {
	if depth > 8 {
		return 0, "", errors.New("slot: device-mapper stack deeper than 8 in /sys")
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(s.path(s.Sys, "/sys"), "dev", "block", dev))
	if err != nil {
		return 0, "", nil // not a block device (tmpfs, overlay): not ours
	}
	name := filepath.Base(dir)
	if b, err := os.ReadFile(filepath.Join(dir, "partition")); err == nil {
		parent, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "dev"))
		if err != nil || strings.TrimSpace(string(parent)) != diskDev {
			return 0, "", nil
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return 0, "", fmt.Errorf("slot: %s/partition: %w", dir, err)
		}
		return n, name, nil
	}
	slaves, _ := os.ReadDir(filepath.Join(dir, "slaves"))
	for _, sl := range slaves {
		b, err := os.ReadFile(filepath.Join(dir, "slaves", sl.Name(), "dev"))
		if err != nil {
			continue
		}
		n, chain, err := s.partitionOf(strings.TrimSpace(string(b)), diskDev, depth+1)
		if err != nil || n > 0 {
			return n, name + " → " + chain, err
		}
	}
	return 0, "", nil
}
