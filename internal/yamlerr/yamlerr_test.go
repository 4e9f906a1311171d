package yamlerr

import (
	"bytes"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

type part struct {
	Number int    `yaml:"number"`
	Size   string `yaml:"size"`
}

type doc struct {
	Name       string           `yaml:"name"`
	Level      int              `yaml:"level"`
	Partitions []part           `yaml:"partitions"`
	Named      map[string]*part `yaml:"named"`
}

func TestProblems(t *testing.T) {
	cases := []struct {
		src  string
		want Problem
	}{
		{"name: [1]\n", Problem{1, "name", "want a string, got a list"}},
		{"name: x\nlevel: high\n", Problem{2, "level", "want a number, got a string"}},
		{"partitions:\n  - {number: 1, size: 1MiB, bogus: 1}\n", Problem{2, "partitions[0].bogus", "unknown key"}},
		{"partitions:\n  - number: 1\n    bogus: 2\n", Problem{3, "partitions[0].bogus", "unknown key"}},
		{"named:\n  USR-A:\n    number: x\n", Problem{3, "named.USR-A.number", "want a number, got a string"}},
		{"named:\n  USR-A: {size: [a]}\n", Problem{2, "named.USR-A.size", "want a string, got a list"}},
	}
	for _, c := range cases {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(c.src), &root); err != nil {
			t.Fatal(err)
		}
		var d doc
		dec := yaml.NewDecoder(bytes.NewReader([]byte(c.src)))
		dec.KnownFields(true)
		err := dec.Decode(&d)
		ps := Problems(err, &root)
		if len(ps) != 1 || ps[0] != c.want {
			t.Errorf("%q: %+v (%v), want %+v", c.src, ps, err, c.want)
		}
	}
	if Problems(nil, nil) != nil {
		t.Error("no error, problems")
	}
}

// TestSyntaxFindsTheLine: the line a syntax error blames is the line at
// fault, not the start of the block the parser could not finish.
func TestSyntaxFindsTheLine(t *testing.T) {
	for _, c := range []struct {
		doc  string
		line int
		want string
	}{
		{"name: demo\nversion: 1.0.0\nchannel: stable\nlayout: coreos\npartitions:\n  EFI-SYSTEM:\n    filesystem: vfat\n  USR-A:\n    filesystem: ext4\n    verity: true\n    source: dir:/tmp\n   subdir: /usr\n  OEM: {}\n", 12, "indented to no level"},
		{"name: demo\nversion: 1.0.0\n\tlayout: coreos\npartitions: {}\n", 3, "a tab in the indentation"},
		{"a: 1\n  b: 2\n", 2, "indented to no level"},
		{"a:\n  b: |\n    text\n      more text\n  c: 2\nd: [1,\n  2]\n  e: 3\n", 8, "indented to no level"},
		{"list:\n  - x: 1\n    y: 2\n  - z\n", 0, ""},
		{"name: x\npartitions:\n  - number: 1\n   label: A\n", 4, "indented to no level"},
	} {
		var v any
		err := yaml.Unmarshal([]byte(c.doc), &v)
		if c.line == 0 {
			if err != nil {
				t.Errorf("%q: %v", c.doc, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q parsed", c.doc)
			continue
		}
		line, msg := Syntax([]byte(c.doc), err)
		if line != c.line || !strings.Contains(msg, c.want) {
			t.Errorf("%q: line %d %q, want line %d %q (parser: %v)", c.doc, line, msg, c.line, c.want, err)
		}
	}
}
