package sbom

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// hostDpkgTree copies this Debian host's dpkg database, os-release and
// copyright files into a tree, as a source tree holds them.
func hostDpkgTree(t *testing.T) *tree.Tree {
	t.Helper()
	tr := tree.New(time.Unix(0, 0))
	put := func(rel string) {
		host := "/" + rel
		st, err := os.Lstat(host)
		if err != nil || !st.Mode().IsRegular() {
			return
		}
		if err := tr.Put(rel, &tree.Inode{Type: tree.Regular, Perm: 0o644, Size: st.Size(), Content: tree.HostFile(host)}); err != nil {
			t.Fatal(err)
		}
	}
	put("var/lib/dpkg/status")
	put("usr/lib/os-release")
	lists, _ := filepath.Glob("/var/lib/dpkg/info/*.list")
	if len(lists) == 0 {
		t.Fatal("this host has no dpkg database (the tests run on Debian)")
	}
	for _, l := range lists {
		put(strings.TrimPrefix(l, "/"))
	}
	docs, _ := filepath.Glob("/usr/share/doc/*/copyright")
	for _, d := range docs {
		put(strings.TrimPrefix(d, "/"))
	}
	return tr
}

// ReadDpkg lists what dpkg-query -W lists on this host, same names,
// architectures and versions, and each package's files as dpkg -L.
func TestReadDpkgMatchesDpkgQuery(t *testing.T) {
	tr := hostDpkgTree(t)
	pkgs, err := ReadDpkg(tr)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Package}:${Architecture} ${Version} ${db:Status-Abbrev}\n").Output()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		// dpkg-query -W also lists packages known only by their
		// conffiles (c) or not installed (n); their files are gone.
		if len(f) == 3 && (f[2][1] == 'c' || f[2][1] == 'n') {
			continue
		}
		want = append(want, f[0]+" "+f[1])
	}
	var got []string
	for _, p := range pkgs {
		got = append(got, p.Name+":"+p.Arch+" "+p.Version)
	}
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ReadDpkg lists %d packages, dpkg-query %d:\ngot  %v\nwant %v", len(got), len(want), got, want)
	}
	// Files, as dpkg -L gives them, for a few packages.
	checked := 0
	for _, p := range pkgs {
		if p.Name != "dpkg" && p.Name != "coreutils" && p.Name != "bash" {
			continue
		}
		out, err := exec.Command("dpkg", "-L", p.Name+":"+p.Arch).Output()
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if l != "/." {
				want = append(want, l)
			}
		}
		if strings.Join(p.Files, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: %d files, dpkg -L gives %d", p.Name, len(p.Files), len(want))
		}
		checked++
	}
	if checked != 3 {
		t.Errorf("checked the files of %d of dpkg, coreutils, bash", checked)
	}
	d, err := ReadDistro(tr)
	if err != nil || d.ID != "debian" || d.VersionID == "" {
		t.Errorf("distro %+v, %v", d, err)
	}
}

func TestPURL(t *testing.T) {
	d := Distro{ID: "debian", VersionID: "12"}
	for _, c := range []struct {
		p    Package
		want string
	}{
		{Package{Type: "deb", Name: "libc6", Version: "2.36-9+deb12u4", Arch: "amd64"}, "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64&distro=debian-12"},
		{Package{Type: "deb", Name: "libgcc-s1", Version: "1:12.2.0-14", Arch: "amd64"}, "pkg:deb/debian/libgcc-s1@1%3A12.2.0-14?arch=amd64&distro=debian-12"},
	} {
		if got := c.p.PURL(d); got != c.want {
			t.Errorf("%s: %s, want %s", c.p.Name, got, c.want)
		}
	}
}

func TestReadDpkgRefusesMalformed(t *testing.T) {
	for _, status := range []string{
		"Package: a\nStatus: install ok installed\n garbage first\nVersion 1\n",
		" continuation\n",
		"Status: install ok installed\nVersion: 1\n",
		"Package: a\nStatus: install ok installed\nArchitecture: all\n\nPackage: a\nStatus: install ok installed\nArchitecture: all\n",
	} {
		tr := tree.New(time.Unix(0, 0))
		tr.Put("var/lib/dpkg/status", &tree.Inode{Type: tree.Regular, Size: int64(len(status)), Content: tree.Bytes(status)})
		if _, err := ReadDpkg(tr); err == nil {
			t.Errorf("%q: no error", status)
		}
	}
}
