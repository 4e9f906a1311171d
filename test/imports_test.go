package test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportGraph keeps dependencies pointing downward: nothing imports
// cmd/, and layout/ imports no other kiln package but leaf helpers in
// internal/ (which import no kiln package themselves).
func TestImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", "github.com/kiln-os/kiln/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	const mod = "github.com/kiln-os/kiln/"
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imps, _ := strings.Cut(line, ":")
		imports[pkg] = strings.Fields(imps)
	}
	leaf := func(pkg string) bool {
		for _, imp := range imports[pkg] {
			if strings.HasPrefix(imp, mod) {
				return false
			}
		}
		return strings.HasPrefix(pkg, mod+"internal/")
	}
	for pkg, imps := range imports {
		for _, imp := range imps {
			if strings.HasPrefix(imp, mod+"cmd") {
				t.Errorf("%s imports %s: nothing may import cmd/", pkg, imp)
			}
			if strings.HasPrefix(pkg, mod+"layout") && strings.HasPrefix(imp, mod) && !strings.HasPrefix(imp, mod+"layout") && !leaf(imp) {
				t.Errorf("%s imports %s: layout/ imports no other kiln package but leaf helpers in internal/", pkg, imp)
			}
		}
	}
	if len(imports) < 10 {
		t.Fatalf("go list found %d packages", len(imports))
	}
}
