// Package test runs kiln end to end, as a built binary, and checks its
// outputs with the standard tools of the field (sgdisk, sfdisk, cgpt, ...).
// `make test` installs those tools; a missing tool fails a test, it never
// skips it.
package test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// kiln is the path of the binary built for this test run.
var kiln string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kiln = filepath.Join(dir, "kiln")
	build := exec.Command("go", "build", "-tags", "containers_image_openpgp,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper", "-o", kiln, "../cmd/kiln")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building kiln: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is what a command did.
type result struct {
	stdout, stderr string
	code           int
}

// run runs a command and returns its output and exit code; it fails the
// test only when the command cannot be started (a missing tool).
func run(t *testing.T, name string, args ...string) result {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if p := filepath.Join(dir, name); fileExists(p) {
				path, err = p, nil
			}
		}
	}
	if err != nil {
		t.Fatalf("%s is not installed (make test installs it): %v", name, err)
	}
	cmd := exec.Command(path, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// mustRun runs a command that must exit 0.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	r := run(t, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// fileUID returns the owner of a file.
func fileUID(st os.FileInfo) uint32 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Uid
	}
	return 0
}
