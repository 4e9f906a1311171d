package test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportGraph keeps dependencies pointing downward: nothing imports
// cmd/, and layout/ imports no other kiln package.
func TestImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", "github.com/kiln-os/kiln/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	const mod = "github.com/kiln-os/kiln/"
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, ":")
		for _, imp := range strings.Fields(imports) {
			if strings.HasPrefix(imp, mod+"cmd") {
				t.Errorf("%s imports %s: nothing may import cmd/", pkg, imp)
			}
			if strings.HasPrefix(pkg, mod+"layout") && strings.HasPrefix(imp, mod) && !strings.HasPrefix(imp, mod+"layout") {
				t.Errorf("%s imports %s: layout/ imports no other kiln package", pkg, imp)
			}
		}
	}
}
