// Package sbom finds what an OS tree is made of: the packages its package
// databases list (dpkg, apk), with the files each owns, and the
// distribution the tree says it is (os-release). What the build writes
// from it (SPDX, CycloneDX) is in the writers of this package.
//
// The databases are read from the source tree as the recipe names it,
// before a subdir narrows it: a recipe that takes /usr of a Debian tree
// leaves var/lib/dpkg behind, yet the image holds the packages' files. A
// package is listed when the image holds one of the files it owns, or,
// with no subdir, whenever the database lists it as installed.
package sbom

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"strings"

	"github.com/kiln-os/kiln/build/tree"
)

// Package is one package a database lists.
type Package struct {
	// Type is the purl type of the database: "deb" or "apk".
	Type    string
	Name    string
	Version string
	// Arch is the package's architecture ("amd64", "all").
	Arch string
	// Source and SourceVersion name the source package it was built from
	// (Source is Name when the database names none).
	Source        string
	SourceVersion string
	// Maintainer is the database's Maintainer field.
	Maintainer string
	// Licenses are the licence names its copyright file declares
	// (machine-readable DEP-5 "License:" fields), sorted, each once.
	Licenses []string
	// Files are the paths it owns (absolute, clean), in the database's
	// order; directories included.
	Files []string
}

// Distro is what the tree's os-release says it is.
type Distro struct {
	ID        string // "debian"
	VersionID string // "12"
	Name      string // PRETTY_NAME
}

// String returns the purl distro qualifier: "debian-12".
func (d Distro) String() string {
	if d.VersionID == "" {
		return d.ID
	}
	return d.ID + "-" + d.VersionID
}

// PURL returns the package URL scanners match (purl-spec's deb type):
// pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12.
func (p *Package) PURL(d Distro) string {
	ns := d.ID
	if ns == "" {
		ns = map[string]string{"deb": "debian", "apk": "alpine"}[p.Type]
	}
	q := url.Values{}
	q.Set("arch", p.Arch)
	if s := d.String(); s != "" {
		q.Set("distro", s)
	}
	// purl-spec: the version is percent-encoded (an epoch's ':' too),
	// qualifiers sorted by key.
	return fmt.Sprintf("pkg:%s/%s/%s@%s?%s", p.Type, ns, purlEscape(p.Name), purlEscape(p.Version), q.Encode())
}

// purlEscape percent-encodes s as purl-spec asks of a name or version.
func purlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == '~' || c == '+' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// Limits on what the readers take from a tree (a recipe's source is
// untrusted input).
const (
	maxDatabaseFile = 256 << 20 // a dpkg status file or list
	maxPackages     = 1 << 20
)

// ErrDatabase is wrapped by every error about a malformed database.
var ErrDatabase = errors.New("sbom: malformed package database")

// readFile returns the content of the regular file at p in t, following
// no symlink; ok is false when there is none.
func readFile(t *tree.Tree, p string, limit int64) ([]byte, bool, error) {
	n, err := t.Lookup(p)
	if err != nil || n.Type != tree.Regular {
		return nil, false, nil
	}
	if n.Size > limit {
		return nil, true, fmt.Errorf("%w: %s is %d bytes (at most %d)", ErrDatabase, p, n.Size, limit)
	}
	if n.Content == nil {
		return nil, true, nil
	}
	rc, err := n.Content.Open()
	if err != nil {
		return nil, true, fmt.Errorf("sbom: %s: %w", p, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, true, fmt.Errorf("sbom: %s: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, true, fmt.Errorf("%w: %s is over %d bytes", ErrDatabase, p, limit)
	}
	return b, true, nil
}

// ReadDistro reads the tree's os-release (usr/lib/os-release, then
// etc/os-release); the zero Distro when it has none.
func ReadDistro(t *tree.Tree) (Distro, error) {
	for _, p := range []string{"usr/lib/os-release", "etc/os-release"} {
		b, ok, err := readFile(t, p, 64<<10)
		if err != nil {
			return Distro{}, err
		}
		if !ok {
			continue
		}
		var d Distro
		for _, line := range strings.Split(string(b), "\n") {
			k, v, found := strings.Cut(strings.TrimSpace(line), "=")
			if !found {
				continue
			}
			v = strings.Trim(v, `"'`)
			switch k {
			case "ID":
				d.ID = v
			case "VERSION_ID":
				d.VersionID = v
			case "PRETTY_NAME":
				d.Name = v
			}
		}
		return d, nil
	}
	return Distro{}, nil
}

// clean returns p as an absolute clean path.
func clean(p string) string {
	return path.Clean("/" + p)
}
