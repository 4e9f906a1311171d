package layout

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDiskIdentity: every name of a disk leads to one lock: a partition
// to its whole disk, a loop device (or its partition) to the file behind
// it, which is the identity of that file opened directly. The sysfs tree
// is shaped as the kernel's.
func TestDiskIdentity(t *testing.T) {
	sys := t.TempDir()
	mk := func(dir string, files map[string]string) {
		os.MkdirAll(filepath.Join(sys, dir), 0o755)
		for n, v := range files {
			os.WriteFile(filepath.Join(sys, dir, n), []byte(v+"\n"), 0o644)
		}
	}
	mk("devices/pci/block/vda", map[string]string{"dev": "252:0"})
	mk("devices/pci/block/vda/vda4", map[string]string{"dev": "252:4", "partition": "4"})
	mk("devices/virtual/block/loop0", map[string]string{"dev": "7:0"})
	mk("devices/virtual/block/loop0/loop", map[string]string{"backing_file": "/img"})
	mk("devices/virtual/block/loop0/loop0p3", map[string]string{"dev": "259:3", "partition": "3"})
	mk("dev/block", nil)
	for dev, target := range map[string]string{"252:0": "vda", "252:4": "vda/vda4"} {
		os.Symlink("../../devices/pci/block/"+target, filepath.Join(sys, "dev/block", dev))
	}
	for dev, target := range map[string]string{"7:0": "loop0", "259:3": "loop0/loop0p3"} {
		os.Symlink("../../devices/virtual/block/"+target, filepath.Join(sys, "dev/block", dev))
	}
	loop := func(name string) (uint64, uint64, error) {
		if name != "loop0" {
			return 0, 0, errors.New("not a loop device")
		}
		return 2049, 12345, nil
	}
	blk := func(major, minor uint32) *unix.Stat_t {
		return &unix.Stat_t{Mode: unix.S_IFBLK | 0o600, Rdev: unix.Mkdev(major, minor)}
	}
	for _, c := range []struct {
		name string
		st   *unix.Stat_t
		want string
	}{
		{"image file", &unix.Stat_t{Mode: unix.S_IFREG | 0o644, Dev: 2049, Ino: 12345}, "file-2049-12345"},
		{"loop device on it", blk(7, 0), "file-2049-12345"},
		{"partition of the loop device", blk(259, 3), "file-2049-12345"},
		{"/dev/vda", blk(252, 0), "block-252-0"},
		{"/dev/vda4", blk(252, 4), "block-252-0"},
		{"a device sysfs does not list", blk(8, 0), "block-8-0"},
	} {
		if got := diskIdentity(c.st, sys, loop); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestLockSharedByNames: two opens for writing of one image file, by two
// names (a path and a symlink to it), exclude each other until the first
// closes.
func TestLockSharedByNames(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "other-name.img")
	os.Symlink(img, link)
	d, err := OpenDiskForWriting(img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDiskForWriting(link); !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer by another name: %v", err)
	}
	d.Close()
	d2, err := OpenDiskForWriting(link)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	d2.Close()
}
