package sbom

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

func putFile(t *testing.T, tr *tree.Tree, p, content string) {
	t.Helper()
	if err := tr.Put(p, &tree.Inode{Type: tree.Regular, Perm: 0o644, Size: int64(len(content)), Content: tree.Bytes(content)}); err != nil {
		t.Fatal(err)
	}
}

func putLink(t *testing.T, tr *tree.Tree, p, target string) {
	t.Helper()
	if err := tr.Put(p, &tree.Inode{Type: tree.Symlink, Perm: 0o777, Target: target}); err != nil {
		t.Fatal(err)
	}
}

// mergedUsr is a merged-/usr Debian tree: /bin, /lib are links into /usr,
// and the packages list their files by the paths their .debs ship.
func mergedUsr(t *testing.T) *tree.Tree {
	tr := tree.New(time.Unix(0, 0))
	putLink(t, tr, "bin", "usr/bin")
	putLink(t, tr, "lib", "/usr/lib")
	putFile(t, tr, "usr/bin/bash", "bash")
	putFile(t, tr, "usr/lib/x86_64-linux-gnu/libc.so.6", "libc")
	putFile(t, tr, "etc/issue", "Debian")
	putFile(t, tr, "usr/lib/os-release", "ID=debian\nVERSION_ID=\"12\"\n")
	status := ""
	for _, p := range []string{"bash", "libc6", "base-files", "dirs-only"} {
		status += "Package: " + p + "\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n"
	}
	status += "Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 0.9\n"
	putFile(t, tr, "var/lib/dpkg/status", status)
	putFile(t, tr, "var/lib/dpkg/info/bash.list", "/.\n/bin\n/bin/bash\n")
	putFile(t, tr, "var/lib/dpkg/info/libc6:amd64.list", "/.\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libc.so.6\n")
	putFile(t, tr, "var/lib/dpkg/info/base-files.list", "/.\n/etc\n/etc/issue\n")
	putFile(t, tr, "var/lib/dpkg/info/dirs-only.list", "/.\n/usr\n/usr/share\n")
	return tr
}

func names(pkgs []*Package) string {
	var n []string
	for _, p := range pkgs {
		n = append(n, p.Name)
	}
	return strings.Join(n, " ")
}

// With /usr taken, the packages owning a file under /usr are listed,
// through /bin and /lib's links; base-files (only /etc) and a package
// owning only directories are not. With the whole tree, every present
// package is.
func TestScanSubdir(t *testing.T) {
	src := mergedUsr(t)
	usr, err := src.Sub("usr")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Scan(src, "/usr", usr)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(c.Packages); got != "bash libc6" {
		t.Errorf("/usr: packages %q, want bash libc6", got)
	}
	if c.Distro.String() != "debian-12" {
		t.Errorf("distro %q", c.Distro)
	}
	c, err = Scan(src, "", src)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(c.Packages); got != "bash libc6 base-files dirs-only" {
		t.Errorf("whole tree: packages %q", got)
	}
}

// A tree with no package database is listed by its files.
func TestScanFiles(t *testing.T) {
	tr := tree.New(time.Unix(0, 0))
	putFile(t, tr, "bin/hello", "hello\n")
	putFile(t, tr, "share/empty", "")
	putLink(t, tr, "bin/hi", "hello")
	c, err := Scan(tr, "", tr)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("hello\n"))
	if len(c.Files) != 2 || c.Files[0].Path != "/bin/hello" || c.Files[0].SHA256 != hex.EncodeToString(sum[:]) ||
		c.Files[0].SHA1 != "f572d396fae9206628714fb2ce00f72e94f2258f" || c.Files[1].Path != "/share/empty" {
		t.Errorf("files %+v", c.Files)
	}
}

// Links that loop or leave the tree resolve to nothing.
func TestResolveDirs(t *testing.T) {
	tr := tree.New(time.Unix(0, 0))
	putLink(t, tr, "a", "b")
	putLink(t, tr, "b", "a")
	putLink(t, tr, "lib", "usr/lib")
	putFile(t, tr, "usr/lib/x", "x")
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"/lib/x", "/usr/lib/x", true},
		{"/a/x", "", false},
		{"/missing/x", "", false},
		{"/usr/lib/x", "/usr/lib/x", true},
	} {
		got, ok := resolveDirs(tr, c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %q %v, want %q %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// Many files hashed on every core come out in path order, each with its
// own digests.
func TestScanFilesParallel(t *testing.T) {
	tr := tree.New(time.Unix(0, 0))
	for i := range 300 {
		putFile(t, tr, "d/f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+hex.EncodeToString([]byte{byte(i)}), strings.Repeat("y", i))
	}
	c, err := Scan(tr, "", tr)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Files) != 300 {
		t.Fatalf("%d files", len(c.Files))
	}
	for i, f := range c.Files {
		if i > 0 && c.Files[i-1].Path >= f.Path {
			t.Fatalf("not in path order at %d: %s, %s", i, c.Files[i-1].Path, f.Path)
		}
		n, err := tr.Lookup(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(strings.Repeat("y", int(n.Size))))
		if f.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: sha256 %s", f.Path, f.SHA256)
		}
	}
}
