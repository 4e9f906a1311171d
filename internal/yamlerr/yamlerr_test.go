package yamlerr

import (
	"bytes"
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
