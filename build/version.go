package build

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a release version: dot-separated numbers ("3815.2.0",
// "1.0.0"), optionally followed by "-PRERELEASE" and "+BUILD".
type Version struct {
	Numbers    []uint64
	Prerelease string
	Build      string
}

// ParseVersion parses a release version.
func ParseVersion(s string) (Version, error) {
	var v Version
	rest, build, _ := strings.Cut(s, "+")
	core, pre, _ := strings.Cut(rest, "-")
	v.Prerelease, v.Build = pre, build
	if core == "" {
		return v, fmt.Errorf("malformed version %q: want numbers separated by dots, such as 1.0.0", s)
	}
	for _, f := range strings.Split(core, ".") {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return v, fmt.Errorf("malformed version %q: want numbers separated by dots, such as 1.0.0", s)
		}
		v.Numbers = append(v.Numbers, n)
	}
	return v, nil
}

// Compare returns -1, 0 or 1 as v is older than, the same as, or newer
// than w. Missing numbers count as 0; a prerelease is older than its
// release; prereleases compare as strings; build metadata is ignored.
func (v Version) Compare(w Version) int {
	for i := 0; i < max(len(v.Numbers), len(w.Numbers)); i++ {
		var a, b uint64
		if i < len(v.Numbers) {
			a = v.Numbers[i]
		}
		if i < len(w.Numbers) {
			b = w.Numbers[i]
		}
		if a != b {
			if a < b {
				return -1
			}
			return 1
		}
	}
	switch {
	case v.Prerelease == w.Prerelease:
		return 0
	case v.Prerelease == "":
		return 1
	case w.Prerelease == "":
		return -1
	case v.Prerelease < w.Prerelease:
		return -1
	}
	return 1
}
