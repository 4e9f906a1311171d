package version

import (
	"errors"
	"testing"
)

// TestPrecedence checks the ordering example of SemVer 2.0.0 section 11
// and the prerelease cases that string comparison gets wrong.
func TestPrecedence(t *testing.T) {
	ordered := []string{
		"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
		"1.0.0-rc.1", "1.0.0-rc.9", "1.0.0-rc.10", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0", "10.0.0",
		"3815.2.0",
	}
	for i, a := range ordered {
		for j, b := range ordered {
			va, vb := MustParse(a), MustParse(b)
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := va.Compare(vb); got != want {
				t.Errorf("Compare(%s, %s) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func TestBuildMetadataIgnored(t *testing.T) {
	if c := MustParse("1.0.0+build.1").Compare(MustParse("1.0.0+build.2")); c != 0 {
		t.Errorf("build metadata changed the order: %d", c)
	}
	if s := MustParse("1.2.3-rc.1+exp.sha.5114f85").String(); s != "1.2.3-rc.1+exp.sha.5114f85" {
		t.Errorf("String = %q", s)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []string{"", "1", "1.0", "1.0.0.0", "01.0.0", "1.00.0", "v1.0.0", "1.0.0-", "1.0.0-rc..1",
		"1.0.0-01", "1.0.0+", "1.0.0-rc_1", "1.0.x", "-1.0.0", "1.0.0 ", "99999999999999999999.0.0"} {
		if _, err := Parse(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", s, err)
		}
	}
	for _, s := range []string{"0.0.0", "1.0.0-0", "1.0.0-0a", "1.0.0-x-y.z", "1.0.0+001"} {
		if _, err := Parse(s); err != nil {
			t.Errorf("Parse(%q): %v", s, err)
		}
	}
}
