package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readmeBlock returns the lines of the code block that follows heading in
// README.md, comments and blank lines dropped.
func readmeBlock(t *testing.T, heading string) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q", heading)
	}
	_, rest, _ = strings.Cut(rest, "```\n")
	block, _, _ := strings.Cut(rest, "```")
	var out []string
	for _, l := range strings.Split(block, "\n") {
		l, _, _ = strings.Cut(l, "#")
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestREADMEPipeline runs the README's release pipeline as written, with
// every default: its commands, in order, against a real registry
// (Debian's docker-registry behind TLS, its CA trusted the way a machine
// trusts one, SSL_CERT_FILE), with only the names filled in (N,
// registry.example.com, os.yaml). Release 1.0.0 is built and pushed, then
// release 2.0.0 goes through the whole CI part in a fresh workspace. The node's part runs on a
// disk image of release 1.0.0 instead of a booted node: apply and
// mark-good name the disk (and mark-good the slot), and "reboot" is what
// the boot path does to the slot's bits.
func TestREADMEPipeline(t *testing.T) {
	lines := readmeBlock(t, "## A release pipeline")
	dir := t.TempDir()
	reg, px, env := registryBehindProxy(t)
	env = append(env, "SSL_CERT_FILE="+reg.ca, "PATH="+filepath.Dir(kiln)+":"+os.Getenv("PATH"), "SOURCE_DATE_EPOCH=1700000000")
	os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(smallLayout), 0o644)
	os.MkdirAll(filepath.Join(dir, "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "usr", "bin", "hello"), []byte("#!/bin/sh\necho hello\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "os.yaml"), []byte("name: os\nversion: 0.0.0\nlayout: small.yaml\npartitions:\n  USR-A: {source: \"dir:usr\"}\n  ROOT: {}\n"), 0o644)
	sh := func(line string) {
		t.Helper()
		r := run(t, "env", append(append([]string{}, env...), "sh", "-c", "cd "+dir+" && "+line)...)
		if r.code != 0 {
			t.Fatalf("README line %q: exit %d\n%s%s", line, r.code, r.stdout, r.stderr)
		}
	}
	fill := func(line, n, prev string) string {
		line = strings.ReplaceAll(line, "registry.example.com", px.host)
		line = strings.ReplaceAll(line, "N-1", prev)
		return strings.ReplaceAll(line, "N", n)
	}
	node := false
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "kiln keygen"):
			sh(l)
		case strings.HasPrefix(l, "kiln build"), strings.HasPrefix(l, "kiln push out/"):
			sh(fill(l, "1.0.0", ""))
		}
	}
	// Release 2.0.0's CI job runs in a fresh workspace: the recipe, its
	// sources and the key, nothing of release 1.0.0's job.
	first := dir
	dir = t.TempDir()
	mustRun(t, "cp", "-a", filepath.Join(first, "os.yaml"), filepath.Join(first, "small.yaml"), filepath.Join(first, "usr"),
		filepath.Join(first, "release.key"), filepath.Join(first, "release.pub"), dir)
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "kiln keygen"):
		case strings.HasPrefix(l, "kiln pull") && strings.Contains(l, "/payload:"):
			node = true
			mustRun(t, "cp", "--sparse=always", filepath.Join(first, "out", "1.0.0", "disk.img"), filepath.Join(dir, "node.img"))
			sh(fill(l, "2.0.0", "1.0.0"))
		case !node:
			sh(fill(l, "2.0.0", "1.0.0"))
		case strings.HasPrefix(l, "kiln payload apply"):
			sh(fill(l, "2.0.0", "1.0.0") + " --disk node.img")
		case l == "reboot":
			bootTrial(t, filepath.Join(dir, "node.img"), 4)
		case l == "kiln slot mark-good":
			sh(l + " node.img USR-B")
		default:
			t.Fatalf("README line %q: the test does not know how to run it on a node's image", l)
		}
	}
	st := statusOf(t, filepath.Join(dir, "node.img"), "--key", filepath.Join(dir, "release.pub"))
	if st.Next != "USR-B" || st.Slots[1].Version != "2.0.0" || st.Slots[1].Record != "verified" || st.Slots[1].OnTrial || cgptSlot(t, filepath.Join(dir, "node.img"), 4) != [3]int{2, 0, 1} {
		t.Errorf("the node after the README's pipeline: %+v", st)
	}
}

// TestREADMERecipe builds the README's example recipe as written, with
// the files it names made for it: an OCI image images/os:1.0.0 (umoci)
// holding /usr, and boot/bootx64.efi.
func TestREADMERecipe(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## Recipes\n")
	if !ok {
		t.Fatal("README.md has no ## Recipes")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	recipe, _, _ := strings.Cut(rest, "```")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "recipe.yaml"), []byte(recipe), 0o644)
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)
	os.WriteFile(filepath.Join(dir, "boot", "bootx64.efi"), []byte("MZ not really an EFI binary\n"), 0o644)
	img := filepath.Join(dir, "images", "os")
	os.MkdirAll(filepath.Dir(img), 0o755)
	mustRun(t, "umoci", "init", "--layout", img)
	mustRun(t, "umoci", "new", "--image", img+":1.0.0")
	bundle := filepath.Join(dir, "bundle")
	mustRun(t, "umoci", "unpack", "--image", img+":1.0.0", bundle)
	os.MkdirAll(filepath.Join(bundle, "rootfs", "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(bundle, "rootfs", "usr", "bin", "hello"), []byte("#!/bin/sh\necho hello\n"), 0o755)
	mustRun(t, "umoci", "repack", "--image", img+":1.0.0", bundle)
	out := filepath.Join(dir, "out")
	r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", filepath.Join(dir, "recipe.yaml"), "-o", out)
	if r.code != 0 {
		t.Fatalf("the README's recipe: exit %d\n%s", r.code, r.stderr)
	}
	m := readManifest(t, out)
	if m.Name != "demo" || m.Version != "1.0.0" || m.Partition("USR-A").Verity == nil {
		t.Errorf("manifest: %+v", m)
	}
	mustRun(t, "debugfs", "-R", "stat /bin/hello", filepath.Join(out, "usr.img"))
}
