package source

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-os/kiln/internal/treetest"
)

var epoch = time.Unix(1700000000, 0)

func TestTarballAndDirAgree(t *testing.T) {
	// A random tree written to a host dir and to a tarball (by GNU tar)
	// reads back the same through both sources.
	want := treetest.Random(7, treetest.Options{Files: 60, MaxSize: 64 << 10, Xattrs: false, HighIDs: true})
	host := filepath.Join(t.TempDir(), "root")
	if err := treetest.WriteHost(host, want); err != nil {
		t.Fatal(err)
	}
	fromDir, err := FromDir(host)
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(want, fromDir, treetest.CompareOptions{IgnoreDirTime: true}); err != nil {
		t.Fatalf("dir source: %v", err)
	}
	tarball := filepath.Join(t.TempDir(), "root.tar.gz")
	if out, err := exec.Command("tar", "--xattrs", "--numeric-owner", "-czf", tarball, "-C", host, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	sp, _ := NewSpool(t.TempDir())
	defer sp.Close()
	fromTar, err := sp.FromTar(tarball, epoch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Equal(want, fromTar, treetest.CompareOptions{IgnoreDirTime: true}); err != nil {
		t.Fatalf("tar source: %v", err)
	}
}
