package treetest

import (
	"os/exec"
	"testing"
)

// MountRO mounts a filesystem image read-only through a loop device (as
// root), so a test sees what the kernel makes of it, and unmounts it when
// the test ends. A failed mount fails the test: a kernel that refuses an
// image kiln wrote is a bug.
func MountRO(tb testing.TB, img, fstype string) string {
	tb.Helper()
	dir := tb.TempDir()
	if out, err := exec.Command("mount", "-t", fstype, "-o", "loop,ro", img, dir).CombinedOutput(); err != nil {
		tb.Fatalf("mount -t %s -o loop,ro %s: %v\n%s", fstype, img, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			tb.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}
