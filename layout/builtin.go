package layout

import (
	"embed"
	"sort"
	"strings"
)

// builtinFS holds the built-in layouts: data, not code.
//
//go:embed builtin/*.yaml
var builtinFS embed.FS

// builtin returns the YAML of a built-in layout.
func builtin(name string) ([]byte, bool) {
	if strings.ContainsAny(name, "/.") {
		return nil, false
	}
	b, err := builtinFS.ReadFile("builtin/" + name + ".yaml")
	return b, err == nil
}

// BuiltinNames lists the built-in layouts.
func BuiltinNames() []string {
	entries, _ := builtinFS.ReadDir("builtin")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}
