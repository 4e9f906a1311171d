package test

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeSlot copies a partition image into a disk at the slot's offset.
func writeSlot(t *testing.T, disk string, offset int64, img string) {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(io.NewOffsetWriter(dst, offset), src); err != nil {
		t.Fatal(err)
	}
}

// TestSlotMarkBootableVerifiesFirst: a slot written by other means is
// marked bootable only when it verifies against the signed manifest.
func TestSlotMarkBootableVerifiesFirst(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"))
	disk := filepath.Join(out, "disk.img")
	m := readManifest(t, out)
	args := []string{"--manifest", filepath.Join(out, "manifest.json"), "--key", filepath.Join(dir, "k.pub")}

	// An empty USR-B: refused, state unchanged.
	r := run(t, kiln, append([]string{"slot", "mark-bootable", disk, "USR-B"}, args...)...)
	if r.code != 1 || !strings.Contains(r.stdout, "FAIL digest USR-B") || !strings.Contains(r.stderr, "not marked bootable") {
		t.Errorf("empty slot: %+v", r)
	}
	if got := cgptSlot(t, disk, 4); got != [3]int{0, 0, 0} {
		t.Errorf("refused slot changed state: %v", got)
	}
	// USR-B written with the release's USR image, one byte off: refused.
	usrB := m.Partition("USR-B")
	writeSlot(t, disk, usrB.Offset, filepath.Join(out, "usr.img"))
	flip(t, disk, usrB.Offset+4096*5+3)
	r = run(t, kiln, append([]string{"slot", "verify", disk, "USR-B"}, args...)...)
	if r.code != 1 || !strings.Contains(r.stdout, "data block 5 ") {
		t.Errorf("damaged slot verify: %+v", r)
	}
	// Repaired: verifies and is marked on trial, as cgpt shows.
	flip(t, disk, usrB.Offset+4096*5+3)
	if r := run(t, kiln, append([]string{"slot", "verify", disk, "USR-B"}, args...)...); r.code != 0 {
		t.Fatalf("slot verify: %+v", r)
	}
	mustRun(t, kiln, append([]string{"slot", "mark-bootable", disk, "USR-B"}, args...)...)
	if got := cgptSlot(t, disk, 4); got != [3]int{2, 1, 0} {
		t.Errorf("USR-B after mark-bootable: %v, want priority 2 tries 1 successful 0", got)
	}
	if got := cgptSlot(t, disk, 3); got != [3]int{1, 0, 1} {
		t.Errorf("USR-A changed: %v", got)
	}
	sgdiskClean(t, disk)
	// USR-A is the booted slot (it booted successfully; USR-B is only on
	// trial): it verifies, but marking it is refused.
	if r := run(t, kiln, append([]string{"slot", "mark-bootable", disk, "USR-A"}, args...)...); r.code != 1 || !strings.Contains(r.stderr, "USR-A is the booted slot") {
		t.Errorf("mark-bootable of the active slot: %+v", r)
	}
}
