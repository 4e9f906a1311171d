package sbom

import (
	"fmt"
	"path"
	"strings"

	"github.com/kiln-os/kiln/build/tree"
)

// apkInstalled is apk-tools' database of installed packages.
const apkInstalled = "lib/apk/db/installed"

// ReadApk returns the packages of the tree's apk database
// (lib/apk/db/installed: "X:value" lines, a blank line after each
// package; P name, V version, A arch, L licence, o origin, m maintainer,
// F a directory and R a file in it), in the database's order. Fields kiln
// does not use are skipped, so a newer apk-tools' database still reads.
// It returns nil, nil when the tree has none.
func ReadApk(t *tree.Tree) ([]*Package, error) {
	b, ok, err := readFile(t, apkInstalled, maxDatabaseFile)
	if err != nil || !ok {
		return nil, err
	}
	var pkgs []*Package
	var p *Package
	dir := ""
	seen := map[string]bool{}
	finish := func(line int) error {
		if p == nil {
			return nil
		}
		if p.Name == "" || p.Version == "" {
			return fmt.Errorf("%w: %s: the package ending on line %d has no P: or V: line", ErrDatabase, apkInstalled, line)
		}
		if seen[p.Name] {
			return fmt.Errorf("%w: %s lists %s twice", ErrDatabase, apkInstalled, p.Name)
		}
		seen[p.Name] = true
		if p.Source == "" {
			p.Source = p.Name
		}
		p.SourceVersion = p.Version
		if len(pkgs) == maxPackages {
			return fmt.Errorf("%w: %s lists more than %d packages", ErrDatabase, apkInstalled, maxPackages)
		}
		pkgs = append(pkgs, p)
		p, dir = nil, ""
		return nil
	}
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if len(line) < 2 {
			if err := finish(i + 1); err != nil {
				return nil, err
			}
			continue
		}
		if line[1] != ':' {
			return nil, fmt.Errorf("%w: %s, line %d: %q is not a field", ErrDatabase, apkInstalled, i+1, line)
		}
		if p == nil {
			p = &Package{Type: "apk"}
		}
		v := line[2:]
		switch line[0] {
		case 'P':
			p.Name = v
		case 'V':
			p.Version = v
		case 'A':
			p.Arch = v
		case 'L':
			if v != "" {
				p.Licenses = []string{v}
			}
		case 'o':
			p.Source = v
		case 'm':
			p.Maintainer = v
		case 'F':
			dir = clean(v)
			p.Files = append(p.Files, dir)
		case 'R':
			if dir == "" {
				return nil, fmt.Errorf("%w: %s, line %d: a file (R:) before its directory (F:)", ErrDatabase, apkInstalled, i+1)
			}
			p.Files = append(p.Files, path.Join(dir, v))
		}
	}
	if err := finish(len(lines)); err != nil {
		return nil, err
	}
	return pkgs, nil
}
