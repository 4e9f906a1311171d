package sbom

import (
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// The database readers take any bytes a source holds: they return
// packages or an error, never panic, and every package they return has a
// name.
func FuzzReadDatabases(f *testing.F) {
	f.Add([]byte("Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\nSource: b (2)\n\n"), []byte("/.\n/usr\n/usr/bin/a\n"), []byte(apkDB))
	f.Add([]byte(" x\n"), []byte(""), []byte("P:a\nR:b\n"))
	f.Fuzz(func(t *testing.T, status, list, apk []byte) {
		tr := tree.New(time.Unix(0, 0))
		put := func(p string, b []byte) {
			tr.Put(p, &tree.Inode{Type: tree.Regular, Size: int64(len(b)), Content: tree.Bytes(b)})
		}
		put("var/lib/dpkg/status", status)
		put("var/lib/dpkg/info/a:amd64.list", list)
		put("lib/apk/db/installed", apk)
		for _, read := range []func(*tree.Tree) ([]*Package, error){ReadDpkg, ReadApk} {
			pkgs, err := read(tr)
			if err != nil {
				continue
			}
			for _, p := range pkgs {
				if p.Name == "" {
					t.Fatalf("a package with no name: %+v", p)
				}
			}
		}
		if _, err := Scan(tr, "/usr", tr); err != nil {
			return
		}
	})
}
