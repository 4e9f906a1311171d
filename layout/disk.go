package layout

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotDisk is returned when a path names something that cannot be a
// disk: a directory, an empty file, a character device.
var ErrNotDisk = errors.New("layout: not a disk image or block device")

// ErrLocked is returned when another process holds a disk's write lock.
var ErrLocked = errors.New("layout: the disk is locked by another writer")

// Disk is a disk image or block device that kiln opened. A disk opened for
// writing holds exclusive locks until Close: flock(2) on the file or
// device (the lock udev and systemd honour on block devices), and one on
// the disk's identity, which every name of the disk shares (an image file
// and a loop device on it, /dev/vda and /dev/vda4; see lock.go), so two
// kiln commands never interleave their writes.
type Disk struct {
	*os.File
	// Size is the disk's size in bytes.
	Size int64
	// Path is the name the disk was opened by.
	Path string
	// lock holds the lock of the disk's identity (see lockDisk) while it
	// is open for writing.
	lock *os.File
}

// Close releases the disk's locks and closes it.
func (d *Disk) Close() error {
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
	return d.File.Close()
}

// OpenDisk opens a disk image or block device for reading.
func OpenDisk(path string) (*Disk, error) { return openDisk(path, false) }

// OpenDiskForWriting opens a disk image or block device for reading and
// writing and takes its exclusive lock without waiting: when another
// process holds it, the error wraps ErrLocked.
func OpenDiskForWriting(path string) (*Disk, error) { return openDisk(path, true) }

func openDisk(path string, write bool) (*Disk, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	switch m := st.Mode(); {
	case m.IsDir():
		return nil, fmt.Errorf("%w: %s is a directory", ErrNotDisk, path)
	case m.IsRegular(), m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0:
	default:
		return nil, fmt.Errorf("%w: %s is a %s", ErrNotDisk, path, m.Type())
	}
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	d := &Disk{File: f, Path: path}
	if write {
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: %s: another process (a kiln apply, mark-good or rollback?) is changing it; try again when it has finished", ErrLocked, path)
			}
			return nil, fmt.Errorf("layout: locking %s: %w", path, err)
		}
		if d.lock, err = lockDisk(f, path); err != nil {
			f.Close()
			return nil, err
		}
	}
	if d.Size, err = fileSize(f); err != nil {
		d.Close()
		return nil, fmt.Errorf("layout: %s: %w", path, err)
	}
	if d.Size == 0 {
		d.Close()
		return nil, fmt.Errorf("%w: %s is empty", ErrNotDisk, path)
	}
	return d, nil
}

// ReadTable reads the disk's GPT; see ReadTableAt.
func (d *Disk) ReadTable() (*Table, error) { return ReadTableAt(d.File, d.Size, d.Path) }

// UpdateAttributes writes t's attribute bits to both GPT copies; see
// the package function.
func (d *Disk) UpdateAttributes(t *Table) error { return UpdateAttributes(d.File, d.Size, d.Path, t) }
