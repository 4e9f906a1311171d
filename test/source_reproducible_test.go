package test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-os/kiln/internal/treetest"
)

// TestSourceCheckoutTimesClamped: two copies of the same inputs whose
// files have different times, all later than SOURCE_DATE_EPOCH (two git
// checkouts of one commit, made at different times), build byte-identical
// disk.img, usr.img, manifest.json and block maps. Every kind of source
// takes part: dir: (USR-A, ext4, nanosecond times; the ESP, FAT), tar:
// (OEM) and an inline file read from the host.
func TestSourceCheckoutTimesClamped(t *testing.T) {
	partitions := `  EFI-SYSTEM:
    source: dir:esp
  USR-A:
    source: dir:rootfs
  OEM:
    source: tar:oem.tar
    files:
      - {path: /from-host.conf, from: host.conf}
  ROOT: {}
`
	var outs []string
	for i, base := range []time.Time{time.Unix(1800000000, 111), time.Unix(1900000000, 987654321)} {
		dir := filepath.Join(t.TempDir(), "checkout")
		rootfs := filepath.Join(dir, "rootfs")
		if err := treetest.WriteHost(rootfs, treetest.Random(31, treetest.Options{Files: 80, MaxSize: 64 << 10, Xattrs: true, Devices: true, HighIDs: true})); err != nil {
			t.Fatal(err)
		}
		esp := filepath.Join(dir, "esp", "EFI", "BOOT")
		os.MkdirAll(esp, 0o755)
		os.WriteFile(filepath.Join(esp, "BOOTX64.EFI"), []byte("not an EFI binary"), 0o644)
		os.WriteFile(filepath.Join(dir, "host.conf"), []byte("key=value\n"), 0o644)
		// What a checkout does: every file gets the time it was written,
		// here a different one per file and per checkout.
		k := 0
		filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				setMtime(t, p, base.Add(time.Duration(k)*time.Second+time.Duration(i)*time.Millisecond))
				k++
			}
			return nil
		})
		mustRun(t, "tar", "--xattrs", "--numeric-owner", "--format=posix", "-cf", filepath.Join(dir, "oem.tar"), "-C", rootfs, ".")
		setMtime(t, filepath.Join(dir, "oem.tar"), base)
		out := filepath.Join(t.TempDir(), "out")
		mustBuild(t, writeRecipe(t, dir, partitions), out, sourceEpoch)
		outs = append(outs, out)
	}
	sameFiles(t, outs[0], outs[1], "disk.img", "usr.img", "manifest.json", "usr.blockmap.json")

	// The kernel sees the epoch on every file of USR-A.
	usr := mountRO(t, filepath.Join(outs[0], "usr.img"), "ext4", 0, 0)
	epoch := time.Unix(sourceEpoch, 0)
	checked := 0
	filepath.Walk(usr, func(p string, _ os.FileInfo, err error) error {
		if err != nil || p == filepath.Join(usr, "lost+found") {
			return nil
		}
		if got := mtime(t, p); !got.Equal(epoch) {
			t.Errorf("%s: mtime %v, want the epoch %v", p, got.UTC(), epoch.UTC())
			return filepath.SkipAll
		}
		checked++
		return nil
	})
	if checked < 80 {
		t.Errorf("only %d entries checked in USR-A", checked)
	}
}

// TestSourceTimesBeforeEpochKept: times earlier than SOURCE_DATE_EPOCH
// reach the image exactly (nanoseconds in ext4, before 1970 too; whole
// seconds in squashfs, the format's unit), from a dir: and a tar: source,
// while a later time becomes the epoch, as the kernel shows through a
// loop mount.
func TestSourceTimesBeforeEpochKept(t *testing.T) {
	epoch := time.Unix(sourceEpoch, 0)
	times := map[string]time.Time{
		"old":     time.Unix(1600000000, 123456789),
		"older":   time.Unix(86400, 1),
		"sub":     time.Unix(1650000000, 250000000),
		"sub/new": time.Unix(1800000000, 500000000),
		"edge":    epoch,
	}
	want := func(name string, fs string) time.Time {
		w := times[name]
		if w.After(epoch) {
			w = epoch
		}
		if fs == "squashfs" {
			w = w.Truncate(time.Second)
		}
		return w
	}
	for _, fs := range []string{"ext4", "squashfs"} {
		t.Run(fs, func(t *testing.T) {
			dir := t.TempDir()
			rootfs := filepath.Join(dir, "rootfs")
			os.MkdirAll(filepath.Join(rootfs, "sub"), 0o755)
			for _, n := range []string{"old", "older", "sub/new", "edge"} {
				os.WriteFile(filepath.Join(rootfs, n), []byte(n), 0o644)
			}
			names := []string{"old", "older", "sub/new", "edge", "sub"}
			if fs == "ext4" {
				// ext4 holds times from 1901: one before 1970.
				times["ancient"] = time.Unix(-1000000000, 987654321)
				os.WriteFile(filepath.Join(rootfs, "ancient"), []byte("a"), 0o644)
				names = append(names, "ancient")
			}
			for _, n := range names {
				setMtime(t, filepath.Join(rootfs, n), times[n])
			}
			mustRun(t, "tar", "--format=posix", "-cf", filepath.Join(dir, "oem.tar"), "-C", rootfs, ".")
			out := filepath.Join(dir, "out")
			mustBuild(t, writeRecipe(t, dir, "  USR-A:\n    filesystem: "+fs+"\n    source: dir:rootfs\n  OEM:\n    source: tar:oem.tar\n  ROOT: {}\n"), out, sourceEpoch)
			for label, fsType := range map[string]string{"USR-A": fs, "OEM": "ext4"} {
				mnt := mountPartition(t, out, label)
				for _, n := range names {
					if got, w := mtime(t, filepath.Join(mnt, n)), want(n, fsType); !got.Equal(w) {
						t.Errorf("%s %s (%s): mtime %v, want %v", label, n, fsType, got.UTC(), w.UTC())
					}
				}
			}
		})
	}
}
