//go:build linux

package boot

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// slotRoot makes a switched root whose usr is on another filesystem than
// the rest (tmpfs under /dev/shm), as the verified /usr is on the
// dm-verity device and everything else on ROOT.
func slotRoot(t *testing.T) string {
	t.Helper()
	usr, err := os.MkdirTemp("/dev/shm", "kiln-usr-")
	if err != nil {
		t.Fatalf("this test needs a tmpfs at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(usr) })
	root := t.TempDir()
	if err := os.Symlink(usr, filepath.Join(root, "usr")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"usr/sbin", "usr/bin", "usr/lib/bootable", "oem", "etc"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	write := func(p string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(root, p), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("usr/lib/bootable/init", 0o755)
	write("usr/lib/bootable/data", 0o644)
	write("oem/evil.sh", 0o755)
	os.Symlink("../lib/bootable/init", filepath.Join(root, "usr/sbin/init"))
	// A link on /usr that leads off it, to ROOT (absolute here: the
	// test's root is not a chroot).
	os.Symlink(filepath.Join(root, "oem/evil.sh"), filepath.Join(root, "usr/bin/away"))
	return root
}

func TestVerifiedInit(t *testing.T) {
	root := slotRoot(t)
	var log bytes.Buffer
	if err := mergedUsr(&log, root); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, refusal string // "" accepted
	}{
		{"/usr/lib/bootable/init", ""},
		{"/usr/sbin/init", ""},
		{"/sbin/init", ""}, // the link sbin → usr/sbin mergedUsr made
		{"/oem/evil.sh", "not under /usr"},
		{"/usr/../oem/evil.sh", "not a clean absolute path"},
		{"usr/sbin/init", "not a clean absolute path"},
		{"/usr/bin/away", "not on the verified /usr"},
		{"/usr/lib/bootable/data", "not an executable file"},
		{"/usr/lib/bootable", "not an executable file"},
		{"/usr/lib/bootable/none", "no such file"},
		{"/etc/init", "not under /usr"},
	} {
		err := VerifiedInit(root, c.path)
		switch {
		case c.refusal == "" && err != nil:
			t.Errorf("%s refused: %v", c.path, err)
		case c.refusal != "" && (err == nil || !strings.Contains(err.Error(), c.refusal)):
			t.Errorf("%s: %v, want a refusal saying %q", c.path, err, c.refusal)
		}
	}
}

// TestMergedUsr: whatever ROOT holds where /usr's programs and libraries
// are looked for is moved aside and replaced by the link into /usr; the
// right links stay; names /usr lacks are left alone.
func TestMergedUsr(t *testing.T) {
	root := slotRoot(t)
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	os.WriteFile(filepath.Join(root, "sbin", "init"), []byte("evil"), 0o755)
	os.Symlink("/oem", filepath.Join(root, "bin"))
	os.MkdirAll(filepath.Join(root, "usr/lib64"), 0o755)
	os.WriteFile(filepath.Join(root, "lib64"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(root, "lib32"), 0o755) // /usr has no lib32: left alone
	var log bytes.Buffer
	if err := mergedUsr(&log, root); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bin", "sbin", "lib", "lib64"} {
		if got, err := os.Readlink(filepath.Join(root, n)); err != nil || got != "usr/"+n {
			t.Errorf("/%s: %q %v, want the link usr/%s", n, got, err, n)
		}
	}
	for _, n := range []string{"sbin", "bin", "lib64"} {
		if _, err := os.Lstat(filepath.Join(root, n+".kiln-refused")); err != nil {
			t.Errorf("ROOT's /%s was not moved aside: %v", n, err)
		}
		if !strings.Contains(log.String(), "ROOT's /"+n+" was not the link usr/"+n) {
			t.Errorf("no console line for /%s:\n%s", n, log.String())
		}
	}
	if st, err := os.Lstat(filepath.Join(root, "lib32")); err != nil || !st.IsDir() {
		t.Errorf("/lib32, which /usr lacks, changed: %v %v", st, err)
	}
	// Again: nothing left to change, nothing said.
	log.Reset()
	if err := mergedUsr(&log, root); err != nil || log.Len() != 0 {
		t.Errorf("second run: %v %q", err, log.String())
	}
}
