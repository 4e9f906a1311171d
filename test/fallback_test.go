package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

// TestApplyMessagesSayWhatHappened: apply's messages say what happened to
// the disk. A delta refused for its source bytes (found before the first
// write) never prints a writing stage "done", and says the disk is
// unchanged — as it is. SIGINT at moments from before the first write to
// the end: the message agrees with the disk each time (unchanged, or
// USR-B holding part of the release out of the boot order).
func TestApplyMessagesSayWhatHappened(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0")
	os.MkdirAll(filepath.Join(dir, "other"), 0o755)
	other := releases(t, filepath.Join(dir, "other"), key, "0.9.0", "1.0.0")["1.0.0"] // 1.0.0 of other bytes
	delta := filepath.Join(dir, "delta.payload")
	mustRun(t, kiln, "payload", "generate", "--from", rel["1.0.0"], "--to", rel["2.0.0"], "-o", delta, "--key", key+".key")

	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(other, "disk.img"), disk)
	before := mustRun(t, "sha256sum", disk)
	r := run(t, kiln, "payload", "apply", delta, "--disk", disk, "--key", key+".pub")
	if r.code != 1 || strings.Contains(r.stderr, "writing USR-B: done") || !strings.Contains(r.stderr, "the disk is unchanged") {
		t.Errorf("a delta refused for its source: %+v", r)
	}
	if mustRun(t, "sha256sum", disk) != before {
		t.Error("the refused delta changed the disk")
	}

	full := filepath.Join(dir, "full.payload")
	mustRun(t, kiln, "payload", "generate", "--to", rel["2.0.0"], "-o", full, "--key", key+".key")
	pristine := filepath.Join(dir, "pristine.img")
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), pristine)
	slotB := sfdisk(t, pristine).PartitionTable.Partitions[3]
	usrB := func(disk string) string {
		return mustRun(t, "sh", "-c", fmt.Sprintf("dd if=%s bs=512 skip=%d count=%d status=none | sha256sum", disk, slotB.Start, slotB.Size))
	}
	emptyB := usrB(pristine)
	seen := map[string]int{}
	for i := 0; i < 12; i++ {
		copyFile(t, pristine, disk)
		cmd := exec.Command(kiln, "payload", "apply", full, "--disk", disk, "--key", key+".pub")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i*40) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		code := cmd.ProcessState.ExitCode()
		msg := stderr.String()
		switch {
		case code == 0:
			seen["finished"]++
		case code == -1 && usrB(disk) == emptyB:
			seen["killed before kiln took the signal"]++
		case code != 130:
			t.Errorf("SIGINT after %d ms: exit %d\n%s", i*40, code, msg)
		case usrB(disk) == emptyB:
			seen["unchanged"]++
			if !strings.Contains(msg, "the disk is unchanged") {
				t.Errorf("SIGINT after %d ms, USR-B untouched, the message says otherwise:\n%s", i*40, msg)
			}
		default:
			seen["partial"]++
			if !strings.Contains(msg, "USR-B holds part of 2.0.0 and is out of the boot order") && !strings.Contains(msg, "USR-B stays out of the boot order") {
				t.Errorf("SIGINT after %d ms, USR-B written, the message does not say so:\n%s", i*40, msg)
			}
			if got := cgptSlot(t, disk, 4); got[0] != 0 {
				t.Errorf("SIGINT after %d ms: USR-B half-written but in the boot order: %v", i*40, got)
			}
		}
	}
	t.Logf("SIGINT outcomes: %v", seen)
}

// TestBlankDisk: a disk fresh from layout init holds no release: slot
// status calls both slots empty and none booted (though the layout marks
// USR-A good), and a full payload installs onto it with no override; a
// delta, which needs a source, is refused with the disk unchanged.
func TestBlankDisk(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0")
	disk := filepath.Join(dir, "blank.img")
	mustRun(t, kiln, "layout", "init", "--layout", filepath.Join(dir, "small.yaml"), disk)
	out := mustRun(t, kiln, "slot", "status", disk)
	if !strings.Contains(out, "booted: none: no slot holds a release yet") || strings.Count(out, "empty") < 2 {
		t.Errorf("slot status of a blank disk:\n%s", out)
	}
	delta := filepath.Join(dir, "delta.payload")
	mustRun(t, kiln, "payload", "generate", "--from", rel["1.0.0"], "--to", rel["2.0.0"], "-o", delta, "--key", key+".key")
	before := mustRun(t, "sha256sum", disk)
	if r := run(t, kiln, "payload", "apply", "-q", delta, "--disk", disk, "--key", key+".pub"); r.code != 1 || !strings.Contains(r.stderr, "holds no release") || !strings.Contains(r.stderr, "the disk is unchanged") {
		t.Errorf("a delta onto a blank disk: %+v", r)
	}
	if mustRun(t, "sha256sum", disk) != before {
		t.Error("a refused delta changed the blank disk")
	}
	full := filepath.Join(dir, "full.payload")
	mustRun(t, kiln, "payload", "generate", "--to", rel["2.0.0"], "-o", full, "--key", key+".key")
	mustRun(t, kiln, "payload", "apply", "-q", full, "--disk", disk, "--key", key+".pub")
	if st := statusOf(t, disk, "--key", key+".pub"); st.Next != "USR-B" || st.Slots[1].Version != "2.0.0" || st.Slots[1].Record != "verified" {
		t.Errorf("after a full payload onto a blank disk: %+v", st)
	}
}
