package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-os/kiln/layout"
)

// TestVersionOrderSemVer: releases are ordered by SemVer 2.0.0
// precedence, prereleases included: rc.9 → rc.10 is an upgrade for
// payload generate and apply, rc.10 → rc.9 a downgrade both refuse
// without --allow-downgrade (leaving the disk as it was); a payload of the
// installed version installs again (a repair of the passive slot, no
// override needed); a recipe version that is not SemVer is refused with
// its line.
func TestVersionOrderSemVer(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0-rc.9", "1.0.0-rc.10")
	rc9, rc10 := rel["1.0.0-rc.9"], rel["1.0.0-rc.10"]
	up := filepath.Join(dir, "up.payload")
	mustRun(t, kiln, "payload", "generate", "--from", rc9, "--to", rc10, "-o", up, "--key", key+".key")
	if r := run(t, kiln, "payload", "generate", "--from", rc10, "--to", rc9, "-o", filepath.Join(dir, "down.payload"), "--key", key+".key"); r.code == 0 || !strings.Contains(r.stderr, "1.0.0-rc.9 is older than 1.0.0-rc.10") {
		t.Errorf("generate rc.10 → rc.9: %+v", r)
	}
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(rc9, "disk.img"), disk)
	mustRun(t, kiln, "payload", "apply", "-q", up, "--disk", disk, "--key", key+".pub")
	bootTrial(t, disk, 4)
	mustRun(t, kiln, "slot", "mark-good", disk, "USR-B")

	// rc.9 onto the node running rc.10: a downgrade.
	full9 := filepath.Join(dir, "full9.payload")
	mustRun(t, kiln, "payload", "generate", "--to", rc9, "-o", full9, "--key", key+".key")
	before := mustRun(t, "sha256sum", disk)
	if r := run(t, kiln, "payload", "apply", "-q", full9, "--disk", disk, "--key", key+".pub"); r.code != 1 || !strings.Contains(r.stderr, "1.0.0-rc.9 is older than 1.0.0-rc.10") {
		t.Errorf("apply rc.9 over rc.10: %+v", r)
	}
	if mustRun(t, "sha256sum", disk) != before {
		t.Error("a refused downgrade changed the disk")
	}
	// The installed version again: installed, no override.
	full10 := filepath.Join(dir, "full10.payload")
	mustRun(t, kiln, "payload", "generate", "--to", rc10, "-o", full10, "--key", key+".key")
	mustRun(t, kiln, "payload", "apply", "-q", full10, "--disk", disk, "--key", key+".pub")
	st := statusOf(t, disk, "--key", key+".pub")
	if st.Next != "USR-A" || st.Slots[0].Version != "1.0.0-rc.10" {
		t.Errorf("after installing the same version: %+v", st)
	}

	// Not SemVer: refused at build, with the line.
	recipe := filepath.Join(dir, "r-1.0.0-rc.9.yaml")
	b, _ := os.ReadFile(recipe)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(string(b), "version: 1.0.0-rc.9", "version: 3815.2", 1)), 0o644)
	if r := run(t, kiln, "build", "-q", bad, "-o", filepath.Join(dir, "bad-out")); r.code != 2 || !strings.Contains(r.stderr, "bad.yaml:2: version") || !strings.Contains(r.stderr, "not a SemVer") {
		t.Errorf("a version that is not SemVer: %+v", r)
	}
}

// TestOneLockPerDisk: the write lock covers every name of a disk: while
// the image file is held (as payload apply holds it), a slot command on a
// loop device over it is refused and changes nothing; and the other way
// round. With the lock released they run. (Partition names lead to their
// disk too: layout's TestDiskIdentity, on a sysfs tree, since loop
// partitions do not appear on every host.)
func TestOneLockPerDisk(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	mustRun(t, kiln, "layout", "init", "--layout", filepath.Join(dir, "small.yaml"), disk)
	dev := strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", disk))
	defer run(t, "losetup", "--detach", dev)
	pristine := mustRun(t, "sha256sum", disk)
	for _, c := range []struct{ held, other string }{
		{disk, dev},
		{dev, disk},
	} {
		d, err := layout.OpenDiskForWriting(c.held)
		if err != nil {
			t.Fatalf("holding %s: %v", c.held, err)
		}
		r := run(t, kiln, "slot", "mark-good", c.other, "USR-A")
		d.Close()
		if r.code != 1 || !strings.Contains(r.stderr, "another process") {
			t.Errorf("mark-good on %s while %s is held: %+v", c.other, c.held, r)
		}
		if mustRun(t, "sha256sum", disk) != pristine {
			t.Fatalf("a refused command on %s changed the disk", c.other)
		}
	}
	mustRun(t, kiln, "slot", "mark-good", dev, "USR-A")
	mustRun(t, kiln, "slot", "mark-good", disk, "USR-A")
}
