package layout

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A disk has many names: an image file, a loop device on it, /dev/vda and
// its partitions /dev/vdaN. Every writer takes two locks: flock(2) on what
// it opened (the lock udev and systemd honour on block devices), and
// flock(2) on a lock file named after the disk's identity, which every
// name of the disk leads to:
//
//   - an image file: its device and inode numbers;
//   - a loop device (or a partition of one): the device and inode numbers
//     of the file behind it (LOOP_GET_STATUS64), so the loop device and
//     the file itself share a lock;
//   - any other block device: the whole disk's device number (a partition
//     leads to its disk, through /sys).
//
// The lock files live in /run/lock/kiln (else /tmp/kiln-lock), one
// directory for every process whatever its environment.

// diskIdentity returns the name of the lock file of the disk whose
// file's status is st, or of the disk it is a partition of: sys is where
// sysfs is mounted, loopFile returns the device and inode numbers of the
// file behind the loop device of that name.
func diskIdentity(st *unix.Stat_t, sys string, loopFile func(name string) (dev, ino uint64, err error)) string {
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return fmt.Sprintf("file-%d-%d", st.Dev, st.Ino)
	}
	major, minor := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	dir, err := filepath.EvalSymlinks(filepath.Join(sys, "dev", "block", fmt.Sprintf("%d:%d", major, minor)))
	if err != nil {
		return fmt.Sprintf("block-%d-%d", major, minor)
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		// A partition: its whole disk, the directory above it.
		if b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "dev")); err == nil {
			if maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":"); ok {
				ma, err1 := strconv.ParseUint(maj, 10, 32)
				mi, err2 := strconv.ParseUint(min, 10, 32)
				if err1 == nil && err2 == nil {
					major, minor = uint32(ma), uint32(mi)
					dir = filepath.Dir(dir)
				}
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "loop")); err == nil {
		// A loop device: the file behind it.
		if dev, ino, err := loopFile(filepath.Base(dir)); err == nil {
			return fmt.Sprintf("file-%d-%d", dev, ino)
		}
	}
	return fmt.Sprintf("block-%d-%d", major, minor)
}

// loopBackingFile asks loop device /dev/NAME for the device and inode
// numbers of its file (LOOP_GET_STATUS64).
func loopBackingFile(name string) (uint64, uint64, error) {
	node, err := os.Open("/dev/" + name)
	if err != nil {
		return 0, 0, err
	}
	defer node.Close()
	info, err := unix.IoctlLoopGetStatus64(int(node.Fd()))
	if err != nil {
		return 0, 0, err
	}
	return info.Device, info.Inode, nil
}

// lockDirs are where disk lock files are kept, the first that can be
// used.
var lockDirs = []string{"/run/lock/kiln", "/tmp/kiln-lock"}

// lockDisk takes the identity lock of the disk f is (see above), without
// waiting; the returned file holds it until closed.
func lockDisk(f *os.File, path string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("layout: %s: %w", path, err)
	}
	id := diskIdentity(&st, "/sys", loopBackingFile)
	var errs []error
	for _, dir := range lockDirs {
		if err := os.MkdirAll(dir, 0o777); err != nil {
			errs = append(errs, err)
			continue
		}
		os.Chmod(dir, 0o777|os.ModeSticky) // every user's kiln shares it; fails harmlessly when not ours
		lf, err := os.OpenFile(filepath.Join(dir, id+".lock"), os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lf.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: %s: another process (a kiln apply, mark-good or rollback, perhaps through another name of the same disk: a loop device, a partition) is changing it; try again when it has finished", ErrLocked, path)
			}
			return nil, fmt.Errorf("layout: locking %s: %w", path, err)
		}
		return lf, nil
	}
	return nil, fmt.Errorf("layout: locking %s: no lock directory: %w", path, errors.Join(errs...))
}
