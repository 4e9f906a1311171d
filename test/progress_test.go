package test

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestPayloadProgress: payload generate and apply report their stages, a
// line each in a pipe (as in CI), and nothing with -q.
func TestPayloadProgress(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "--type", "rsa-2048", "-o", key)
	rel := releases(t, dir, key, "1.0.0", "2.0.0")
	delta := filepath.Join(dir, "delta.payload")
	r := run(t, kiln, "payload", "generate", "--from", rel["1.0.0"], "--to", rel["2.0.0"], "-o", delta, "--key", key+".key")
	for _, want := range []string{"kiln: hashing the new image: ", "kiln: hashing the old image: ", "kiln: planning operations: ", "kiln: writing and signing the payload: done in "} {
		if r.code != 0 || !strings.Contains(r.stderr, want) {
			t.Errorf("generate: no %q line:\n%s", want, r.stderr)
		}
	}
	disk := filepath.Join(dir, "disk.img")
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), disk)
	r = run(t, kiln, "payload", "apply", delta, "--disk", disk, "--key", key+".pub")
	for _, want := range []string{"kiln: checking the payload: done in ", "kiln: writing USR-B: ", "kiln: reading USR-B back from the device: 128.0 MiB in "} {
		if r.code != 0 || !strings.Contains(r.stderr, want) {
			t.Errorf("apply: no %q line:\n%s", want, r.stderr)
		}
	}
	copyFile(t, filepath.Join(rel["1.0.0"], "disk.img"), disk)
	r = run(t, kiln, "payload", "apply", "-q", delta, "--disk", disk, "--key", key+".pub")
	if r.code != 0 || r.stderr != "" {
		t.Errorf("apply -q printed %q", r.stderr)
	}
	r = run(t, kiln, "payload", "generate", "-q", "--to", rel["2.0.0"], "-o", filepath.Join(dir, "full.payload"), "--key", key+".key")
	if r.code != 0 || r.stderr != "" {
		t.Errorf("generate -q printed %q", r.stderr)
	}
}
