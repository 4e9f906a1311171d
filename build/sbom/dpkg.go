package sbom

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"github.com/kiln-os/kiln/build/tree"
)

// dpkgDir is where dpkg keeps its database.
const dpkgDir = "var/lib/dpkg"

// ReadDpkg returns the packages the dpkg database of t lists as present
// (status installed, or unpacked or configured half way; not those only
// remembered for their conffiles), in the database's order, each with the
// files its info/PACKAGE.list (or PACKAGE:ARCH.list) names and the
// licences of its copyright file. Distroless images' status.d/ (one
// stanza per file) is read too. It returns nil, nil when t has no dpkg
// database.
func ReadDpkg(t *tree.Tree) ([]*Package, error) {
	status, ok, err := readFile(t, dpkgDir+"/status", maxDatabaseFile)
	if err != nil {
		return nil, err
	}
	var stanzas [][]byte
	if ok {
		stanzas = splitStanzas(status)
	}
	if d, err := t.Lookup(dpkgDir + "/status.d"); err == nil && d.Type == tree.Dir {
		ok = true
		for _, e := range d.Entries {
			if e.Inode.Type != tree.Regular || strings.HasSuffix(e.Name, ".md5sums") {
				continue
			}
			b, _, err := readFile(t, dpkgDir+"/status.d/"+e.Name, maxDatabaseFile)
			if err != nil {
				return nil, err
			}
			stanzas = append(stanzas, splitStanzas(b)...)
		}
	}
	if !ok {
		return nil, nil
	}
	var pkgs []*Package
	seen := map[string]bool{}
	for i, st := range stanzas {
		f, err := parseStanza(st)
		if err != nil {
			return nil, fmt.Errorf("%w: %s/status, stanza %d: %w", ErrDatabase, dpkgDir, i+1, err)
		}
		if f["Package"] == "" {
			return nil, fmt.Errorf("%w: %s/status, stanza %d: no Package field", ErrDatabase, dpkgDir, i+1)
		}
		if !dpkgPresent(f["Status"]) {
			continue
		}
		p := &Package{Type: "deb", Name: f["Package"], Version: f["Version"], Arch: f["Architecture"], Maintainer: f["Maintainer"]}
		p.Source, p.SourceVersion = p.Name, p.Version
		if src := f["Source"]; src != "" {
			name, ver, found := strings.Cut(src, " ")
			p.Source = name
			if found {
				p.SourceVersion = strings.Trim(strings.TrimSpace(ver), "()")
			}
		}
		key := p.Name + ":" + p.Arch
		if seen[key] {
			return nil, fmt.Errorf("%w: %s/status lists %s twice", ErrDatabase, dpkgDir, key)
		}
		seen[key] = true
		if len(pkgs) == maxPackages {
			return nil, fmt.Errorf("%w: %s/status lists more than %d packages", ErrDatabase, dpkgDir, maxPackages)
		}
		if p.Files, err = dpkgFiles(t, p); err != nil {
			return nil, err
		}
		if p.Licenses, err = dpkgLicenses(t, p.Name); err != nil {
			return nil, err
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}

// dpkgPresent reports whether a Status field ("want flag status") says
// the package's files are on the system, as dpkg-query -W lists it.
func dpkgPresent(status string) bool {
	f := strings.Fields(status)
	if len(f) != 3 {
		return false
	}
	switch f[2] {
	case "installed", "unpacked", "half-configured", "half-installed", "triggers-awaited", "triggers-pending":
		return true
	}
	return false
}

// splitStanzas splits a control file into its paragraphs.
func splitStanzas(b []byte) [][]byte {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	var out [][]byte
	for _, s := range bytes.Split(b, []byte("\n\n")) {
		if len(bytes.TrimSpace(s)) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// parseStanza parses one paragraph of "Field: value" lines; continuation
// lines (starting with a space or tab) are kept in the value.
func parseStanza(b []byte) (map[string]string, error) {
	f := map[string]string{}
	last := ""
	for n, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last == "" {
				return nil, fmt.Errorf("line %d: a continuation line before any field", n+1)
			}
			f[last] += "\n" + line
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("line %d: %q is not a field", n+1, line)
		}
		last = k
		f[k] = strings.TrimSpace(v)
	}
	return f, nil
}

// dpkgFiles reads the paths package p owns from its .list file.
func dpkgFiles(t *tree.Tree, p *Package) ([]string, error) {
	for _, name := range []string{p.Name + ":" + p.Arch + ".list", p.Name + ".list"} {
		b, ok, err := readFile(t, dpkgDir+"/info/"+name, maxDatabaseFile)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		var files []string
		for _, line := range strings.Split(string(b), "\n") {
			if line == "" || line == "/." {
				continue
			}
			files = append(files, clean(line))
		}
		return files, nil
	}
	return nil, nil
}

// dpkgLicenses reads the licence names of a machine-readable (DEP-5)
// copyright file, /usr/share/doc/NAME/copyright: each "License:" field's
// first line, each name once, sorted. A copyright file in free form
// gives none.
func dpkgLicenses(t *tree.Tree, name string) ([]string, error) {
	b, ok, err := readFile(t, "usr/share/doc/"+name+"/copyright", 4<<20)
	if err != nil || !ok {
		return nil, err
	}
	if !bytes.HasPrefix(b, []byte("Format:")) {
		return nil, nil
	}
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "License:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if v == "" || seen[v] {
			continue
		}
		seen[v] = true
		out = append(out, v)
	}
	sort.Strings(out)
	return out, nil
}
