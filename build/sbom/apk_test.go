package sbom

import (
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/tree"
)

// An installed database as apk-tools writes it (src/database.c's
// apk_db_fdb_write: header fields, then F:/M: and R:/a:/Z: lines, a
// blank line after each package); apk-tools is not in Debian, so the
// fixture is written here.
const apkDB = `C:Q1Vv7JUc0sBqpxoLXJMx9o3R0ST2k=
P:musl
V:1.2.5-r0
A:x86_64
S:411323
I:641024
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1712154011
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1hbb6Sb52yoSBsc2o1a/lPbsbbB8=
R:libc.musl-x86_64.so.1
a:0:0:777

C:Q1oR2jJ0Fq9fO4l7mK6Q4hO9q5lnY=
P:busybox-binsh
V:1.36.1-r29
A:x86_64
L:GPL-2.0-only
o:busybox
D:busybox=1.36.1-r29
F:bin
R:sh
F:usr/share/udhcpc
M:0:0:755
R:default.script
x:a field a newer apk-tools writes

`

func TestReadApk(t *testing.T) {
	tr := tree.New(time.Unix(0, 0))
	putFile(t, tr, "lib/apk/db/installed", apkDB)
	putFile(t, tr, "etc/os-release", "ID=alpine\nVERSION_ID=3.20.0\nPRETTY_NAME=\"Alpine Linux v3.20\"\n")
	pkgs, err := ReadApk(tr)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 {
		t.Fatalf("%d packages", len(pkgs))
	}
	m, b := pkgs[0], pkgs[1]
	if m.Name != "musl" || m.Version != "1.2.5-r0" || m.Arch != "x86_64" || strings.Join(m.Licenses, ",") != "MIT" || m.Source != "musl" ||
		strings.Join(m.Files, " ") != "/lib /lib/ld-musl-x86_64.so.1 /lib/libc.musl-x86_64.so.1" {
		t.Errorf("musl: %+v", m)
	}
	if b.Name != "busybox-binsh" || b.Source != "busybox" || strings.Join(b.Files, " ") != "/bin /bin/sh /usr/share/udhcpc /usr/share/udhcpc/default.script" {
		t.Errorf("busybox-binsh: %+v", b)
	}
	d, _ := ReadDistro(tr)
	if got := b.PURL(d); got != "pkg:apk/alpine/busybox-binsh@1.36.1-r29?arch=x86_64&distro=alpine-3.20.0" {
		t.Errorf("purl %s", got)
	}
	c, err := Scan(tr, "", tr)
	if err != nil || names(c.Packages) != "musl busybox-binsh" {
		t.Errorf("Scan: %v %v", names(c.Packages), err)
	}
	for _, bad := range []string{"P:a\nR:file\n", "P:a\n\nP:a\nV:1\n", "V:1\n", "not a field\n"} {
		tr := tree.New(time.Unix(0, 0))
		putFile(t, tr, "lib/apk/db/installed", bad)
		if _, err := ReadApk(tr); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
