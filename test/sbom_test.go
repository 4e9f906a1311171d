package test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/sbom"
	"github.com/kiln-os/kiln/build/tree"
)

// schemaDir holds the published SPDX 2.3 and CycloneDX 1.6 JSON schemas,
// beside the project (../shared/schemas).
var schemaDir = filepath.Join("..", "..", "shared", "schemas")

// validateSBOM checks an SBOM against its published JSON schema with
// Debian's python3-jsonschema (Debian's own interpreter: another python3
// may be first on PATH). kind is "spdx" or "cdx". It returns the
// validator's complaints.
func validateSBOM(t *testing.T, kind, path string) (string, bool) {
	t.Helper()
	if _, err := os.Stat(schemaDir); err != nil {
		t.Fatalf("the published schemas are not at %s: %v", schemaDir, err)
	}
	const script = `
import json, os, sys, jsonschema, jsonschema._utils, jsonschema._validators
# jsonschema 4.10 (Debian 12) sorts the extra items of an array to name
# them in an error message, which fails on objects: a CycloneDX component
# with three or more licences crashed the validator while it tried the
# (rightly failing) one-expression branch of licenseChoice. Only the
# message is changed: the items are named unsorted.
def extras_msg(extras):
    extras = list(extras)
    return ", ".join(repr(e) for e in extras), "was" if len(extras) == 1 else "were"
jsonschema._utils.extras_msg = extras_msg
if hasattr(jsonschema._validators, "extras_msg"):
    jsonschema._validators.extras_msg = extras_msg
d, kind, path = sys.argv[1], sys.argv[2], sys.argv[3]
load = lambda n: json.load(open(os.path.join(d, n)))
doc = json.load(open(path))
if kind == "spdx":
    schema, store = load("spdx-2.3.schema.json"), {}
else:
    schema = load("cyclonedx-bom-1.6.schema.json")
    store = {s["$id"]: s for s in (load("cyclonedx-spdx.schema.json"), load("cyclonedx-jsf-0.82.schema.json"))}
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
v = cls(schema, resolver=jsonschema.RefResolver.from_schema(schema, store=store), format_checker=cls.FORMAT_CHECKER)
errs = list(v.iter_errors(doc))
for e in errs:
    print("/".join(map(str, e.absolute_path)) + ": " + e.message[:300])
sys.exit(1 if errs else 0)
`
	out, err := exec.Command("/usr/bin/python3", "-c", script, schemaDir, kind, path).CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("python3-jsonschema: %v\n%s", err, out)
		}
	}
	return string(out), err == nil
}

// hostTreeOfDpkg holds this Debian host's dpkg database and os-release,
// as a source tree of a Debian image holds them.
func hostTreeOfDpkg(t *testing.T) *tree.Tree {
	t.Helper()
	tr := tree.New(time.Unix(0, 0))
	var paths []string
	paths = append(paths, "/var/lib/dpkg/status", "/usr/lib/os-release")
	l, _ := filepath.Glob("/var/lib/dpkg/info/*.list")
	paths = append(paths, l...)
	c, _ := filepath.Glob("/usr/share/doc/*/copyright")
	paths = append(paths, c...)
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		if err := tr.Put(strings.TrimPrefix(p, "/"), &tree.Inode{Type: tree.Regular, Perm: 0o644, Size: st.Size(), Content: tree.HostFile(p)}); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

// TestSBOMSchemas: the SPDX 2.3 and CycloneDX 1.6 documents kiln writes
// of this host's packages (and of a tree of files) validate against the
// published schemas, say the versions they claim, list every package
// with its purl, and come out the same twice; a doctored document fails
// the validator.
func TestSBOMSchemas(t *testing.T) {
	dir := t.TempDir()
	tr := hostTreeOfDpkg(t)
	pkgs, err := sbom.ReadDpkg(tr)
	if err != nil {
		t.Fatal(err)
	}
	distro, err := sbom.ReadDistro(tr)
	if err != nil {
		t.Fatal(err)
	}
	subject := sbom.Subject{Name: "demo", Version: "1.0.0", Partition: "USR-A", VerityRoot: strings.Repeat("ab", 32), Digest: strings.Repeat("cd", 32), Time: time.Unix(1700000000, 0), Tool: "test"}
	contents := []struct {
		name string
		c    sbom.Contents
	}{
		{"packages", sbom.Contents{Distro: distro, Packages: pkgs}},
		{"files", sbom.Contents{Files: []sbom.FileEntry{{Path: "/usr/bin/hello", SHA1: strings.Repeat("1", 40), SHA256: strings.Repeat("2", 64)}}}},
	}
	for _, c := range contents {
		for _, w := range []struct {
			kind  string
			write func(*bytes.Buffer) error
		}{
			{"spdx", func(b *bytes.Buffer) error { return sbom.WriteSPDX(b, subject, c.c) }},
			{"cdx", func(b *bytes.Buffer) error { return sbom.WriteCycloneDX(b, subject, c.c) }},
		} {
			var a, b bytes.Buffer
			if err := w.write(&a); err != nil {
				t.Fatal(err)
			}
			w.write(&b)
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				t.Errorf("%s %s: two writes differ", c.name, w.kind)
			}
			path := filepath.Join(dir, c.name+"."+w.kind+".json")
			os.WriteFile(path, a.Bytes(), 0o644)
			if out, ok := validateSBOM(t, w.kind, path); !ok {
				t.Errorf("%s %s does not validate:\n%s", c.name, w.kind, out)
			}
			var doc map[string]any
			if err := json.Unmarshal(a.Bytes(), &doc); err != nil {
				t.Fatal(err)
			}
			switch w.kind {
			case "spdx":
				if doc["spdxVersion"] != "SPDX-2.3" || doc["creationInfo"].(map[string]any)["created"] != "2023-11-14T22:13:20Z" {
					t.Errorf("spdx: version %v, created %v", doc["spdxVersion"], doc["creationInfo"])
				}
			case "cdx":
				if doc["specVersion"] != "1.6" || doc["bomFormat"] != "CycloneDX" {
					t.Errorf("cdx: %v %v", doc["bomFormat"], doc["specVersion"])
				}
			}
			if c.name == "packages" {
				for _, p := range pkgs {
					if !bytes.Contains(a.Bytes(), []byte(`"`+p.PURL(distro)+`"`)) {
						t.Errorf("%s lacks %s", w.kind, p.PURL(distro))
						break
					}
				}
			}
			// Doctored: a required field dropped.
			bad := map[string]string{"spdx": `"spdxVersion"`, "cdx": `"bomFormat"`}[w.kind]
			doctored := filepath.Join(dir, "bad."+w.kind+".json")
			os.WriteFile(doctored, bytes.Replace(a.Bytes(), []byte(bad), []byte(`"x-dropped"`), 1), 0o644)
			if out, ok := validateSBOM(t, w.kind, doctored); ok {
				t.Errorf("%s %s: a document without %s validates:\n%s", c.name, w.kind, bad, out)
			}
		}
	}
}
