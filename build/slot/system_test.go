package slot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBootedFollowsDeviceMapperToThePartition builds a sysfs tree shaped as
// the kernel's for /usr on dm-verity over partition 4 of a disk, and
// checks that Booted follows it to USR-B, only for that disk.
func TestBootedFollowsDeviceMapperToThePartition(t *testing.T) {
	disk, err := os.Open("/dev/loop0") // any block device: its number is what counts
	if err != nil {
		t.Fatalf("this test needs a block device node: %v", err)
	}
	defer disk.Close()
	var dst unix.Stat_t
	unix.Fstat(int(disk.Fd()), &dst)
	usr := t.TempDir()
	var ust unix.Stat_t
	if err := unix.Stat(usr, &ust); err != nil {
		t.Fatal(err)
	}
	sys := t.TempDir()
	mk := func(dir string, files map[string]string) {
		os.MkdirAll(filepath.Join(sys, dir), 0o755)
		for n, v := range files {
			os.WriteFile(filepath.Join(sys, dir, n), []byte(v+"\n"), 0o644)
		}
	}
	// devices/.../vda (the disk) with vda4 (partition 4); dm-0 on top.
	mk("devices/pci/block/vda", map[string]string{"dev": devName(dst.Rdev)})
	mk("devices/pci/block/vda/vda4", map[string]string{"dev": "252:4", "partition": "4"})
	mk("devices/virtual/block/dm-0", map[string]string{"dev": devName(ust.Dev)})
	mk("devices/virtual/block/dm-0/slaves", nil)
	os.Symlink("../../../../pci/block/vda/vda4", filepath.Join(sys, "devices/virtual/block/dm-0/slaves/vda4"))
	mk("dev/block", nil)
	os.Symlink("../../devices/virtual/block/dm-0", filepath.Join(sys, "dev/block", devName(ust.Dev)))
	os.Symlink("../../devices/pci/block/vda/vda4", filepath.Join(sys, "dev/block/252:4"))

	tb := slotTable(st(1, 0, true), st(2, 0, false))
	e, how, err := System{Sys: sys, Usr: usr}.Booted(disk, tb)
	if err != nil || e == nil || e.Label != "USR-B" {
		t.Fatalf("booted %v (%s) %v, want USR-B", e, how, err)
	}
	t.Log(how)
	if d, err := (System{Sys: sys, Usr: usr}).BootedDisk(); err != nil || d != "/dev/vda" {
		t.Fatalf("BootedDisk = %q, %v; want /dev/vda", d, err)
	}
	b, err := FindBooted(System{Sys: sys, Usr: usr}, disk, tb)
	if err != nil || !b.Running || b.Entry.Label != "USR-B" {
		t.Fatalf("FindBooted: %+v %v", b, err)
	}

	// The same tree for another disk: not the running one.
	mk("devices/pci/block/vda", map[string]string{"dev": fmt.Sprintf("%d:%d", 8, 0)})
	if e, _, err := (System{Sys: sys, Usr: usr}).Booted(disk, tb); err != nil || e != nil {
		t.Fatalf("another disk: %v %v", e, err)
	}
	// A partition that is not a USR slot is an error, not a guess.
	mk("devices/pci/block/vda", map[string]string{"dev": devName(dst.Rdev)})
	mk("devices/pci/block/vda/vda4", map[string]string{"dev": "252:4", "partition": "1"})
	if _, _, err := (System{Sys: sys, Usr: usr}).Booted(disk, tb); err == nil {
		t.Fatal("a /usr on the ESP was accepted")
	}
	// /usr on no partition (a tmpfs, an overlay): no booted disk.
	if d, err := (System{Sys: t.TempDir(), Usr: usr}).BootedDisk(); !errors.Is(err, ErrNotBooted) {
		t.Fatalf("BootedDisk with /usr on no disk = %q, %v", d, err)
	}
	// An image file is never the running disk: the slot bits tell.
	img, _ := os.Create(filepath.Join(t.TempDir(), "disk.img"))
	defer img.Close()
	b, err = FindBooted(System{Sys: sys, Usr: usr}, img, tb)
	if err != nil || b.Running || b.Entry.Label != "USR-B" {
		t.Fatalf("image: %+v %v", b, err)
	}
}
