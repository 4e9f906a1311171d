package test

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// debianTree makes a source tree from this Debian host: its whole dpkg
// database and os-release, and the files of bash, coreutils and libc6
// (with their copyright files) where a merged-/usr system keeps them,
// /bin, /sbin and /lib* being links into /usr. It returns the tree and
// the paths, as the packages list them, of the files it copied.
func debianTree(t *testing.T, dir string) (string, []string) {
	t.Helper()
	root := filepath.Join(dir, "debian")
	copyHost := func(host, rel string) {
		st, err := os.Stat(host)
		if err != nil || !st.Mode().IsRegular() {
			return
		}
		dst := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		in, err := os.Open(host)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		out.Close()
	}
	copyHost("/var/lib/dpkg/status", "var/lib/dpkg/status")
	copyHost("/var/lib/dpkg/info/format", "var/lib/dpkg/info/format") // names multiarch lists PACKAGE:ARCH.list
	lists, _ := filepath.Glob("/var/lib/dpkg/info/*.list")
	for _, l := range lists {
		copyHost(l, strings.TrimPrefix(l, "/"))
	}
	copyHost("/usr/lib/os-release", "usr/lib/os-release")
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if target, err := os.Readlink("/" + l); err == nil {
			os.Symlink(target, filepath.Join(root, l))
		}
	}
	var copied []string
	for _, pkg := range []string{"bash", "coreutils", "libc6"} {
		out, err := exec.Command("dpkg", "-L", pkg).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			real, err := filepath.EvalSymlinks(p)
			if err != nil {
				continue
			}
			if st, err := os.Stat(real); err != nil || !st.Mode().IsRegular() || !strings.HasPrefix(real, "/usr/") {
				continue
			}
			copyHost(real, strings.TrimPrefix(real, "/"))
			copied = append(copied, p)
		}
	}
	// base-files owns /usr/lib/os-release, which the image holds too.
	return root, append(copied, "/usr/lib/os-release")
}

// sbomPackages returns "name:arch version" of every package component of
// a CycloneDX SBOM.
func sbomPackages(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var bom struct {
		Components []struct {
			Name, Version, Purl string
		}
	}
	if err := json.Unmarshal(data, &bom); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range bom.Components {
		arch := ""
		if i := strings.Index(c.Purl, "arch="); i >= 0 {
			arch = strings.SplitN(c.Purl[i+5:], "&", 2)[0]
		}
		out = append(out, c.Name+":"+arch+" "+c.Version)
	}
	sort.Strings(out)
	return out
}

// TestBuildSBOM: a build from a Debian tree writes SPDX 2.3 and CycloneDX
// 1.6 SBOMs that validate against the published schemas, listed in the
// signed manifest and checked by kiln verify. Taking the whole tree, they
// list what `dpkg-query --admindir` lists in that tree, same versions;
// taking only /usr, the packages that own a file the image holds, as
// `dpkg-query -S` names them. A changed SBOM fails verify; a signed
// build's provenance verifies.
func TestBuildSBOM(t *testing.T) {
	dir := t.TempDir()
	root, copied := debianTree(t, dir)
	key := filepath.Join(dir, "k")
	mustRun(t, kiln, "keygen", "-o", key)
	admin := filepath.Join(root, "var/lib/dpkg")
	out, err := exec.Command("dpkg-query", "--admindir", admin, "-W", "-f", "${Package}:${Architecture} ${Version} ${db:Status-Abbrev}\n").Output()
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2][1] != 'c' && f[2][1] != 'n' {
			all = append(all, f[0]+" "+f[1])
		}
	}
	sort.Strings(all)
	// The packages owning the files copied, by dpkg-query -S.
	args := append([]string{"--admindir", admin, "-S"}, copied...)
	// (It exits 1 when a path is known only by a diversion; the paths it
	// finds are still printed.)
	out, err = exec.Command("dpkg-query", args...).Output()
	if err != nil && len(out) == 0 {
		t.Fatalf("dpkg-query -S: %v", err)
	}
	owners := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasPrefix(line, "diversion by") {
			continue
		}
		pkgs, _, _ := strings.Cut(line, ": ")
		for _, p := range strings.Split(pkgs, ", ") {
			owners[strings.Split(p, ":")[0]] = true
		}
	}
	versions := map[string]string{}
	for _, a := range all {
		nameArch, _, _ := strings.Cut(a, " ")
		versions[strings.Split(nameArch, ":")[0]] = a
	}
	var usrWant []string
	for o := range owners {
		usrWant = append(usrWant, versions[o])
	}
	sort.Strings(usrWant)

	for _, c := range []struct {
		name, subdir string
		want         []string
	}{{"whole tree", "", all}, {"/usr", "/usr", usrWant}} {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(dir, strings.Trim(strings.ReplaceAll(c.name, "/", ""), " "))
			os.MkdirAll(d, 0o755)
			sub := ""
			if c.subdir != "" {
				sub = "\n    subdir: " + c.subdir
			}
			recipe := filepath.Join(d, "r.yaml")
			os.WriteFile(recipe, []byte("name: deb\nversion: 1.0.0\nlayout: coreos\npartitions:\n  USR-A:\n    filesystem: squashfs\n    source: \"dir:"+root+"\""+sub+"\n  OEM: {}\n"), 0o644)
			o := filepath.Join(d, "out")
			if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", recipe, "-o", o, "--sign", key+".key"); r.code != 0 {
				t.Fatalf("build: %s", r.stderr)
			}
			got := sbomPackages(t, filepath.Join(o, "sbom.cdx.json"))
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("SBOM lists %d packages, want %d\ngot  %.600v\nwant %.600v", len(got), len(c.want), got, c.want)
			}
			for _, k := range []string{"spdx", "cdx"} {
				if msg, ok := validateSBOM(t, k, filepath.Join(o, "sbom."+k+".json")); !ok {
					t.Errorf("sbom.%s.json does not validate:\n%s", k, msg)
				}
			}
			m := readManifest(t, o)
			if len(m.Documents) != 2 || m.Documents[0].Name != "sbom.spdx.json" || m.Documents[1].Name != "sbom.cdx.json" {
				t.Errorf("manifest documents %+v", m.Documents)
			}
			r := run(t, kiln, "verify", filepath.Join(o, "disk.img"), "--key", key+".pub")
			if r.code != 0 || !strings.Contains(r.stdout, "ok   document sbom.cdx.json") || !strings.Contains(r.stdout, "ok   provenance ") {
				t.Errorf("verify: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			cdx := filepath.Join(o, "sbom.cdx.json")
			data, _ := os.ReadFile(cdx)
			os.WriteFile(cdx, []byte(strings.Replace(string(data), `"version": "1.0.0"`, `"version": "6.6.6"`, 1)), 0o644)
			verifyFails(t, "document sbom.cdx.json", "the manifest says", filepath.Join(o, "disk.img"), "--key", key+".pub")
			os.WriteFile(cdx, data, 0o644)
		})
	}
}
