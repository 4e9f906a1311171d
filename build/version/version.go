// Package version parses release versions and orders them by Semantic
// Versioning 2.0.0 precedence (semver.org, section 11). kiln orders
// releases with it everywhere: payload apply and generate, the boot-time
// version floor, and slot status.
package version

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrMalformed is returned for a string that is not a SemVer 2.0.0
// version.
var ErrMalformed = errors.New("version: not a SemVer 2.0.0 version")

// Version is MAJOR.MINOR.PATCH, optionally followed by "-PRERELEASE"
// (dot-separated identifiers) and "+BUILD" (metadata, ignored by the
// order).
type Version struct {
	Major, Minor, Patch uint64
	Prerelease          []string
	Build               string
}

// Parse parses s as a SemVer 2.0.0 version: three numbers without
// leading zeros, then an optional prerelease and build metadata made of
// non-empty dot-separated identifiers of [0-9A-Za-z-] (numeric prerelease
// identifiers without leading zeros).
func Parse(s string) (Version, error) {
	var v Version
	bad := func(why string) (Version, error) {
		return Version{}, fmt.Errorf("%w: %q: %s (want MAJOR.MINOR.PATCH, such as 1.0.0 or 2.1.0-rc.1)", ErrMalformed, s, why)
	}
	rest, build, hasBuild := strings.Cut(s, "+")
	core, pre, hasPre := strings.Cut(rest, "-")
	nums := strings.Split(core, ".")
	if len(nums) != 3 {
		return bad(fmt.Sprintf("%d numbers", len(nums)))
	}
	for i, f := range nums {
		if !numeric(f) {
			return bad(fmt.Sprintf("%q is not a number", f))
		}
		if len(f) > 1 && f[0] == '0' {
			return bad(fmt.Sprintf("%q has a leading zero", f))
		}
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return bad(fmt.Sprintf("%q is too large", f))
		}
		*[]*uint64{&v.Major, &v.Minor, &v.Patch}[i] = n
	}
	if hasPre {
		for _, id := range strings.Split(pre, ".") {
			if !identifier(id) {
				return bad(fmt.Sprintf("prerelease identifier %q", id))
			}
			if numeric(id) && len(id) > 1 && id[0] == '0' {
				return bad(fmt.Sprintf("prerelease identifier %q has a leading zero", id))
			}
			v.Prerelease = append(v.Prerelease, id)
		}
	}
	if hasBuild {
		for _, id := range strings.Split(build, ".") {
			if !identifier(id) {
				return bad(fmt.Sprintf("build identifier %q", id))
			}
		}
		v.Build = build
	}
	return v, nil
}

// MustParse is Parse for versions known to be valid (tests, constants).
func MustParse(s string) Version {
	v, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return v
}

func numeric(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func identifier(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// String returns the version as Parse read it.
func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if len(v.Prerelease) > 0 {
		s += "-" + strings.Join(v.Prerelease, ".")
	}
	if v.Build != "" {
		s += "+" + v.Build
	}
	return s
}

// Compare returns -1, 0 or 1 as v has lower, equal or higher precedence
// than w: numbers compared numerically; a prerelease is lower than its
// release; prereleases compared identifier by identifier (numeric ones
// numerically and lower than alphanumeric ones, alphanumeric ones in
// ASCII order), a shorter set lower when all before are equal; build
// metadata ignored.
func (v Version) Compare(w Version) int {
	for _, p := range [][2]uint64{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		if c := cmpUint(p[0], p[1]); c != 0 {
			return c
		}
	}
	switch {
	case len(v.Prerelease) == 0 && len(w.Prerelease) == 0:
		return 0
	case len(v.Prerelease) == 0:
		return 1
	case len(w.Prerelease) == 0:
		return -1
	}
	for i := 0; i < min(len(v.Prerelease), len(w.Prerelease)); i++ {
		if c := cmpIdentifier(v.Prerelease[i], w.Prerelease[i]); c != 0 {
			return c
		}
	}
	return cmpUint(uint64(len(v.Prerelease)), uint64(len(w.Prerelease)))
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpIdentifier(a, b string) int {
	an, bn := numeric(a), numeric(b)
	switch {
	case an && bn:
		// No leading zeros: a longer number is larger (no overflow).
		if c := cmpUint(uint64(len(a)), uint64(len(b))); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	case an:
		return -1
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

// Less reports whether a has lower precedence than b; both must parse.
func Less(a, b string) (bool, error) {
	va, err := Parse(a)
	if err != nil {
		return false, err
	}
	vb, err := Parse(b)
	if err != nil {
		return false, err
	}
	return va.Compare(vb) < 0, nil
}
